/**
 * Token shards: corpus -> shards -> stream equals direct tokenization; packing, seeding and
 * resumable positions over shards equal those over the in-memory stream; corrupt or truncated
 * shards and bad corpora are named errors that leave nothing behind.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { holdOut, loadCorpus } from "../data/corpus.ts";
import {
  BatchStream,
  documentSequences,
  packedSequences,
  type Sequences,
} from "../data/batches.ts";
import { prepareShards } from "../data/prepare.ts";
import { openShards, ShardError, shardSequences } from "../data/shards.ts";
import { byteTokenizer, hfTokenizer, type Tokenizer } from "../data/tokenizer.ts";
import { bpeTokenizerJson, writeTokenizer } from "./tokenizer_fixture.ts";

const tmp = await Deno.makeTempDir({ prefix: "sltrain-shards-" });
let serial = 0;
const fresh = () => `${tmp}/${serial++}`;

const bpe = await hfTokenizer(
  await writeTokenizer(
    `${tmp}/tok`,
    bpeTokenizerJson("the jury said the city was fair; ünïcode words 42 ", 30),
  ),
);

/** Writes documents as a JSONL file, or as a folder of text files followed by a JSONL file. */
async function writeCorpus(docs: string[], layout: "jsonl" | "folder"): Promise<string> {
  const dir = fresh();
  await Deno.mkdir(dir, { recursive: true });
  const jsonl = (ds: string[]) => ds.map((text) => JSON.stringify({ text })).join("\n") + "\n";
  if (layout === "jsonl") {
    await Deno.writeTextFile(`${dir}/c.jsonl`, jsonl(docs));
    return `${dir}/c.jsonl`;
  }
  const half = Math.ceil(docs.length / 2);
  for (let i = 0; i < half; i++) {
    await Deno.writeTextFile(`${dir}/a-${String(i).padStart(3, "0")}.txt`, docs[i]);
  }
  await Deno.writeTextFile(`${dir}/b.jsonl`, jsonl(docs.slice(half)));
  return dir;
}

/** The packed stream of documents tokenized one by one: ids then end of text, per document. */
const directStream = (docs: { text: string }[], tok: Tokenizer) =>
  docs.flatMap((d) => [...tok.encode(d.text), tok.eos]);

/** Entries of `dir` whose names start with a dot (what a failed prepare might leave behind). */
async function hidden(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.name.startsWith(".")) out.push(e.name);
  return out;
}

const docText = fc.oneof(
  fc.string({ unit: "grapheme", maxLength: 40 }),
  fc.constantFrom("", " \n\t", "line one\nline two\n\n", "\n  leading space", "the jury. "),
);

Deno.test("corpus -> shards -> token stream equals direct tokenization (bytes, BPE; text, JSONL)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(docText, { minLength: 1, maxLength: 14 }),
      fc.constantFrom<"jsonl" | "folder">("jsonl", "folder"),
      fc.constantFrom(0.1, 0.34, 0.5),
      fc.integer({ min: 1, max: 40 }),
      fc.constantFrom(1, 5, 64),
      fc.constantFrom(3, 17, 1 << 22),
      fc.boolean(),
      async (texts, layout, frac, shardTokens, readBytes, pieceChars, useBpe) => {
        const tok = useBpe ? bpe : byteTokenizer();
        // Tokens of a document cut into pieces equal its whole tokens for bytes only.
        if (useBpe) pieceChars = 1 << 22;
        const corpus = await writeCorpus(texts, layout);
        const out = fresh();
        let expected: ReturnType<typeof holdOut>;
        try {
          expected = holdOut(await loadCorpus(corpus), frac);
        } catch (e) {
          await assert.rejects(
            () => prepareShards({ data: corpus, tokenizer: tok, out, valFraction: frac }),
            { message: (e as Error).message },
          );
          await assert.rejects(() => Deno.stat(out), Deno.errors.NotFound);
          return;
        }
        await prepareShards({
          data: corpus,
          tokenizer: tok,
          out,
          valFraction: frac,
          shardTokens,
          pieceChars,
          readBytes,
        });
        const set = await openShards(out);
        for (const split of ["train", "val"] as const) {
          const s = set[split];
          assert.deepEqual(Array.from(s.read(0, s.length)), directStream(expected[split], tok));
          const nonEmpty = expected[split].map((d) => tok.encode(d.text)).filter((d) => d.length);
          assert.equal(s.docs, nonEmpty.length);
          nonEmpty.forEach((d, i) => assert.deepEqual(Array.from(s.doc(i, Infinity)), d));
        }
        assert.equal(set.manifest.tokenizer.name, tok.name);
        assert.deepEqual(await hidden(tmp), []);
      },
    ),
    { numRuns: 60, seed: 11 },
  );
});

