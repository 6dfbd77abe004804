/** tokenizer.json files through @huggingface/tokenizers: loading, end of text, cache keys, errors. */
import fc from "fast-check";
import assert from "node:assert/strict";
import { hfTokenizer, tokenizerByName, TokenizerFileError } from "../data/tokenizer.ts";
import { tokenizeCached } from "../data/cache.ts";
import { bpeTokenizerJson, wordTokenizerJson, writeTokenizer } from "./tokenizer_fixture.ts";

const SAMPLE = "The jury said the election was fair. The city of Atlanta thanked the jury. ".repeat(
  4,
);
const tmp = await Deno.makeTempDir({ prefix: "sltrain-tok-" });
const bpePath = await writeTokenizer(`${tmp}/bpe`, bpeTokenizerJson(SAMPLE, 40));

Deno.test("tokenizer.json: a byte-level BPE loads from disk, merges, and round-trips any text", async () => {
  const tok = await hfTokenizer(bpePath);
  assert.equal(tok.vocabSize, 256 + 40 + 1);
  assert.equal(tok.eos, 256 + 40, "<|endoftext|> is the end of text");
  assert.equal(tok.pad, tok.eos);
  assert.deepEqual(tok.files, [bpePath]);
  assert.match(tok.name, /^hf-[0-9a-f]{16}$/);
  const ids = tok.encode("The jury said");
  assert.ok(ids.length < "The jury said".length, "learned merges shorten the text");
  assert.ok(ids.some((i) => i >= 256));
  fc.assert(
    fc.property(fc.string({ unit: "grapheme", maxLength: 80 }), (s) => {
      const e = tok.encode(s);
      assert.ok(e.every((i) => Number.isInteger(i) && i >= 0 && i < tok.vocabSize));
      assert.equal(tok.decode(e), s);
    }),
    { numRuns: 200, seed: 3 },
  );
  // A folder holding tokenizer.json and the path by name work the same.
  assert.equal((await tokenizerByName(`${tmp}/bpe`)).name, tok.name);
});

Deno.test("tokenizer.json: tokenizer_config.json's eos_token names the end of text", async () => {
  const path = await writeTokenizer(`${tmp}/wl`, wordTokenizerJson(70_000), {
    eos_token: { content: "</s>" },
  });
  const tok = await hfTokenizer(path);
  assert.equal(tok.vocabSize, 70_000);
  assert.equal(tok.eos, 1);
  assert.deepEqual(tok.encode("w5 w69997 nope"), [7, 69_999, 0]);
  assert.equal(tok.files?.length, 2);
});

Deno.test("tokenizer.json: the name (token-cache key) follows the file's content", async () => {
  const a = await hfTokenizer(bpePath);
  const other = await writeTokenizer(`${tmp}/bpe2`, bpeTokenizerJson(SAMPLE, 41));
  const b = await hfTokenizer(other);
  assert.notEqual(a.name, b.name);
  const cache = `${tmp}/cache`;
  const docs = [{ id: "d", text: "The jury said" }];
  await tokenizeCached(docs, a, cache);
  assert.equal((await tokenizeCached(docs, b, cache)).cached, false, "another tokenizer misses");
  assert.equal((await tokenizeCached(docs, a, cache)).cached, true);
  // The same bytes at another path are the same tokenizer.
  const copy = await writeTokenizer(`${tmp}/bpe3`, bpeTokenizerJson(SAMPLE, 40));
  assert.equal((await hfTokenizer(copy)).name, a.name);
});

Deno.test("tokenizer.json: unusable files are named errors", async () => {
  const cases: [string, unknown, RegExp][] = [
    ["garbage", "{not json", /garbage\/tokenizer\.json: not valid JSON/],
    ["nomodel", { version: "1.0" }, /nomodel\/tokenizer\.json: not a tokenizer\.json/],
    ["badmodel", { model: { type: "Nope" } }, /badmodel\/tokenizer\.json: cannot be loaded/],
    [
      "noeos",
      { ...wordTokenizerJson(10), added_tokens: [] },
      /noeos\/tokenizer\.json: no end-of-text token/,
    ],
  ];
  for (const [name, json, re] of cases) {
    await Deno.mkdir(`${tmp}/${name}`, { recursive: true });
    await Deno.writeTextFile(
      `${tmp}/${name}/tokenizer.json`,
      typeof json === "string" ? json : JSON.stringify(json),
    );
    await assert.rejects(() => hfTokenizer(`${tmp}/${name}`), (e: Error) => {
      assert.ok(e instanceof TokenizerFileError, `${name}: ${e}`);
      assert.match(e.message, re);
      return true;
    });
  }
  // tokenizers.js loads a WordLevel model but yields undefined for unknown words: caught.
  const wordLevel = {
    ...wordTokenizerJson(10),
    model: { type: "WordLevel", vocab: { "</s>": 0 } },
  };
  const wl = await hfTokenizer(await writeTokenizer(`${tmp}/wordlevel`, wordLevel));
  assert.throws(() => wl.encode("unknown"), /wordlevel\/tokenizer\.json: produced id undefined/);
  await assert.rejects(() => tokenizerByName(`${tmp}/missing.json`), /unknown tokenizer/);
  await assert.rejects(() => tokenizerByName("gpt9"), /expected bytes, llama, or the path/);
});

Deno.test("cleanup", async () => {
  await Deno.remove(tmp, { recursive: true });
});
