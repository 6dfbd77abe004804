import fc from "fast-check";
import assert from "node:assert/strict";
import {
  blockLinearShapes,
  ConfigError,
  countParams,
  estimateMemory,
  type LinearMethod,
  type LlamaConfig,
  type OptimizerSpec,
  parseConfig,
  PRESETS,
  sparseNnz,
  validateConfig,
  validateMethod,
  withVocab,
} from "../models/mod.ts";
import { loadConfig } from "../cli/load_config.ts";

const M = (n: number) => Number((n / 1e6).toFixed(2));
const GB = (n: number) => Number((n / 1e9).toFixed(3));

const dense: LinearMethod = { kind: "dense" };
const lowrank = (rank: number): LinearMethod => ({ kind: "lowrank", rank, alpha: 32 });
const relora = (rank: number): LinearMethod => ({ kind: "relora", rank, alpha: 32 });
const sltrain = (rank: number, delta = 0.03): LinearMethod => ({
  kind: "sltrain",
  rank,
  delta,
  alpha: 32,
  seed: 42,
});

function paper(config: LlamaConfig, method: LinearMethod): [number, number] {
  const e = estimateMemory(config, { method }, "paper");
  return [M(e.params.total), GB(e.total)];
}

Deno.test("presets have the reference shapes", () => {
  const shape = (c: LlamaConfig) => [c.hidden, c.intermediate, c.heads, c.layers, c.vocabSize];
  assert.deepEqual(shape(PRESETS["60m"]), [512, 1376, 8, 8, 32000]);
  assert.deepEqual(shape(PRESETS["130m"]), [768, 2048, 12, 12, 32000]);
  assert.deepEqual(shape(PRESETS["350m"]), [1024, 2736, 16, 24, 32000]);
  assert.deepEqual(shape(PRESETS["1b"]), [2048, 5461, 32, 24, 32000]);
  assert.deepEqual(shape(PRESETS["7b"]), [4096, 11008, 32, 32, 32000]);
  assert.deepEqual(shape(PRESETS.tiny), [128, 352, 4, 4, 32000]);
  assert.deepEqual(shape(PRESETS.small), [256, 688, 4, 4, 32000]);
  for (const c of Object.values(PRESETS)) {
    assert.deepEqual(validateConfig(c), c);
    assert.equal(c.rmsNormEps, 1e-6);
    assert.equal(c.ropeBase, 10000);
    assert.equal(c.initStd, 0.02);
  }
  assert.equal(withVocab(PRESETS.tiny, 256).vocabSize, 256);
  assert.equal(PRESETS.tiny.vocabSize, 32000, "withVocab must not mutate the preset");
  assert.throws(() => withVocab(PRESETS.tiny, 0), /vocabSize/);
});

Deno.test("blockLinearShapes: seven [out, in] linears per layer", () => {
  const s = blockLinearShapes(PRESETS["60m"]).map((l) => [l.name, ...l.shape]);
  assert.deepEqual(s, [
    ["q", 512, 512],
    ["k", 512, 512],
    ["v", 512, 512],
    ["o", 512, 512],
    ["gate", 1376, 512],
    ["up", 1376, 512],
    ["down", 512, 1376],
  ]);
});

// Table 2 params (M) and memory (GB) of SLTrain/GaLore under the paper's accounting.
Deno.test("pinned paper figures: params and memory", () => {
  const c60 = PRESETS["60m"];
  assert.deepEqual(paper(c60, dense), [58.07, 0.348]);
  assert.deepEqual(paper(c60, lowrank(128)), [42.77, 0.257]);
  assert.deepEqual(paper(c60, sltrain(128)), [43.53, 0.267]);
  assert.deepEqual(paper(PRESETS["130m"], dense), [134.11, 0.805]);
  assert.deepEqual(paper(PRESETS["130m"], sltrain(256)), [96.55, 0.600]);
  assert.deepEqual(paper(PRESETS["350m"], dense), [367.97, 2.208]);
  assert.deepEqual(paper(PRESETS["350m"], sltrain(256)), [194.29, 1.238]);
  assert.deepEqual(paper(PRESETS["1b"], dense), [1339.08, 8.034]);
  assert.deepEqual(paper(PRESETS["1b"], sltrain(512)), [645.55, 4.163]);
});

