import fc from "fast-check";
import assert from "node:assert/strict";
import { loadBrown, splitEvery } from "../data/brown.ts";
import { holdOut, loadCorpus } from "../data/corpus.ts";
import { tokenizeCached } from "../data/cache.ts";
import { byteTokenizer, llamaTokenizer } from "../data/tokenizer.ts";
import { BatchStream, documentSequences, IGNORE_INDEX, packedSequences } from "../data/batches.ts";

Deno.test("Brown: 500 clean documents; the split is deterministic, disjoint and covers all", async () => {
  const docs = await loadBrown();
  assert.equal(docs.length, 500);
  assert.equal(docs[0].id, "ca01");
  assert.ok(docs[0].text.startsWith("The Fulton County Grand Jury said Friday an investigation"));
  // Real text has "and/or", but no word carries a frequent Brown tag such as /at, /nn or /vbd.
  const tagged = docs.filter((d) => /\w\/(at|nn|nns|vbd|in|jj|np|cc)(\s|$)/.test(d.text));
  assert.deepEqual(tagged.map((d) => d.id), []);
  const a = splitEvery(docs);
  const b = splitEvery(await loadBrown());
  assert.deepEqual(a.val.map((d) => d.id), b.val.map((d) => d.id));
  assert.equal(a.val.length, 50);
  const trainIds = new Set(a.train.map((d) => d.id));
  assert.ok(a.val.every((d) => !trainIds.has(d.id)));
  assert.equal(trainIds.size + a.val.length, 500);
});

Deno.test("byte tokenizer round-trips any Unicode string", () => {
  const tok = byteTokenizer();
  fc.assert(
    fc.property(fc.string({ unit: "grapheme", maxLength: 200 }), (s) => {
      const clean = s.replaceAll("\0", "");
      assert.equal(tok.decode(tok.encode(clean)), clean);
      assert.ok(tok.encode(clean).every((i) => i >= 0 && i < 256));
    }),
    { numRuns: 300, seed: 1 },
  );
});

Deno.test("LLaMA tokenizer: 32000 ids, round-trips English text", async () => {
  const tok = await llamaTokenizer();
  const text = "The jury further said in term-end presentments that the City Executive Committee";
  const ids = tok.encode(text);
  assert.ok(ids.length > 5 && ids.every((i) => i > 2 && i < 32000));
  assert.equal(tok.decode(ids), text);
});

Deno.test("packing covers every token exactly once per epoch as input and once as target", () => {
  fc.assert(
    fc.property(
      fc.array(fc.array(fc.integer({ min: 1, max: 50 }), { maxLength: 30 }), {
        minLength: 1,
        maxLength: 8,
      }),
      fc.integer({ min: 1, max: 12 }),
      (docsArr, seq) => {
        const docs = docsArr.map((d) => Uint32Array.from(d));
        const stream = docsArr.flatMap((d) => [...d, 0]);
        const s = packedSequences(docs, seq, 0, 0);
        const inputs: number[] = [];
        const targets: number[] = [];
        const inp = new Int32Array(seq);
        const tgt = new Int32Array(seq);
        for (let i = 0; i < s.count; i++) {
          s.fill(i, inp, tgt, 0);
          for (let t = 0; t < seq; t++) {
            if (i * seq + t < stream.length) inputs.push(inp[t]);
            if (tgt[t] !== IGNORE_INDEX) targets.push(tgt[t]);
          }
        }
        assert.deepEqual(inputs, stream);
        assert.deepEqual(targets, stream.slice(1));
      },
    ),
    { numRuns: 200, seed: 2 },
  );
});

Deno.test("one document per sequence pads with ignored targets", () => {
  const s = documentSequences([Uint32Array.from([5, 6, 7])], 6, 2, 2);
  const inp = new Int32Array(6);
  const tgt = new Int32Array(6);
  s.fill(0, inp, tgt, 0);
  assert.deepEqual(Array.from(inp), [5, 6, 7, 2, 2, 2]);
  assert.deepEqual(Array.from(tgt), [6, 7, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]);
});

Deno.test("batch order is seeded, resumable, and an epoch visits each sequence once", () => {
  const docs = [Uint32Array.from(Array.from({ length: 97 }, (_, i) => i + 1))];
  const seqs = packedSequences(docs, 4, 0, 0);
  const a = new BatchStream(seqs, 3, 7);
  const b = new BatchStream(seqs, 3, 7);
  const firsts = new Set<number>();
  for (let i = 0; i < Math.floor(seqs.count / 3); i++) {
    const x = a.next();
    const y = b.next();
    assert.deepEqual(x.inputs, y.inputs);
    for (let r = 0; r < 3; r++) firsts.add(x.inputs[r * 4]);
  }
  assert.equal(firsts.size, Math.floor(seqs.count / 3) * 3, "no sequence twice within an epoch");
  const saved = a.state;
  const next = a.next();
  const c = new BatchStream(seqs, 3, 7);
  c.state = saved;
  assert.deepEqual(c.next().inputs, next.inputs);
  assert.notDeepEqual(
    new BatchStream(seqs, 3, 8).next().inputs,
    new BatchStream(seqs, 3, 7).next().inputs,
  );
});

Deno.test("token cache: a second call hits, a corrupt file is ignored and rewritten", async () => {
  const dir = await Deno.makeTempDir();
  const tok = byteTokenizer();
  const docs = [{ id: "a", text: "hello" }, { id: "b", text: "wörld" }];
  const first = await tokenizeCached(docs, tok, dir);
  assert.equal(first.cached, false);
  const second = await tokenizeCached(docs, tok, dir);
  assert.equal(second.cached, true);
  assert.deepEqual(second.docs, first.docs);
  for await (const e of Deno.readDir(dir)) {
    await Deno.writeFile(`${dir}/${e.name}`, new Uint8Array([1, 2, 3, 4]));
  }
  const third = await tokenizeCached(docs, tok, dir);
  assert.equal(third.cached, false);
  assert.deepEqual(third.docs, first.docs);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("user corpora: text file, folder, JSONL; clear errors for missing, empty and bad JSONL", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/a.txt`, "first document");
  await Deno.writeTextFile(`${dir}/b.jsonl`, '{"text": "second"}\n{"text": "third"}\n');
  assert.equal((await loadCorpus(`${dir}/a.txt`)).length, 1);
  assert.deepEqual((await loadCorpus(dir)).map((d) => d.text), [
    "first document",
    "second",
    "third",
  ]);
  await assert.rejects(() => loadCorpus(`${dir}/missing.txt`), /does not exist/);
  const { train, val } = holdOut(await loadCorpus(dir), 0.34);
  assert.equal(train.length + val.length, 3);
  assert.ok(val.length >= 1);
  await Deno.writeTextFile(`${dir}/empty.txt`, "  \n");
  await assert.rejects(() => loadCorpus(`${dir}/empty.txt`), /holds no text/);
  await Deno.writeTextFile(`${dir}/bad.jsonl`, '{"text": "ok"}\n{oops\n');
  await assert.rejects(() => loadCorpus(`${dir}/bad.jsonl`), /bad\.jsonl:2: not valid JSON/);
  await Deno.remove(dir, { recursive: true });
});