/** A tokenizer of space-separated numbers (anything else is dropped); the last id ends texts. */
const numbers = (vocabSize: number): Tokenizer => ({
  name: `numbers-${vocabSize}`,
  vocabSize,
  eos: vocabSize - 1,
  pad: vocabSize - 1,
  encode: (t) => t.split(" ").filter((w) => /^\d+$/.test(w)).map(Number),
  decode: (ids) => ids.join(" "),
});

function sameBatches(a: BatchStream, b: BatchStream, n: number): void {
  for (let k = 0; k < n; k++) {
    const x = a.next();
    const y = b.next();
    assert.deepEqual(y.inputs, x.inputs, `batch ${k}`);
    assert.deepEqual(y.targets, x.targets, `batch ${k}`);
    assert.equal(y.tokens, x.tokens);
  }
}

Deno.test("packing over shards equals packing in memory; resume is bit-exact across shard boundaries", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(300, 70_000),
      fc.array(fc.array(fc.nat({ max: 298 }), { maxLength: 20 }), { minLength: 2, maxLength: 12 }),
      fc.constantFrom<"packed" | "none">("packed", "none"),
      fc.integer({ min: 1, max: 9 }),
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 1, max: 13 }),
      fc.nat({ max: 1000 }),
      fc.nat(),
      async (vocab, docs, packing, seq, batch, shardTokens, seed, cut) => {
        const tok = numbers(vocab);
        // A document without ids is kept as text "." (an end-of-text only when packed).
        const texts = docs.map((d) => (d.length ? d.join(" ") : "."));
        const corpus = await writeCorpus(texts, "jsonl");
        const out = fresh();
        const frac = 0.34;
        const { train, val } = holdOut(await loadCorpus(corpus), frac);
        const memory = (ds: { text: string }[]): Sequences => {
          const ids = ds.map((d) => Uint32Array.from(tok.encode(d.text)));
          return (packing === "packed" ? packedSequences : documentSequences)(
            ids,
            seq,
            tok.eos,
            tok.pad,
          );
        };
        const mem = memory(train);
        try {
          await prepareShards({
            data: corpus,
            tokenizer: tok,
            out,
            valFraction: frac,
            shardTokens,
          });
        } catch (e) {
          assert.match((e as Error).message, /has no tokens/);
          return;
        }
        assert.equal((await openShards(out)).manifest.dtype, vocab > 65536 ? "uint32" : "uint16");
        const onDisk = async () => shardSequences((await openShards(out)).train, seq, packing, tok);
        const disk = await onDisk();
        assert.equal(disk.count, mem.count);
        if (mem.count === 0) return;
        const n = Math.ceil((2.5 * mem.count) / batch); // more than two epochs
        const k = cut % n;
        const a = new BatchStream(mem, batch, seed);
        const b = new BatchStream(disk, batch, seed);
        sameBatches(a, b, k);
        // Resume from the saved position over freshly opened shards.
        const c = new BatchStream(await onDisk(), batch, seed);
        c.state = b.state;
        sameBatches(a, c, n - k);
        const v = (await openShards(out)).val;
        const memVal = memory(val);
        const diskVal = shardSequences(v, seq, packing, tok);
        assert.equal(diskVal.count, memVal.count);
        for (let i = 0; i < memVal.count; i++) {
          const x = [new Int32Array(seq), new Int32Array(seq)] as const;
          const y = [new Int32Array(seq), new Int32Array(seq)] as const;
          memVal.fill(i, x[0], x[1], 0);
          diskVal.fill(i, y[0], y[1], 0);
          assert.deepEqual(y, x);
        }
      },
    ),
    { numRuns: 60, seed: 12 },
  );
});