Deno.test("pinned paper figures: GaLore memory", () => {
  const galore = (c: LlamaConfig, rank: number) =>
    GB(estimateMemory(c, { method: dense, optimizer: { kind: "galore", rank } }, "paper").total);
  assert.equal(galore(PRESETS["60m"], 128), 0.280);
  assert.equal(galore(PRESETS["1b"], 512), 4.763);
  // Exact bytes for 60M, derived by hand: weights 2·58,073,600; Adam on 32,776,704 non-block
  // values; per layer 4·(512·128 + 2·128·512) + 3·(512·128 + 2·128·1376) entries.
  const e = estimateMemory(
    PRESETS["60m"],
    { method: dense, optimizer: { kind: "galore", rank: 128 } },
    "paper",
  );
  assert.equal(e.weights, 2 * 58_073_600);
  assert.equal(e.projector, 2 * 8 * 7 * 512 * 128);
  assert.equal(e.optimizerStates, 2 * (2 * 32_776_704 + 8 * 2 * 128 * (4 * 512 + 3 * 1376)));
  assert.equal(e.indices, 0);
  assert.equal(e.total, 279_890_944);
});

Deno.test("Fira, APOLLO and APOLLO-Mini memory at 60M, derived by hand", () => {
  const est = (optimizer: OptimizerSpec) =>
    estimateMemory(PRESETS["60m"], { method: dense, optimizer }, "paper");
  const galore = est({ kind: "galore", rank: 128 });
  // Per layer: 4 linears [512, 512] and 3 with max side 1376; 8 layers; one limiter norm each.
  const moments = (r: number) => 8 * 2 * r * (4 * 512 + 3 * 1376);
  const nonBlock = 2 * 2 * 32_776_704;
  const fira = est({ kind: "fira", rank: 128 });
  assert.equal(fira.projector, galore.projector);
  assert.equal(fira.optimizerStates, galore.optimizerStates + 2 * 8 * 7);
  assert.equal(fira.total, 279_890_944 + 112);
  const apollo = est({ kind: "apollo", rank: 128 });
  assert.equal(apollo.projector, 0);
  assert.equal(apollo.optimizerStates, nonBlock + 2 * moments(128) + 2 * 8 * 7);
  assert.equal(apollo.total, 272_551_024);
  const mini = est({ kind: "apollo", rank: 1 });
  assert.equal(mini.optimizerStates, nonBlock + 2 * moments(1) + 2 * 8 * 7);
  assert.equal(mini.total, 247_451_760);
  const off = est({ kind: "apollo", rank: 1, limiter: false });
  assert.equal(off.total, mini.total - 112);
  // 8-bit moments: the limiter norms stay at the weight size.
  const eight = est({ kind: "fira", rank: 128, bytesPerState: 1 });
  assert.equal(eight.optimizerStates, galore.optimizerStates / 2 + 2 * 8 * 7);
});

Deno.test("pinned 'ours' figures for 60M: bf16 weights, 8-bit states, GaLore8bit (derived by hand)", () => {
  const c = PRESETS["60m"];
  // Per layer: q, k, v, o [512, 512] (262,144 values), gate, up [1376, 512], down [512, 1376]
  // (704,512); embedding and lm_head 32000·512 = 16,384,000; 17 norm gains of 512.
  const bf16 = estimateMemory(c, { method: dense, weights: "bf16" }, "ours");
  // bf16: 2 bytes per value except the norm gains (f32); every size is even.
  assert.equal(bf16.weights, 2 * (2 * 16_384_000 + 8 * (4 * 262_144 + 3 * 704_512)) + 4 * 17 * 512);
  assert.equal(bf16.weights, 116_164_608);
  assert.equal(bf16.optimizerStates, 8 * 58_073_600, "f32 moments");
  // 8-bit, per moment of n ≥ 4096 values: n code bytes + ceil(n/256) f32 absmax; norms f32.
  const moment8 = (n: number) => n + 4 * Math.ceil(n / 256);
  const eight = estimateMemory(
    c,
    { method: dense, optimizer: { kind: "adam", states: "8bit" }, weights: "bf16" },
    "ours",
  );
  assert.equal(
    eight.optimizerStates,
    2 * (2 * moment8(16_384_000) + 8 * (4 * moment8(262_144) + 3 * moment8(704_512))) +
      17 * 8 * 512,
  );
  assert.equal(eight.optimizerStates, 118_013_952); // 0.254× the f32 moments
  assert.equal(eight.total, 116_164_608 + 118_013_952);
  // GaLore8bit, rank 128: moments of 128·512 (q, k, v, o) and 128·1376 (gate, up, down) values,
  // projectors 512·128 f32 each.
  const g8 = estimateMemory(
    c,
    { method: dense, optimizer: { kind: "galore", rank: 128, states: "8bit" }, weights: "bf16" },
    "ours",
  );
  assert.equal(
    g8.optimizerStates,
    2 * (2 * moment8(16_384_000) + 8 * (4 * moment8(128 * 512) + 3 * moment8(128 * 1376))) +
      17 * 8 * 512,
  );
  assert.equal(g8.optimizerStates, 79_475_712);
  assert.equal(g8.projector, 8 * 7 * 512 * 128 * 4);
  // A bf16 tensor takes whole 32-bit words: SLTrain's V of odd nnz rounds up by 2 bytes.
  const tiny = withVocab(PRESETS.tiny, 256);
  const sl = sltrain(32, 0.03);
  const odd = blockLinearShapes(tiny).filter(({ shape: [m, n] }) => sparseNnz(0.03, m, n) % 2);
  assert.ok(odd.length > 0);
  const f32 = estimateMemory(tiny, { method: sl }, "ours").weights;
  const half = estimateMemory(tiny, { method: sl, weights: "bf16" }, "ours").weights;
  const p = countParams(tiny, sl);
  assert.equal(half, 2 * (p.total - p.byPart.norms) + 4 * p.byPart.norms + 2 * 4 * odd.length);
  assert.ok(half < f32);
});

