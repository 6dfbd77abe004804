/**
 * Fuzzed inputs: damaged checkpoints and token caches, model configs with wrong types and missing
 * or extra fields, data files that are empty, binary, not UTF-8 or one giant line, and random
 * flag combinations. Each case ends in a named error (its message names the file, field or flag)
 * and leaves every file as it was, or in a correct run; never a crash with a stack trace or a
 * hang. The distinct messages are printed, with the case counts.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { loadCheckpoint } from "../cli/checkpoint.ts";
import { FlagError } from "../cli/flags.ts";
import { readLog } from "../cli/runlog.ts";
import { trainRun } from "../cli/trainer.ts";
import { SLTrainError } from "../core/errors.ts";
import { readAll } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { tokenizeCached } from "../data/cache.ts";
import { loadCorpus } from "../data/corpus.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { parseConfig } from "../models/config.ts";
import { main } from "../train.ts";
import { quietIO, toyData, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

/** Distinct messages per fuzzer, with the temp folder and numbers made generic. */
const messages = new Map<string, Set<string>>();
function note(kind: string, e: unknown, tmp: string): string {
  assert.ok(e instanceof Error, `${kind}: threw a non-Error ${String(e)}`);
  const msg = e.message;
  assert.ok(msg.length > 0, `${kind}: an error without a message (${e.name})`);
  // What JavaScript itself says when code meets a value it did not expect: never ours.
  assert.doesNotMatch(
    msg,
    /Cannot read properties|is not a function|is not iterable|undefined is not|Maximum call stack|\[object Object\]/,
    `${kind}: an internal error leaked: ${msg}`,
  );
  // Values (in parentheses, quotes, after "got") and numbers made generic.
  const generic = msg.split(tmp).join("<tmp>").replace(/got .*$/, "got …")
    .replace(/\(([^()]|\([^()]*\))*\)/g, "(…)").replace(/"[^"]*"/g, '"…"')
    .replace(/(?<![A-Za-z-])\d+(\.\d+)?(e[-+]?\d+)?/g, "N").replace(/tensor [\w.]+ /, "tensor T ");
  if (!messages.has(kind)) messages.set(kind, new Set());
  messages.get(kind)!.add(generic.split("\n")[0]);
  return msg;
}

const counts: Record<string, { cases: number; errors: number; runs: number }> = {};
const count = (kind: string, ok: boolean) => {
  counts[kind] ??= { cases: 0, errors: 0, runs: 0 };
  counts[kind].cases++;
  counts[kind][ok ? "runs" : "errors"]++;
};

// A uniform fraction of a file's length (fc.double spreads over float bit patterns, i.e. mostly
// tiny numbers, and integers favour edge values unless told not to).
const fraction = fc.noBias(fc.integer({ min: 0, max: 2 ** 30 })).map((n) => n / 2 ** 30);

/** Flips some bytes (xor with a non-zero value) and maybe cuts the tail. */
const damageArb = fc.record({
  flips: fc.array(
    fc.tuple(fraction, fc.integer({ min: 1, max: 255 })),
    { maxLength: 4 },
  ),
  // Header bytes are few and most likely to be mis-parsed: half the flips aim there.
  inHeader: fc.boolean(),
  cut: fc.oneof(
    { weight: 3, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fraction },
  ),
}).filter((d) => d.flips.length > 0 || d.cut !== null);

function damage(
  bytes: Uint8Array,
  d: { flips: [number, number][]; inHeader: boolean; cut: number | null },
  headerEnd: number,
): Uint8Array {
  const out = bytes.slice();
  const span = d.inHeader ? headerEnd : out.length;
  for (const [at, x] of d.flips) out[Math.floor(at * span) % out.length] ^= x;
  return d.cut === null ? out : out.subarray(0, Math.floor(d.cut * out.length));
}

const sameBytes = (a: Uint8Array, b: Uint8Array) =>
  a.length === b.length && a.every((x, i) => x === b[i]);

