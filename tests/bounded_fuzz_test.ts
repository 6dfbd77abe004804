/**
 * Bounded parsing, fuzzed: Hugging Face folders (config.json, model.safetensors, tokenizer.json)
 * and token shard folders with damaged bytes, hostile sizes and wrong types. Each case is a named
 * error of the loader's own class, or a load that returns exactly what the files hold; never a
 * stack trace, never a hang, and never a device allocation past the files' size. The distinct
 * messages are printed with the case counts.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import * as tree from "../core/tree.ts";
import { prepareShards } from "../data/prepare.ts";
import { openShards, ShardError } from "../data/shards.ts";
import { byteTokenizer, hfTokenizer, MAX_TOKENIZER_BYTES } from "../data/tokenizer.ts";
import { encodeSafetensors, type StoredTensor } from "../io/safetensors.ts";
import { filesFolder, HF_NAMES, hfConfigJson, MAX_JSON_BYTES } from "../io/hf_format.ts";
import { loadHf } from "../io/hf_import.ts";
import type { ModelFolder } from "../io/hf_format.ts";
import { blockLinearShapes } from "../models/method.ts";
import { deviceMemory } from "../cli/memory_budget.ts";
import { checkDeviceBudget } from "../cli/plan.ts";
import { Rng } from "../core/rng.ts";
import { PRESETS } from "../models/config.ts";
import { toyConfig, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const OUR_ERRORS = new Set(["HfFormatError", "ConfigError", "TokenizerFileError", "ShardError"]);
const messages = new Map<string, Set<string>>();
const counts = new Map<string, { cases: number; errors: number }>();

/** Checks an error is one of ours with a message and no leaked internals; records its shape. */
function note(kind: string, e: unknown): void {
  assert.ok(e instanceof Error, `${kind}: threw a non-Error ${String(e)}`);
  assert.ok(OUR_ERRORS.has(e.name), `${kind}: ${e.name} leaked: ${e.message}`);
  assert.ok(e.message.length > 0);
  assert.doesNotMatch(
    e.message,
    /\n\s+at |Cannot read properties|is not a function|undefined is not/,
  );
  const generic = e.message.replace(/\/tmp\/[^ :]*/g, "<path>").replace(/"[^"]*"/g, '"…"')
    .replace(/\(([^()]|\([^()]*\))*\)/g, "(…)").replace(/\d+(\.\d+)?(e[-+]?\d+)?/g, "N")
    .replace(/tensor [\w.]+/g, "tensor T");
  if (!messages.has(kind)) messages.set(kind, new Set());
  messages.get(kind)!.add(generic.split("\n")[0]);
}

function tally(kind: string, failed: boolean): void {
  const c = counts.get(kind) ?? { cases: 0, errors: 0 };
  c.cases++;
  if (failed) c.errors++;
  counts.set(kind, c);
}

/** Runs `f` or fails the case when it takes longer than `ms` (a hang). */
async function bounded<T>(kind: string, f: () => Promise<T>, ms = 20000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${kind}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([f(), hang]);
  } finally {
    clearTimeout(timer);
  }
}

// --- A toy Hugging Face folder ---------------------------------------------------------------

const config = toyConfig(40, 64);
const rng = new Rng(3);
function f32(shape: number[]): StoredTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return {
    dtype: "F32",
    shape,
    data: Float32Array.from({ length: n }, () => rng.nextFloat() - 0.5),
  };
}
const tensors: Record<string, StoredTensor> = {
  [HF_NAMES.embed]: f32([config.vocabSize, config.hidden]),
  [HF_NAMES.finalNorm]: f32([config.hidden]),
  [HF_NAMES.lmHead]: f32([config.vocabSize, config.hidden]),
};
for (let i = 0; i < config.layers; i++) {
  tensors[HF_NAMES.attnNorm(i)] = f32([config.hidden]);
  tensors[HF_NAMES.mlpNorm(i)] = f32([config.hidden]);
  for (const { name, shape } of blockLinearShapes(config)) {
    tensors[`${HF_NAMES.linear(i, name)}.weight`] = f32([...shape]);
  }
}
const weights = encodeSafetensors({ tensors, metadata: { format: "pt" } });
const configJson = hfConfigJson(config, { dtype: "f32", maxPositions: 64 });
const headerEnd = 8 + Number(new DataView(weights.buffer).getBigUint64(0, true));