Deno.test("corrupt shard folders are named errors", async () => {
  const corpus = await writeCorpus(
    Array.from({ length: 12 }, (_, i) => `document ${i}: the jury said`),
    "jsonl",
  );
  const good = fresh();
  await prepareShards({ data: corpus, tokenizer: byteTokenizer(), out: good, shardTokens: 50 });
  await openShards(good);
  const edit = async (file: string, f: (b: Uint8Array) => Uint8Array) =>
    await Deno.writeFile(file, f(await Deno.readFile(file)));
  const cases: [string, (dir: string) => Promise<void>, RegExp][] = [
    [
      "wrong magic",
      (d) => edit(`${d}/train-00001.bin`, (b) => (b.set([88], 0), b)),
      /train-00001\.bin: wrong magic/,
    ],
    [
      "wrong version",
      (d) => edit(`${d}/train-00002.bin`, (b) => (b.set([1], 4), b)),
      /train-00002\.bin: version 1, but this build reads version 2 \(version 1 has no checksums\): prepare the folder again/,
    ],
    [
      "truncated tail",
      (d) => edit(`${d}/train-00003.bin`, (b) => b.subarray(0, b.length - 3)),
      /train-00003\.bin: \d+ bytes, expected \d+ \(truncated\)/,
    ],
    [
      "trailing data",
      (d) => edit(`${d}/val-00000.bin`, (b) => Uint8Array.from([...b, 0, 0])),
      /val-00000\.bin: .*\(trailing data\)/,
    ],
    [
      "checksum hash",
      (d) => edit(`${d}/train-00001.bin`, (b) => (b.set([109, 100, 53], 20), b)),
      /train-00001\.bin: checksums by "md5256", this build verifies sha256/,
    ],
    [
      "id count",
      (d) => edit(`${d}/train-00000.bin`, (b) => (b.set([49], 12), b)),
      /train-00000\.bin: header says id count 49, expected 50/,
    ],
    ["missing shard", (d) => Deno.remove(`${d}/train-00001.bin`), /train-00001\.bin: missing/],
    [
      "truncated index",
      (d) => edit(`${d}/train.docs`, (b) => b.subarray(0, b.length - 8)),
      /train\.docs: .*truncated/,
    ],
    [
      "manifest not JSON",
      (d) => Deno.writeTextFile(`${d}/manifest.json`, "{"),
      /manifest\.json: not valid JSON/,
    ],
    [
      "manifest version",
      (d) =>
        edit(
          `${d}/manifest.json`,
          (b) =>
            new TextEncoder().encode(
              new TextDecoder().decode(b).replace('"version": 2', '"version": 9'),
            ),
        ),
      /manifest\.json: version 9/,
    ],
    [
      "manifest of version 1",
      (d) =>
        edit(
          `${d}/manifest.json`,
          (b) =>
            new TextEncoder().encode(
              new TextDecoder().decode(b).replace('"version": 2', '"version": 1'),
            ),
        ),
      /manifest\.json: version 1, but this build reads version 2 \(version 1 shards have no checksums\): prepare the folder again/,
    ],
  ];
  for (const [name, mutate, re] of cases) {
    const dir = fresh();
    await Deno.mkdir(dir);
    for await (const e of Deno.readDir(good)) {
      await Deno.copyFile(`${good}/${e.name}`, `${dir}/${e.name}`);
    }
    await mutate(dir);
    await assert.rejects(() => openShards(dir), (e: Error) => {
      assert.ok(e instanceof ShardError, `${name}: ${e}`);
      assert.match(e.message, re, name);
      return true;
    });
  }
  // A byte flipped in a shard's body or an index is caught by its chunk's checksum when read,
  // naming the file and the damaged bytes; unverified (as only the overhead bench reads), an id
  // outside the vocabulary is still caught.
  const dir = fresh();
  await Deno.mkdir(dir);
  for await (const e of Deno.readDir(good)) {
    await Deno.copyFile(`${good}/${e.name}`, `${dir}/${e.name}`);
  }
  await edit(`${dir}/train-00000.bin`, (b) => (b.set([0, 1], 32 + 2 * 5), b));
  const set = await openShards(dir);
  assert.throws(
    () => set.train.read(0, 10),
    /train-00000\.bin: bytes 32-131 \(checksum chunk 0\) do not match their sha256 \(damaged file\)/,
  );
  assert.deepEqual(set.train.read(50, 60).length, 10, "other shards still read");
  const unverified = await openShards(dir, { verify: false });
  assert.throws(
    () => unverified.train.read(0, 10),
    /train-00000\.bin: id 256 at position 5 is outside the vocabulary of 256/,
  );
  await edit(`${dir}/train.docs`, (b) => (b[32 + 3] ^= 1, b));
  assert.throws(() => set.train.doc(0, 5), /train\.docs: bytes 32-\d+ \(checksum chunk 0\)/);
});