Deno.test("countParams: parts and nnz", () => {
  const p = countParams(PRESETS["60m"], sltrain(128));
  assert.equal(p.byPart.embedding, 32000 * 512);
  assert.equal(p.byPart.lmHead, 32000 * 512);
  assert.equal(p.byPart.norms, 17 * 512);
  // ⌊0.03·512²⌋ = 7864 (×4), ⌊0.03·1376·512⌋ = 21135 (×3), over 8 layers.
  assert.equal(p.nnz, 8 * (4 * 7864 + 3 * 21135));
  assert.equal(p.trainable, p.total);
});

const configArb: fc.Arbitrary<LlamaConfig> = fc
  .record({
    headDimHalf: fc.integer({ min: 1, max: 64 }),
    heads: fc.integer({ min: 1, max: 16 }),
    intermediate: fc.integer({ min: 2, max: 4096 }),
    layers: fc.integer({ min: 1, max: 48 }),
    vocabSize: fc.integer({ min: 1, max: 50000 }),
  })
  .map(({ headDimHalf, heads, ...rest }) =>
    validateConfig({
      ...PRESETS.tiny,
      ...rest,
      heads,
      hidden: 2 * headDimHalf * heads,
    })
  );

// A config plus a rank that is valid for it (below min(out, in) of every block linear).
const withRankArb = configArb
  .filter((c) => Math.min(c.hidden, c.intermediate) >= 2)
  .chain((c) =>
    fc.tuple(
      fc.constant(c),
      fc.integer({ min: 1, max: Math.min(c.hidden, c.intermediate) - 1 }),
      fc.double({ min: 1e-4, max: 0.999, noNaN: true }),
    )
  );

Deno.test("property: sltrain count = lowrank count + nnz", () => {
  fc.assert(
    fc.property(withRankArb, ([c, r, delta]) => {
      const lr = countParams(c, lowrank(r));
      const sl = countParams(c, sltrain(r, delta));
      assert.equal(sl.total, lr.total + sl.nnz);
      assert.equal(sl.trainable, lr.trainable + sl.nnz);
      assert.equal(lr.nnz, 0);
      const dn = countParams(c, dense);
      assert.equal(
        dn.byPart.embedding + dn.byPart.lmHead + dn.byPart.norms,
        lr.total - lr.byPart.blocks,
      );
    }),
  );
});

Deno.test("property: relora stores the dense weights plus the adapter and trains only the adapter and non-block params", () => {
  fc.assert(
    fc.property(withRankArb, ([c, r]) => {
      const rl = countParams(c, relora(r));
      const dn = countParams(c, dense);
      const lr = countParams(c, lowrank(r));
      assert.equal(rl.total, dn.total + lr.byPart.blocks);
      assert.equal(rl.byPart.blocks, dn.byPart.blocks + lr.byPart.blocks);
      assert.equal(rl.trainable, lr.total);
      assert.ok(rl.trainable < rl.total);
      assert.equal(rl.nnz, 0);
      const e = estimateMemory(c, { method: relora(r) }, "ours");
      assert.equal(e.weights, 4 * rl.total, "frozen weights are stored");
      assert.equal(e.optimizerStates, 8 * rl.trainable, "but get no optimizer state");
    }),
  );
});

