/**
 * prepare.ts and train.ts --data SHARD_DIR as a user runs them: a tokenizer.json corpus prepared
 * and trained on, and bad input (tokenizer, corpus, shards, flags) refused with a non-zero exit
 * and nothing written.
 */
import assert from "node:assert/strict";
import { bpeTokenizerJson, writeTokenizer } from "./tokenizer_fixture.ts";

const tmp = await Deno.makeTempDir({ prefix: "sltrain-prepare-cli-" });
const env = { SLTRAIN_CACHE: `${tmp}/cache` };
const corpus = `${tmp}/corpus.jsonl`;
const texts = Array.from({ length: 20 }, (_, i) => `Document ${i}. The jury said it was fair. `);
await Deno.writeTextFile(corpus, texts.map((text) => JSON.stringify({ text })).join("\n"));
const tokenizer = await writeTokenizer(`${tmp}/tok`, bpeTokenizerJson(texts.join(""), 30));

async function run(script: string, ...args: string[]) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);
const shards = `${tmp}/shards`;
const prepared = await run(
  "prepare.ts",
  ...["--data", corpus, "--tokenizer", tokenizer, "--out", shards, "--shard-tokens", "64"],
);
const TRAIN = ["--steps", "2", "--batch", "2", "--seq", "16", "--eval-tokens", "32"];

Deno.test("prepare.ts with a tokenizer.json, then train.ts streams the shards", async () => {
  assert.equal(prepared.code, 0, prepared.err);
  assert.match(prepared.out, /train .* tokens in 18 docs, val .* tokens in 2 docs; hf-/);
  assert.ok(await exists(`${shards}/tokenizer.json`), "the tokenizer travels with the shards");
  const r = await run("train.ts", "--data", shards, ...TRAIN, "--out", `${tmp}/run`);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /\(token shards\): 18 train docs, 2 val docs .* hf-[0-9a-f]{16}/);
  assert.ok(await exists(`${tmp}/run/checkpoint.safetensors`));
});

Deno.test("bad input to prepare.ts and train.ts: named errors, exit != 0, nothing written", async () => {
  await Deno.mkdir(`${tmp}/badtok`);
  await Deno.writeTextFile(`${tmp}/badtok/tokenizer.json`, '{"model": ');
  await Deno.writeTextFile(`${tmp}/blank.txt`, "\n\n");
  const corrupt = `${tmp}/corrupt`;
  await Deno.mkdir(corrupt);
  for await (const e of Deno.readDir(shards)) {
    await Deno.copyFile(`${shards}/${e.name}`, `${corrupt}/${e.name}`);
  }
  const bytes = await Deno.readFile(`${corrupt}/train-00000.bin`);
  await Deno.writeFile(`${corrupt}/train-00000.bin`, bytes.subarray(0, bytes.length - 1));
  const out = `${tmp}/never`;
  const cases: [string, string[], RegExp][] = [
    [
      "prepare.ts",
      ["--data", corpus, "--tokenizer", `${tmp}/badtok`],
      /badtok\/tokenizer\.json: not valid JSON/,
    ],
    ["prepare.ts", ["--data", `${tmp}/blank.txt`], /blank\.txt holds no text/],
    ["prepare.ts", ["--data", `${tmp}/nowhere`], /nowhere does not exist/],
    [
      "train.ts",
      ["--data", corrupt, ...TRAIN],
      /train-00000\.bin: \d+ bytes, expected \d+ \(truncated\)/,
    ],
    [
      "train.ts",
      ["--data", shards, "--tokenizer", "bytes", ...TRAIN],
      /--tokenizer bytes \(bytes-v1\) is not the tokenizer/,
    ],
    [
      "train.ts",
      ["--data", shards, "--val-fraction", "0.2", ...TRAIN],
      /--val-fraction: .* own validation split/,
    ],
  ];
  for (const [script, args, re] of cases) {
    const r = await run(script, ...args, "--out", out);
    assert.notEqual(r.code, 0, `${script} ${args.join(" ")} exited 0`);
    assert.match(r.err, re, `${script} ${args.join(" ")}`);
    assert.ok(!(await exists(out)), `${script} ${args.join(" ")} created ${out}`);
  }
  const left = [];
  for await (const e of Deno.readDir(tmp)) if (e.name.startsWith(".")) left.push(e.name);
  assert.deepEqual(left, [], "no temporary folder is left behind");
});

Deno.test("cleanup", async () => {
  await Deno.remove(tmp, { recursive: true });
});