/** Loads a folder; on success checks every tensor equals the file's. Returns whether it failed. */
async function tryLoad(kind: string, folder: ModelFolder, folderBytes: number): Promise<boolean> {
  const base = memoryStats().liveBytes;
  resetPeakBytes();
  try {
    const loaded = await bounded(kind, () => loadHf(folder));
    const embed = await loaded.params.embed.data();
    assert.deepEqual(embed, tensors[HF_NAMES.embed].data, `${kind}: loaded other values`);
    tree.dispose([loaded.params, loaded.model.buffers]);
    return false;
  } catch (e) {
    note(kind, e);
    return true;
  } finally {
    // f32 values take as many bytes on the device as in the file (F16/BF16 twice as many).
    assert.ok(
      memoryStats().peakBytes - base <= 2 * folderBytes,
      `${kind}: allocated ${memoryStats().peakBytes - base} bytes for files of ${folderBytes}`,
    );
    assert.equal(memoryStats().liveBytes, base, `${kind}: a failed load left tensors behind`);
  }
}

const hostile = fc.oneof(
  fc.constantFrom(0, -1, 1, 2, 3, 2 ** 31, 2 ** 32 + 2, 2 ** 53, 1e15, 1e300, 0.5, NaN),
  fc.integer({ min: -10, max: 200 }),
  fc.constantFrom("16", null, true, [], {}),
);
const FIELDS = [
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_attention_heads",
  "num_hidden_layers",
  "max_position_embeddings",
  "rms_norm_eps",
  "head_dim",
  "model_type",
];

Deno.test("fuzz: config.json with hostile sizes and types: a named error before any allocation, or the same model", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.constantFrom(...FIELDS), hostile), { minLength: 1, maxLength: 3 }),
      async (edits) => {
        const c: Record<string, unknown> = { ...configJson };
        for (const [k, v] of edits) c[k] = v;
        const text = new TextEncoder().encode(JSON.stringify(c));
        const folder = filesFolder({ "config.json": text, "model.safetensors": weights }, "cfg");
        tally("config.json", await tryLoad("config.json", folder, weights.length));
      },
    ),
    { numRuns: 80, seed: 23 },
  );
});

Deno.test("fuzz: model.safetensors with damaged headers, lengths and cuts: a named error, or the same model", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        // The header length: around the file's size, or anything.
        fc.record({
          length: fc.oneof(
            fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
            fc.integer({ min: -16, max: 16 }).map((d) => BigInt(Math.max(0, headerEnd - 8 + d))),
            fc.constant(BigInt(weights.length)),
          ),
        }),
        // Bytes of the header flipped, or the file cut.
        fc.record({
          flips: fc.array(fc.tuple(fc.nat(headerEnd - 1), fc.integer({ min: 1, max: 255 })), {
            minLength: 1,
            maxLength: 3,
          }),
        }),
        fc.record({ cut: fc.nat(weights.length - 1) }),
      ),
      async (d) => {
        let bytes = weights.slice();
        if ("length" in d) new DataView(bytes.buffer).setBigUint64(0, d.length, true);
        if ("flips" in d) { for (const [at, x] of d.flips) bytes[at] ^= x; }
        if ("cut" in d) bytes = bytes.subarray(0, d.cut);
        const text = new TextEncoder().encode(JSON.stringify(configJson));
        const folder = filesFolder({ "config.json": text, "model.safetensors": bytes }, "st");
        tally("model.safetensors", await tryLoad("model.safetensors", folder, bytes.length));
      },
    ),
    { numRuns: 80, seed: 29 },
  );
});

Deno.test("a config.json or index the size of a disk is refused by its size, never read", async () => {
  const huge = (size: number): ModelFolder => ({
    name: "huge",
    open: (file) =>
      Promise.resolve(
        file === "model.safetensors" ? null : {
          size,
          read: () => Promise.reject(new Error("read: nothing may be read")),
          close() {},
        },
      ),
  });
  for (const size of [MAX_JSON_BYTES + 1, 2 ** 40]) {
    const e = await loadHf(huge(size)).catch((e) => e);
    note("sizes", e);
    assert.match(e.message, /huge\/config\.json: \d+ bytes, more than the \d+ such a file can/);
  }
  tally("sizes", true);
});