Deno.test("fuzz: damaged checkpoints are a named error, or load exactly what was saved", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-fuzz-" });
  try {
    await trainRun(toyRun({ method: "sltrain", steps: 2 }), toyData(), quietIO(tmp));
    const path = `${tmp}/checkpoint.safetensors`;
    const good = await Deno.readFile(path);
    const headerEnd = 8 + Number(new DataView(good.buffer).getBigUint64(0, true));
    const ref = await loadCheckpoint(path);
    const refValues = await readAll(tree.flatten([ref.params, ref.buffers, ref.optState]));
    const bad = `${tmp}/damaged.safetensors`;
    await fc.assert(
      fc.asyncProperty(damageArb, async (d) => {
        const bytes = damage(good, d, headerEnd);
        await Deno.writeFile(bad, bytes);
        let ck;
        try {
          ck = await loadCheckpoint(bad);
        } catch (e) {
          count("checkpoint", false);
          assert.ok(note("checkpoint", e, tmp).includes(bad), `unnamed: ${(e as Error).message}`);
          assert.ok(sameBytes(await Deno.readFile(bad), bytes), "the damaged file was changed");
          return;
        }
        count("checkpoint", true);
        try {
          assert.equal(ck.step, ref.step);
          assert.deepEqual(ck.meta, ref.meta);
          const values = await readAll(tree.flatten([ck.params, ck.buffers, ck.optState]));
          values.forEach((v, i) => assert.deepEqual(v, refValues[i]));
        } finally {
          tree.dispose(ck);
        }
      }),
      { numRuns: 150, seed: 21 },
    );
    tree.dispose(ref);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("fuzz: a damaged token cache is never read: the same tokens come back, and it is rewritten", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-fuzz-" });
  try {
    const tok = byteTokenizer();
    const docs = ["The jury said", "the election was fair.", "Ünïcödé tëxt ✓"].map((text, i) => ({
      id: `${i}`,
      text,
    }));
    const fresh = await tokenizeCached(docs, tok, null);
    await tokenizeCached(docs, tok, tmp);
    const [file] = [...Deno.readDirSync(tmp)].map((e) => `${tmp}/${e.name}`);
    const good = await Deno.readFile(file);
    await fc.assert(
      fc.asyncProperty(damageArb, async (d) => {
        await Deno.writeFile(file, damage(good, d, 64));
        const r = await tokenizeCached(docs, tok, tmp);
        count("token cache", true);
        assert.equal(r.cached, false, "a damaged cache was used");
        assert.deepEqual(r.docs, fresh.docs);
        assert.ok(sameBytes(await Deno.readFile(file), good), "the cache was not repaired");
      }),
      { numRuns: 100, seed: 22 },
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

const FIELDS = [
  "vocabSize",
  "hidden",
  "intermediate",
  "heads",
  "layers",
  "maxSeqLen",
  "rmsNormEps",
  "ropeBase",
  "initStd",
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_attention_heads",
  "num_hidden_layers",
  "max_position_embeddings",
  "rms_norm_eps",
  "rope_theta",
  "hidden_act",
  "num_key_value_heads",
  "tie_word_embeddings",
];
const valueArb = fc.oneof(
  fc.constantFrom(1, 2, 4, 8, 16, 32, 64, 128, 256),
  fc.constantFrom(0, -1, 0.5, 1e-6, 1e309, NaN, 2 ** 53),
  fc.string({ maxLength: 6 }),
  fc.constantFrom(null, true, false, [], {}, [16], "silu", "16"),
);

Deno.test("fuzz: model configs with wrong types, missing and extra fields: a ConfigError naming the field, or a valid config", () => {
  fc.assert(
    fc.property(
      fc.dictionary(fc.constantFrom(...FIELDS), valueArb, { maxKeys: 10 }),
      fc.dictionary(fc.string({ maxLength: 8 }), valueArb, { maxKeys: 3 }),
      fc.oneof(fc.constant(null), fc.constantFrom(7, "text", [1, 2], true)),
      fc.boolean(),
      (known, extra, notAnObject, fromValid) => {
        // Half the cases start from a valid config, so that few changes are made to one.
        const base = fromValid ? { hidden: 64, intermediate: 96, heads: 4, layers: 2 } : {};
        const changed = Object.fromEntries(Object.entries(known).slice(0, fromValid ? 1 : 10));
        const json = notAnObject ?? { ...base, vocabSize: 256, ...extra, ...changed };
        let cfg;
        try {
          cfg = parseConfig(json, "fuzz.json");
        } catch (e) {
          count("config", false);
          assert.ok(e instanceof SLTrainError, String(e));
          assert.match(note("config", e, "/nonexistent"), /^fuzz\.json: /);
          return;
        }
        count("config", true);
        for (const f of ["vocabSize", "hidden", "intermediate", "heads", "layers"] as const) {
          assert.ok(Number.isSafeInteger(cfg[f]) && cfg[f] > 0, `${f} = ${cfg[f]}`);
        }
        assert.equal((cfg.hidden / cfg.heads) % 2, 0);
      },
    ),
    { numRuns: 500, seed: 23 },
  );
});

const textArb = fc.oneof(
  fc.constant(new Uint8Array(0)),
  fc.uint8Array({ maxLength: 200 }), // binary
  fc.tuple(fc.string({ maxLength: 20 }), fc.nat(20)).map(([s, at]) => {
    const u = new TextEncoder().encode(s + "\n" + s);
    return Uint8Array.from([...u.subarray(0, at), 0, ...u.subarray(at)]); // text with a NUL
  }),
  fc.string({ maxLength: 80 }).map((s) => new TextEncoder().encode(s)), // UTF-8
  fc.string({ maxLength: 40 }).map((s) => Uint8Array.from(s, (c) => c.charCodeAt(0) & 255)), // latin-1
  fc.tuple(fc.string({ maxLength: 20 }), fc.string({ maxLength: 20 })).map(([a, b]) => {
    const u = new TextEncoder().encode(a);
    return Uint8Array.from([...u, 0xe9, 0x20, ...new TextEncoder().encode(b)]); // mixed
  }),
  fc.integer({ min: 1, max: 3 }).map((n) => new TextEncoder().encode("word ".repeat(n * 200_000))), // one giant line
  fc.array(
    fc.oneof(
      fc.string({ maxLength: 20 }).map((t) => JSON.stringify({ text: t })),
      fc.string({ maxLength: 20 }),
    ),
    { maxLength: 5 },
  )
    .map((lines) => new TextEncoder().encode(lines.join("\n"))),
);

Deno.test("fuzz: data files (empty, binary, not UTF-8, mixed, one giant line, broken JSONL): a named error, or exactly their text", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-fuzz-" });
  try {
    await fc.assert(
      fc.asyncProperty(textArb, fc.constantFrom("txt", "jsonl"), async (bytes, ext) => {
        const path = `${tmp}/data.${ext}`;
        await Deno.writeFile(path, bytes);
        let docs;
        try {
          docs = await loadCorpus(path);
        } catch (e) {
          count("data", false);
          assert.ok(note("data", e, tmp).includes(path), (e as Error).message);
          assert.ok(sameBytes(await Deno.readFile(path), bytes), "the data file was changed");
          return;
        }
        count("data", true);
        const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
        assert.ok(!text.includes("\0"));
        if (ext === "txt") assert.deepEqual(docs.map((d) => d.text), [text]);
        else {
          assert.deepEqual(
            docs.map((d) => d.text),
            text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l).text).filter((t) =>
              t.trim()
            ),
          );
        }
      }),
      { numRuns: 150, seed: 24 },
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/** Values a flag may get: valid, out of range, and garbage. */
const FLAG_VALUES: Record<string, readonly string[]> = {
  model: ["tiny", "small", "bogus", "%config", "%missing.json", "%data"],
  method: ["full", "lowrank", "sltrain", "relora", "galore", "adam"],
  compare: ["full,sltrain", "sltrain,foo", "", ","],
  rank: ["2", "8", "0", "999", "x"],
  delta: ["0.05", "0", "1", "-0.1", "x"],
  alpha: ["4", "0", "x"],
  lr: ["1e-3", "0", "-1", "1e6", "NaN", "Infinity"],
  warmup: ["0", "1", "-1", "2.5"],
  steps: ["1", "2", "0", "-2", "1.5", "1e999", "", "two"],
  "min-lr-ratio": ["0.1", "2", "x"],
  batch: ["1", "2", "0", "x"],
  seq: ["8", "16", "0", "100000", "-3"],
  "grad-accum": ["1", "2", "0"],
  clip: ["0", "1", "-1"],
  optimizer: ["adamw", "sgd"],
  "weight-decay": ["0", "0.1", "-1"],
  "galore-gap": ["1", "0", "x"],
  "galore-scale": ["0.25", "0", "x"],
  "galore-svd": ["auto", "randomized", "svd"],
  "refactor-every": ["0", "1", "x"],
  "relora-every": ["1", "0"],
  "recovery-steps": ["1", "0"],
  "eval-every": ["0", "1", "x"],
  "eval-tokens": ["16", "0", "x"],
  "log-every": ["1", "0", "x"],
  seed: ["0", "7", "-1", "x"],
  data: ["%data", "%missing.txt", "%binary", "%empty", "%config"],
  "val-data": ["%data", "%binary"],
  "val-fraction": ["0.5", "0", "1", "x"],
  tokenizer: ["bytes", "bogus"],
  packing: ["packed", "none", "x"],
  "on-nonfinite": ["stop", "skip", "x"],
  keep: ["1", "2", "0", "x"],
};
const BOOLEANS = ["per-layer", "resume"];

Deno.test("fuzz: random flag combinations end in a named error that changes nothing, or in a correct run", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-fuzz-" });
  const quiet = { log: console.log, error: console.error };
  const prevCache = Deno.env.get("SLTRAIN_CACHE");
  Deno.env.set("SLTRAIN_CACHE", `${tmp}/cache`);
  try {
    const files: Record<string, string> = {
      "%data": `${tmp}/train.jsonl`,
      "%missing.txt": `${tmp}/missing.txt`,
      "%missing.json": `${tmp}/missing.json`,
      "%binary": `${tmp}/binary.txt`,
      "%empty": `${tmp}/empty.txt`,
      "%config": `${tmp}/config.json`,
    };
    await Deno.writeTextFile(
      files["%data"],
      Array.from({ length: 6 }, (_, i) => JSON.stringify({ text: `Doc ${i}. `.repeat(30) }))
        .join("\n"),
    );
    await Deno.writeFile(files["%binary"], Uint8Array.from([1, 0, 255, 7]));
    await Deno.writeTextFile(files["%empty"], "");
    await Deno.writeTextFile(
      files["%config"],
      JSON.stringify({ hidden: 16, intermediate: 24, heads: 2, layers: 1, vocabSize: 300 }),
    );
    const inputs = new Map<string, Uint8Array>();
    for (const f of Object.values(files)) {
      try {
        inputs.set(f, await Deno.readFile(f));
      } catch { /* the missing ones */ }
    }
    const flagArb = fc.oneof(
      {
        weight: 6,
        arbitrary: fc.constantFrom(...Object.keys(FLAG_VALUES)).chain((k) =>
          fc.constantFrom(...FLAG_VALUES[k]).map((v) => [`--${k}`, files[v] ?? v])
        ),
      },
      { weight: 1, arbitrary: fc.constantFrom(...BOOLEANS).map((b) => [`--${b}`]) },
      { weight: 1, arbitrary: fc.constantFrom(["--bogus"], ["stray"], ["--steps"]) },
    );
    let k = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(flagArb, { maxLength: 6 }), async (flags) => {
        const out = `${tmp}/out-${k++}`;
        // A short run on the small data file unless the flags say otherwise (later flags win).
        const argv = [
          ...["--steps", "2", "--batch", "2", "--seq", "16", "--eval-tokens", "32"],
          ...["--data", files["%data"], "--out", out],
          ...flags.flat(),
        ];
        console.log = console.error = () => {};
        let code: number | null = null;
        let error: unknown = null;
        try {
          code = await main(argv);
        } catch (e) {
          error = e;
        } finally {
          Object.assign(console, quiet);
        }
        for (const [f, bytes] of inputs) {
          assert.ok(sameBytes(await Deno.readFile(f), bytes), `${f} changed (${argv.join(" ")})`);
        }
        if (error !== null) {
          count("flags", false);
          const msg = note("flags", error, tmp);
          // Refused before anything was made: no run folder is left behind.
          if (error instanceof FlagError || error instanceof SLTrainError) {
            const left = await Deno.stat(out).then(() => true, () => false);
            assert.ok(!left || [...Deno.readDirSync(out)].length === 0, `${out} left: ${msg}`);
          }
          return;
        }
        count("flags", true);
        assert.equal(code, 0, argv.join(" "));
        const log = await readLog(`${out}/log.jsonl`);
        assert.equal(log.torn, false);
        assert.ok(log.records.some((r) => r.kind === "train"));
        for (const r of log.records.filter((r) => r.kind === "train")) {
          assert.ok(Number.isFinite(r.loss), `loss ${r.loss} (${argv.join(" ")})`);
        }
      }),
      { numRuns: 40, seed: 25 },
    );
  } finally {
    if (prevCache === undefined) Deno.env.delete("SLTRAIN_CACHE");
    else Deno.env.set("SLTRAIN_CACHE", prevCache);
    await Deno.remove(tmp, { recursive: true });
  }
  console.log(`fuzz case counts: ${JSON.stringify(counts)}`);
  for (const [kind, set] of messages) {
    console.log(`${kind}: ${set.size} distinct messages\n  ${[...set].sort().join("\n  ")}`);
  }
});

Deno.test("fuzz through train.ts: damaged inputs exit non-zero with one error message, no stack trace, files untouched", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-fuzz-cli-" });
  try {
    const env = { SLTRAIN_CACHE: `${tmp}/cache` };
    const data = `${tmp}/train.jsonl`;
    await Deno.writeTextFile(
      data,
      Array.from({ length: 6 }, (_, i) => JSON.stringify({ text: `Doc ${i}. `.repeat(30) }))
        .join("\n"),
    );
    const short = ["--steps", "2", "--batch", "2", "--seq", "16", "--eval-tokens", "32"];
    const train = async (args: string[]) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "train.ts", ...short, ...args],
        env,
        stdout: "null",
        stderr: "piped",
      }).output();
      return { code: r.code, err: new TextDecoder().decode(r.stderr) };
    };
    const run = `${tmp}/run`;
    assert.equal((await train(["--data", data, "--out", run])).code, 0);
    const snapshot = async () =>
      new Map(
        await Promise.all(
          [...Deno.readDirSync(run)].map(async (e) =>
            [e.name, await Deno.readFile(`${run}/${e.name}`)] as const
          ),
        ),
      );
    const original = await snapshot();
    const ckpt = `${run}/checkpoint.safetensors`;
    const cases = fc.oneof(
      fc.tuple(fraction, fc.integer({ min: 1, max: 255 })).map(([at, x]) => ({
        what: "a flipped checkpoint byte",
        prepare: async () => {
          const b = original.get("checkpoint.safetensors")!.slice();
          b[Math.floor(at * b.length)] ^= x;
          await Deno.writeFile(ckpt, b);
        },
        args: ["--data", data, "--out", run, "--resume"],
      })),
      fc.constantFrom(
        new Uint8Array([0x68, 0xe9, 0x74, 0xe9]),
        new Uint8Array([0, 1, 2, 3, 255]),
        new Uint8Array(0),
        new TextEncoder().encode("{".repeat(300_000)),
      ).map((bytes) => ({
        what: "a bad data file",
        prepare: () => Deno.writeFile(`${tmp}/bad.jsonl`, bytes),
        args: ["--data", `${tmp}/bad.jsonl`, "--out", `${tmp}/new`],
      })),
      fc.constantFrom('{"hidden": "64"}', "[1, 2]", "not json", '{"hidden": 64, "heads": 3}').map(
        (text) => ({
          what: "a bad config",
          prepare: () => Deno.writeTextFile(`${tmp}/cfg.json`, text),
          args: ["--model", `${tmp}/cfg.json`, "--data", data, "--out", `${tmp}/new`],
        }),
      ),
    );
    const seen: string[] = [];
    await fc.assert(
      fc.asyncProperty(cases, async (c) => {
        await c.prepare();
        const before = await snapshot();
        const r = await train(c.args);
        assert.notEqual(r.code, 0, `${c.what}: exited 0`);
        const errors = r.err.split("\n").filter((l) => l.startsWith("error: "));
        assert.equal(errors.length, 1, `${c.what}: ${r.err}`);
        assert.doesNotMatch(r.err, /^\s+at /m, `${c.what}: a stack trace`);
        assert.deepEqual(await snapshot(), before, `${c.what}: the run folder changed`);
        assert.ok(!(await Deno.stat(`${tmp}/new`).then(() => true, () => false)));
        seen.push(`${c.what}: ${errors[0].split(tmp).join("<tmp>")}`);
        await Deno.writeFile(ckpt, original.get("checkpoint.safetensors")!);
      }),
      { numRuns: 8, seed: 26 },
    );
    console.log(`train.ts cases:\n  ${seen.join("\n  ")}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