Deno.test("relora 60M, rank 128: 68.07M values stored, 42.77M trained; 0.307 GB in the paper's accounting", () => {
  const p = countParams(PRESETS["60m"], relora(128));
  assert.equal(p.total, 58_073_600 + 8 * 128 * (4 * 1024 + 3 * (1376 + 512)));
  assert.equal(p.trainable, countParams(PRESETS["60m"], lowrank(128)).total);
  assert.deepEqual(paper(PRESETS["60m"], relora(128)), [68.07, 0.307]);
});

Deno.test("property: byte totals follow the accounting formulas", () => {
  fc.assert(
    fc.property(
      withRankArb,
      fc.constantFrom("dense", "lowrank", "sltrain", "relora"),
      ([c, r, d], kind) => {
        const method = kind === "dense"
          ? dense
          : kind === "lowrank"
          ? lowrank(r)
          : kind === "relora"
          ? relora(r)
          : sltrain(r, d);
        const p = countParams(c, method);
        const ours = estimateMemory(c, { method }, "ours");
        assert.equal(ours.total, 4 * (p.total + 2 * p.trainable) + 4 * p.nnz);
        const pap = estimateMemory(c, { method, optimizer: { kind: "adam" } }, "paper");
        assert.equal(pap.total, 2 * p.total + 4 * p.trainable + 8 * p.nnz);
        const eightBit = estimateMemory(
          c,
          { method, optimizer: { kind: "adam", bytesPerState: 1 } },
          "ours",
        );
        assert.equal(eightBit.optimizerStates, 2 * p.trainable);
      },
    ),
  );
});

Deno.test("errors: rank, delta, galore options", () => {
  const c = PRESETS["60m"];
  assert.throws(
    () => countParams(c, lowrank(512)),
    (e) => e instanceof ConfigError && /\[512, 512\]/.test(e.message),
  );
  assert.throws(() => countParams(c, sltrain(0)), /rank must be a positive integer/);
  assert.throws(() => countParams(c, sltrain(1.5)), /rank/);
  for (const delta of [0, 1, -0.1, 1.5, NaN]) {
    assert.throws(() => countParams(c, sltrain(128, delta)), /delta must be in \(0, 1\)/);
  }
  assert.throws(
    () => validateMethod(c, { kind: "sltrain", rank: 8, delta: 0.1, alpha: 1, seed: 0.5 }),
    /seed/,
  );
  assert.throws(() => validateMethod(c, { kind: "bogus" } as unknown as LinearMethod), /kind/);
  assert.throws(() => countParams(c, relora(512)), /relora.rank 512.*\[512, 512\]/);
  assert.throws(
    () => validateMethod(c, { kind: "relora", rank: 8, alpha: NaN }),
    /relora.alpha must be a finite number/,
  );
  assert.throws(
    () => estimateMemory(c, { method: relora(8), optimizer: { kind: "galore", rank: 8 } }, "ours"),
    /galore needs method "dense"/,
  );
  assert.throws(
    () => estimateMemory(c, { method: lowrank(8), optimizer: { kind: "galore", rank: 8 } }, "ours"),
    /galore needs method "dense"/,
  );
  assert.throws(
    () => estimateMemory(c, { method: dense, optimizer: { kind: "galore", rank: 513 } }, "ours"),
    /galore.rank 513.*\[512, 512\]/,
  );
  for (const kind of ["fira", "apollo"] as const) {
    assert.throws(
      () => estimateMemory(c, { method: sltrain(8), optimizer: { kind, rank: 8 } }, "ours"),
      new RegExp(`optimizer ${kind} needs method "dense"`),
    );
    // Unlike GaLore's, their rank must stay below every side: 512 is refused.
    assert.throws(
      () => estimateMemory(c, { method: dense, optimizer: { kind, rank: 512 } }, "ours"),
      (e) => e instanceof ConfigError && new RegExp(`${kind}.rank 512 must be <`).test(e.message),
    );
  }
  assert.throws(
    () => estimateMemory(c, { method: dense, weights: "f16" as "f32" }, "ours"),
    /weights must be "f32" or "bf16", got "f16"/,
  );
  assert.throws(
    () =>
      estimateMemory(
        c,
        { method: dense, optimizer: { kind: "adam", states: "4bit" as "8bit" } },
        "ours",
      ),
    /optimizer.states must be "f32" or "8bit"/,
  );
  assert.throws(
    () =>
      estimateMemory(
        c,
        { method: dense, optimizer: { kind: "adam", states: "8bit", bytesPerState: 1 } },
        "ours",
      ),
    /either states or bytesPerState/,
  );
  // The rank bound names the smallest dimension of whichever linear violates it.
  const narrow = validateConfig({ ...PRESETS.tiny, intermediate: 64 });
  assert.throws(() => countParams(narrow, lowrank(64)), /gate linear \[64, 128\]/);
  fc.assert(
    fc.property(configArb, fc.integer({ min: 0, max: 64 }), (cfg, extra) => {
      const r = Math.min(cfg.hidden, cfg.intermediate) + extra;
      assert.throws(() => countParams(cfg, sltrain(r)), ConfigError);
    }),
  );
});