Deno.test("fuzz: tokenizer.json with hostile content and sizes: a TokenizerFileError, or a tokenizer", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tokenizer.json`;
    // Sparse: the size of a disk, none of it written.
    using f = await Deno.open(path, { write: true, create: true });
    await f.truncate(MAX_TOKENIZER_BYTES + 1);
    note("tokenizer.json", await hfTokenizer(path).catch((e) => e));
    tally("tokenizer.json", true);
    const vocab = fc.dictionary(
      fc.string({ maxLength: 3 }),
      fc.oneof(
        fc.nat(60),
        fc.constantFrom(-1, 2 ** 24, 2 ** 31, 2 ** 53, 0.5, "7", null),
      ),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({
            model: fc.oneof(
              fc.record({
                type: fc.constantFrom("BPE", "WordLevel", "Unigram", "X"),
                vocab,
                merges: fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 }),
              }),
              fc.constantFrom(null, 3, "BPE"),
            ),
            added_tokens: fc.array(
              fc.record({
                id: fc.nat(70),
                content: fc.constantFrom("</s>", "<eos>", "x"),
                special: fc.boolean(),
              }),
              { maxLength: 2 },
            ),
          }),
          fc.jsonValue({ maxDepth: 2 }),
        ),
        async (json) => {
          await Deno.writeTextFile(path, JSON.stringify(json));
          try {
            const tok = await bounded("tokenizer.json", () => hfTokenizer(path));
            assert.ok(tok.vocabSize > 0 && tok.vocabSize <= 2 ** 24);
            tally("tokenizer.json", false);
          } catch (e) {
            note("tokenizer.json", e);
            tally("tokenizer.json", true);
          }
        },
      ),
      { numRuns: 80, seed: 31 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// --- Token shards --------------------------------------------------------------------------

Deno.test("fuzz: shard folders with damaged bytes anywhere: a ShardError naming the file, or exactly the tokens written", async () => {
  const root = await Deno.makeTempDir();
  try {
    const corpus = `${root}/c.jsonl`;
    const docs = Array.from(
      { length: 30 },
      (_, i) => `doc ${i}: ${"the jury said ".repeat(i % 7)}`,
    );
    await Deno.writeTextFile(corpus, docs.map((text) => JSON.stringify({ text })).join("\n"));
    const good = `${root}/good`;
    // Shards of 3000 ids: several shards, several checksum chunks per shard.
    await prepareShards({ data: corpus, tokenizer: byteTokenizer(), out: good, shardTokens: 3000 });
    const files = [...Deno.readDirSync(good)].map((e) => e.name).sort();
    const originals = new Map(files.map((f) => [f, Deno.readFileSync(`${good}/${f}`)]));
    const set = await openShards(good);
    const want = {
      train: set.train.read(0, set.train.length),
      val: set.val.read(0, set.val.length),
    };
    let n = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...files),
        fc.oneof(
          fc.record({
            flips: fc.array(
              fc.tuple(fc.integer({ min: 0, max: 2 ** 30 }), fc.integer({ min: 1, max: 255 })),
              { minLength: 1, maxLength: 3 },
            ),
          }),
          fc.record({ cut: fc.integer({ min: 0, max: 2 ** 30 }) }),
        ),
        async (file, d) => {
          const dir = `${root}/case-${n++}`;
          Deno.mkdirSync(dir);
          for (const [f, b] of originals) Deno.writeFileSync(`${dir}/${f}`, b);
          let bytes = originals.get(file)!.slice();
          if ("flips" in d) { for (const [at, x] of d.flips) bytes[at % bytes.length] ^= x; }
          else bytes = bytes.subarray(0, d.cut % bytes.length);
          Deno.writeFileSync(`${dir}/${file}`, bytes);
          try {
            const s = await bounded("shards", () => openShards(dir));
            for (const split of ["train", "val"] as const) {
              const sp = s[split];
              assert.deepEqual(sp.read(0, sp.length), want[split], `${file}: other tokens`);
              for (let i = 0; i < sp.docs; i++) sp.doc(i, 1 << 20);
            }
            tally("shards", false);
          } catch (e) {
            note("shards", e);
            assert.ok(e instanceof ShardError);
            assert.ok(e.message.includes(`${dir}/`), `the message names the file: ${e.message}`);
            tally("shards", true);
          } finally {
            Deno.removeSync(dir, { recursive: true });
          }
        },
      ),
      { numRuns: 120, seed: 37 },
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a run needing more memory than a CPU adapter's host has is refused with the estimate", () => {
  const host = deviceMemory({ kind: "cpu" });
  assert.ok(host && host.bytes === Deno.systemMemoryInfo().total);
  // A GPU's memory is unknown to WebGPU: --max-device-bytes is how to give it.
  assert.equal(deviceMemory({ kind: "gpu" }), null);
  const big = toyRun({
    model: { ...PRESETS["7b"], vocabSize: 32000 },
    method: "full",
    modelName: "7b",
  });
  assert.throws(
    () => checkDeviceBudget(big, host.bytes, host.from),
    /host memory of the CPU adapter [\d.]+ [GT]B: full on 7b is predicted to need [\d.]+ [GT]B at its peak/,
  );
  checkDeviceBudget(toyRun(), host.bytes, host.from);
});

Deno.test("bounded fuzz: distinct messages per input", () => {
  for (const [kind, set] of messages) {
    const c = counts.get(kind);
    console.log(`${kind}: ${c?.cases} cases, ${c?.errors} errors, ${set.size} distinct messages`);
    for (const m of set) console.log(`  ${m}`);
  }
  assert.ok((messages.get("model.safetensors")?.size ?? 0) >= 5);
  assert.ok((messages.get("config.json")?.size ?? 0) >= 5);
  assert.ok((messages.get("shards")?.size ?? 0) >= 4);
});