Deno.test("prepare: bad corpora and interruptions are named errors that leave nothing behind", async () => {
  const parent = fresh();
  await Deno.mkdir(parent);
  const tok = byteTokenizer();
  const out = `${parent}/shards`;
  const fails = async (opts: Partial<Parameters<typeof prepareShards>[0]>, re: RegExp) => {
    await assert.rejects(() => prepareShards({ data: "", tokenizer: tok, out, ...opts }), re);
    await assert.rejects(() => Deno.stat(out), Deno.errors.NotFound);
    assert.deepEqual(await hidden(parent), []);
  };
  await Deno.writeTextFile(`${parent}/blank.txt`, " \n ");
  await fails({ data: `${parent}/blank.txt` }, /blank\.txt holds no text/);
  await fails({ data: `${parent}/nowhere` }, /nowhere does not exist/);
  await Deno.writeTextFile(`${parent}/one.txt`, "only one document");
  await fails({ data: `${parent}/one.txt` }, /at least two documents/);
  await fails(
    { data: `${parent}/one.txt`, valData: `${parent}/blank.txt` },
    /blank\.txt holds no text/,
  );
  // A bad line far into the file fails after shards were written: they are removed.
  const lines = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `doc ${i}` }));
  lines[29] = "{oops";
  await Deno.writeTextFile(`${parent}/bad.jsonl`, lines.join("\n"));
  await fails({ data: `${parent}/bad.jsonl`, shardTokens: 7 }, /bad\.jsonl:30: not valid JSON/);
  const words = await writeCorpus(["alpha", "beta", "gamma"], "jsonl");
  await fails({ data: words, tokenizer: numbers(10) }, /training data has no tokens/);
  const ac = new AbortController();
  const good = await writeCorpus(lines.filter((_, i) => i !== 29), "jsonl");
  await fails(
    {
      data: good,
      shardTokens: 7,
      signal: ac.signal,
      onProgress: () => ac.abort(new Error("stop")),
    },
    /stop/,
  );
  await Deno.mkdir(out);
  await Deno.writeTextFile(`${out}/keep.txt`, "mine");
  await assert.rejects(() => prepareShards({ data: good, tokenizer: tok, out }), /not empty/);
  assert.equal(await Deno.readTextFile(`${out}/keep.txt`), "mine");
  await Deno.remove(`${out}/keep.txt`);
  await prepareShards({ data: good, tokenizer: tok, out }); // an empty folder is fine
  assert.equal((await openShards(out)).val.docs, 3);
});

Deno.test("cleanup", async () => {
  await Deno.remove(tmp, { recursive: true });
});