Deno.test("config validation names the bad field", () => {
  const base = PRESETS.tiny;
  assert.throws(() => validateConfig({ ...base, heads: 3 }), /hidden \(128\).*divisible by heads/);
  assert.throws(() => validateConfig({ ...base, hidden: 132, heads: 4 }), /head dim 33.*even/);
  assert.throws(() => validateConfig({ ...base, layers: 0 }), /layers must be a positive integer/);
  assert.throws(() => validateConfig({ ...base, intermediate: -5 }), /intermediate/);
  assert.throws(() => validateConfig({ ...base, rmsNormEps: 0 }), /rmsNormEps/);
  assert.throws(() => parseConfig({ hidden_size: 128 }, "x.json"), /x\.json: .*vocab_size/);
  assert.throws(() => parseConfig([1, 2]), /expected a JSON object/);
  assert.throws(
    () => parseConfig({ ...base, hidden_size: 256 }),
    /hidden \(128\) and hidden_size \(256\) disagree/,
  );
  assert.throws(
    () => parseConfig({ ...base, num_key_value_heads: 1 }),
    /num_key_value_heads/,
  );
  assert.throws(() => parseConfig({ ...base, hidden_act: "gelu" }), /hidden_act/);
});

Deno.test("loadConfig: presets, unknown names, files", async () => {
  assert.equal(await loadConfig("60m"), PRESETS["60m"]);
  assert.equal(await loadConfig("1B"), PRESETS["1b"]);
  await assert.rejects(
    loadConfig("61m"),
    (e) => e instanceof ConfigError && /unknown preset "61m".*60m, 130m/.test(e.message),
  );
  await assert.rejects(loadConfig("/nonexistent/dir/cfg.json"), /cannot read config file/);
  const dir = await Deno.makeTempDir();
  try {
    const corrupt = `${dir}/corrupt.json`;
    await Deno.writeTextFile(corrupt, '{"hidden": 128,');
    await assert.rejects(
      loadConfig(corrupt),
      (e) =>
        e instanceof ConfigError && e.message.includes(corrupt) && /not valid JSON/.test(e.message),
    );
    // The reference's llama_60m.json, in HF names.
    const hf = `${dir}/llama_60m.json`;
    await Deno.writeTextFile(
      hf,
      JSON.stringify({
        architectures: ["LLaMAForCausalLM"],
        bos_token_id: 0,
        eos_token_id: 1,
        hidden_act: "silu",
        hidden_size: 512,
        intermediate_size: 1376,
        initializer_range: 0.02,
        max_sequence_length: 1024,
        model_type: "llama",
        num_attention_heads: 8,
        num_hidden_layers: 8,
        pad_token_id: -1,
        rms_norm_eps: 1e-6,
        transformers_version: "4.28.1",
        use_cache: true,
        vocab_size: 32000,
      }),
    );
    assert.deepEqual(await loadConfig(hf), PRESETS["60m"]);
    const bad = `${dir}/bad.json`;
    await Deno.writeTextFile(bad, JSON.stringify({ ...PRESETS.tiny, heads: 5 }));
    await assert.rejects(loadConfig(bad), /bad\.json: .*divisible by heads/);
    await fc.assert(
      fc.asyncProperty(configArb, fc.boolean(), async (c, withLen) => {
        const cfg = withLen ? { ...c, maxSeqLen: 512 } : c;
        const path = `${dir}/roundtrip.json`;
        await Deno.writeTextFile(path, JSON.stringify(cfg));
        assert.deepEqual(await loadConfig(path), cfg);
      }),
      { numRuns: 30 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
