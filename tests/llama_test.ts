import assert from "node:assert/strict";
import { Rng } from "../core/rng.ts";
import { readAll, Tensor, tensor, zeros } from "../core/tensor.ts";
import { valueAndGrad } from "../core/tape.ts";
import { type LlamaConfig, PRESETS, withVocab } from "../models/config.ts";
import { memoryStats } from "../core/memory.ts";
import { estimateMemory } from "../models/estimate.ts";
import { countTargets, crossEntropy } from "../ops/cross_entropy.ts";
import {
  disposeModel,
  evalLossSums,
  forward,
  initLlama,
  type Llama,
  type LlamaParams,
  loss,
  paramPaths,
} from "../models/llama.ts";
import { measureMemory } from "../models/memory.ts";
import type { LinearMethod } from "../models/method.ts";
import { refLogits, refLoss, type RefModel } from "./llama_ref.ts";
import { toyConfig } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

// The `tiny` code path at toy sizes: 2 heads of dim 8, 2 layers, vocab 11.
const TOY: LlamaConfig = toyConfig();
const B = 2;
const T = 5;

const METHODS: Record<string, LinearMethod> = {
  dense: { kind: "dense" },
  lowrank: { kind: "lowrank", rank: 4, alpha: 8 },
  sltrain: { kind: "sltrain", rank: 4, delta: 0.1, alpha: 8, seed: 3 },
  relora: { kind: "relora", rank: 4, alpha: 8 },
};

/** Rebuilds a params tree with `fn(path, tensor)` at every leaf (the order of paramPaths). */
function mapParams(params: LlamaParams, fn: (path: string, t: Tensor) => Tensor): LlamaParams {
  const walk = (node: unknown, path: string[]): unknown => {
    if (Array.isArray(node)) return node.map((v, i) => walk(v, [...path, String(i)]));
    if (node !== null && typeof node === "object" && !(node instanceof Tensor)) {
      return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, walk(v, [...path, k])]));
    }
    return fn(path.join("."), node as Tensor);
  };
  return walk(params, []) as LlamaParams;
}

function batchData(seed: number): { inputs: Int32Array; targets: Int32Array } {
  const rng = new Rng(seed);
  const inputs = Int32Array.from({ length: B * T }, () => rng.nextInt(TOY.vocabSize));
  const targets = Int32Array.from({ length: B * T }, () => rng.nextInt(TOY.vocabSize));
  // Padding: the last two targets of the second sequence predict nothing.
  targets[B * T - 1] = targets[B * T - 2] = -100;
  return { inputs, targets };
}

/**
 * A generic point for the gradient check: every parameter redrawn (f32-rounded, so the CPU sees
 * exactly what the GPU sees) at magnitudes where attention is far from uniform, norms are not all
 * ones and SLTrain's B is not zero, so no gradient is trivially zero and every op matters.
 */
function genericValue(path: string, rng: Rng): number {
  const u = () => 2 * rng.nextFloat() - 1;
  if (path === "embed") return Math.fround(u());
  if (path.endsWith("Norm")) return Math.fround(1 + 0.3 * u());
  return Math.fround(0.5 * u());
}

for (const [name, method] of Object.entries(METHODS)) {
  Deno.test(`llama ${name}: loss, logits and sampled gradients match a float64 reference (logits atol 2e-5, grads |g - fd| <= 5e-6 + 1e-3·|fd|)`, async () => {
    const model = initLlama(TOY, method, 1);
    const rng = new Rng(99);
    const cpu = new Map<string, Float64Array>();
    const params = mapParams(model.params, (path, t) => {
      const v = Float64Array.from({ length: t.size }, () => genericValue(path, rng));
      cpu.set(path, v);
      return tensor(Float32Array.from(v), [...t.shape]);
    });
    const { inputs, targets } = batchData(7);
    const batch = {
      inputs: tensor(inputs, [B, T], "i32"),
      targets: tensor(targets, [B, T], "i32"),
    };
    const { value, grads } = valueAndGrad((p: LlamaParams) => loss(model, p, batch))(params);
    const logits = forward(model, params, batch.inputs);
    const entries = paramPaths(params);
    const gradLeaves = paramPaths(grads).map((e) => e.tensor);
    const bufferPaths = Object.entries(model.buffers.layers).flatMap(([i, l]) =>
      Object.entries(l).map(([k, t]) => [`layers.${i}.${k}`, t!] as const)
    );
    const [lossGpu, logitsGpu, ...rest] = await readAll([
      value,
      logits,
      ...gradLeaves,
      ...bufferPaths.map(([, t]) => t),
    ]);
    const gradGpu = rest.slice(0, gradLeaves.length);
    const ref: RefModel = {
      config: TOY,
      method,
      params: cpu,
      buffers: new Map(bufferPaths.map(([p], i) => [p, rest[gradLeaves.length + i]])),
    };
    for (const t of [value, logits, ...gradLeaves, ...entries.map((e) => e.tensor)]) t.dispose();
    for (const t of Object.values(batch)) t.dispose();
    disposeModel(model);

    const expLogits = refLogits(ref, inputs, B, T);
    let maxAbs = 0;
    let logitErr = 0;
    for (let i = 0; i < expLogits.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(expLogits[i]));
      logitErr = Math.max(logitErr, Math.abs(logitsGpu[i] - expLogits[i]));
      assert.ok(
        Math.abs(logitsGpu[i] - expLogits[i]) <= 2e-5 + 1e-5 * Math.abs(expLogits[i]),
        `logit ${i}: gpu ${logitsGpu[i]} vs ref ${expLogits[i]}`,
      );
    }
    assert.ok(maxAbs > 0.5, `logits too small to test anything (max |logit| ${maxAbs})`);
    const l0 = refLoss(ref, inputs, targets, B, T);
    assert.ok(Math.abs(lossGpu[0] - l0) <= 1e-5 * l0, `loss gpu ${lossGpu[0]} vs ref ${l0}`);

    // One coordinate in every tensor, plus 20 anywhere: central differences in float64.
    const pick = new Rng(5);
    const coords = entries.map((e, k) => [k, pick.nextInt(e.tensor.size)]);
    for (let i = 0; i < 20; i++) {
      const k = pick.nextInt(entries.length);
      coords.push([k, pick.nextInt(entries[k].tensor.size)]);
    }
    const h = 1e-5;
    let worst = 0;
    for (const [k, j] of coords) {
      const v = cpu.get(entries[k].path)!;
      const x0 = v[j];
      v[j] = x0 + h;
      const lp = refLoss(ref, inputs, targets, B, T);
      v[j] = x0 - h;
      const lm = refLoss(ref, inputs, targets, B, T);
      v[j] = x0;
      const fd = (lp - lm) / (2 * h);
      const g = gradGpu[k][j];
      const err = Math.abs(g - fd);
      worst = Math.max(worst, err / (5e-6 + 1e-3 * Math.abs(fd)));
      assert.ok(
        err <= 5e-6 + 1e-3 * Math.abs(fd),
        `${entries[k].path}[${j}]: gpu grad ${g} vs finite difference ${fd}`,
      );
    }
    console.log(
      `  ${name}: max |logit err| ${logitErr.toExponential(1)} (max |logit| ${
        maxAbs.toFixed(2)
      }), ` +
        `${coords.length} gradient coordinates, worst error / tolerance ${worst.toFixed(3)}`,
    );
  });
}

Deno.test("llama: measured parameter and index bytes equal estimateMemory('ours') to the byte (tiny, small; vocab 32000)", () => {
  for (const preset of ["tiny", "small"] as const) {
    const config = PRESETS[preset];
    const rank = config.hidden / 4;
    const methods: LinearMethod[] = [
      { kind: "dense" },
      { kind: "lowrank", rank, alpha: 32 },
      { kind: "sltrain", rank, delta: 0.03, alpha: 32, seed: 42 },
      { kind: "relora", rank, alpha: 32 },
    ];
    for (const method of methods) {
      const m = measureMemory(config, method);
      const est = estimateMemory(config, { method }, "ours");
      const what = `${preset}/${method.kind}`;
      // Trainable tensors are the params; frozen ReLoRA weights and sparse indices the buffers.
      const frozen = 4 * (est.params.total - est.params.trainable);
      assert.equal(m.params, 4 * est.params.trainable, `${what}: params bytes`);
      assert.equal(m.buffers, frozen + est.indices, `${what}: buffer bytes`);
      assert.equal(m.total, est.weights + est.indices, `${what}: total`);
      console.log(`  ${what}: measured ${m.params} + ${m.buffers} B = estimate`);
    }
  }
});

Deno.test("llama: measureMemory counts what an optimizer-state hook keeps alive (sltrain, relora: states for trainable tensors only)", () => {
  for (const method of [METHODS.sltrain, METHODS.relora]) {
    // Stand-in for Adam: two zero moments per trainable tensor.
    const m = measureMemory(TOY, method, {
      extra: (model) =>
        paramPaths(model.params).flatMap((e) => [zeros(e.tensor.shape), zeros(e.tensor.shape)]),
    });
    const est = estimateMemory(TOY, { method }, "ours");
    assert.equal(m.extra, est.optimizerStates, method.kind);
    assert.equal(m.total, est.total, method.kind);
  }
});

async function blockGrads(model: Llama, params: LlamaParams): Promise<Map<string, Float32Array>> {
  const { inputs, targets } = batchData(11);
  const batch = { inputs: tensor(inputs, [B, T], "i32"), targets: tensor(targets, [B, T], "i32") };
  const { value, grads } = valueAndGrad((p: LlamaParams) => loss(model, p, batch))(params);
  const entries = paramPaths(grads).filter((e) => e.layer !== undefined);
  const data = await readAll(entries.map((e) => e.tensor));
  for (const t of [value, ...paramPaths(grads).map((e) => e.tensor), ...Object.values(batch)]) {
    t.dispose();
  }
  return new Map(entries.map((e, i) => [e.path, data[i] as Float32Array]));
}

const maxAbs = (v: Float32Array) => v.reduce((m, x) => Math.max(m, Math.abs(x)), 0);

Deno.test("llama lowrank: B = 0 is an exact saddle (every block gradient is exactly 0); the Kaiming B init escapes it", async () => {
  const model = initLlama(TOY, METHODS.lowrank, 2);
  const zeroB = mapParams(model.params, (path, t) => (path.endsWith(".B") ? zeros(t.shape) : t));
  const atSaddle = await blockGrads(model, zeroB);
  for (const [path, g] of atSaddle) assert.equal(maxAbs(g), 0, `${path} gradient at B = 0`);
  const escaped = await blockGrads(model, model.params);
  for (const [path, g] of escaped) assert.ok(maxAbs(g) > 0, `${path} gradient at the chosen init`);
  for (const e of paramPaths(zeroB)) if (e.path.endsWith(".B")) e.tensor.dispose();
  disposeModel(model);
});

Deno.test("llama sltrain: B = 0 init is no saddle (B and V gradients nonzero; A's is exactly 0 until B moves)", async () => {
  const model = initLlama(TOY, METHODS.sltrain, 2);
  const g = await blockGrads(model, model.params);
  for (const [path, v] of g) {
    if (path.endsWith(".A")) assert.equal(maxAbs(v), 0, path);
    else assert.ok(maxAbs(v) > 0, path);
  }
  disposeModel(model);
});

async function snapshot(model: Llama): Promise<Map<string, number[]>> {
  const entries = [
    ...paramPaths(model.params).map((e) => [e.path, e.tensor] as const),
    ...model.buffers.layers.flatMap((l, i) =>
      Object.entries(l).map(([k, t]) => [`support.${i}.${k}`, t!] as const)
    ),
  ];
  const data = await readAll(entries.map(([, t]) => t));
  return new Map(entries.map(([p], i) => [p, Array.from(data[i])]));
}

Deno.test("llama: init is deterministic per seed, differs across seeds; supports follow method.seed only; init distributions", async () => {
  const method = METHODS.sltrain;
  const models = [
    initLlama(TOY, method, 5),
    initLlama(TOY, method, 5),
    initLlama(TOY, method, 6),
    initLlama(TOY, { ...method, seed: 4 } as LinearMethod, 5),
    initLlama(TOY, METHODS.dense, 5),
    initLlama(TOY, METHODS.lowrank, 5),
  ];
  const [a, a2, b, otherSupport, dense, lowrank] = await Promise.all(models.map(snapshot));
  models.forEach(disposeModel);
  assert.deepEqual(a2, a, "same seed, same params and supports");
  for (const p of ["embed", "lmHead", "layers.0.q.A", "layers.1.down.V"]) {
    assert.notDeepEqual(b.get(p), a.get(p), `${p} differs across seeds`);
  }
  assert.deepEqual(
    b.get("support.0.q"),
    a.get("support.0.q"),
    "support depends on method.seed only",
  );
  assert.notDeepEqual(otherSupport.get("support.0.q"), a.get("support.0.q"));
  assert.notDeepEqual(a.get("support.0.k"), a.get("support.0.q"), "linears get different supports");
  assert.deepEqual(dense.get("embed"), a.get("embed"), "embedding does not depend on the method");

  // Distributions: bounds are the init's, and samples fill most of the range.
  const bound = (v: number[], lim: number, what: string) => {
    const m = Math.max(...v.map(Math.abs));
    assert.ok(m <= lim && m > 0.8 * lim, `${what}: max |x| ${m} vs bound ${lim}`);
  };
  const d = TOY.hidden, f = TOY.intermediate;
  bound(a.get("layers.0.q.A")!, 1 / Math.sqrt(d), "sltrain A");
  bound(a.get("layers.0.down.V")!, 1 / Math.sqrt(f), "sltrain V");
  assert.ok(a.get("layers.0.gate.B")!.every((x) => x === 0), "sltrain B = 0");
  assert.equal(a.get("layers.0.gate.V")!.length, Math.floor(0.1 * f * d));
  bound(lowrank.get("layers.1.up.A")!, 1 / Math.sqrt(d), "lowrank A");
  bound(lowrank.get("layers.1.up.B")!, 1 / Math.sqrt(4), "lowrank B");
  for (const p of ["layers.0.attnNorm", "layers.1.mlpNorm", "finalNorm"]) {
    assert.ok(a.get(p)!.every((x) => x === 1), `${p} = 1`);
  }
  const std = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
  for (const p of ["embed", "lmHead", "layers.0.v.w"]) {
    const s = std(dense.get(p)!);
    assert.ok(Math.abs(s - 0.02) < 0.004, `${p}: std ${s}`);
  }
});

Deno.test("llama tiny preset (vocab 256, B 2, T 16): loss at init ≈ ln 256, finite gradients, no tensor left alive", async () => {
  const config = withVocab(PRESETS.tiny, 256);
  for (
    const method of [METHODS.dense, { ...METHODS.lowrank, rank: 32 }, {
      ...METHODS.sltrain,
      rank: 32,
      delta: 0.03,
    }, { ...METHODS.relora, rank: 32 }] as LinearMethod[]
  ) {
    const base = memoryStats().liveBuffers;
    const model = initLlama(config, method, 0);
    const rng = new Rng(3);
    const ids = Int32Array.from({ length: 2 * 16 }, () => rng.nextInt(256));
    const batch = {
      inputs: tensor(ids, [2, 16], "i32"),
      targets: tensor(ids.map((x) => (x * 7 + 1) % 256), [2, 16], "i32"),
    };
    const withModel = memoryStats().liveBuffers;
    const { value, grads } = valueAndGrad((p: LlamaParams) => loss(model, p, batch))(model.params);
    const leaves = paramPaths(grads).map((e) => e.tensor);
    assert.equal(
      memoryStats().liveBuffers,
      withModel + 1 + leaves.length,
      "only the loss and the grads survive",
    );
    const [l, ...g] = await readAll([value, ...leaves]);
    for (const t of [value, ...leaves, ...Object.values(batch)]) t.dispose();
    disposeModel(model);
    assert.equal(memoryStats().liveBuffers, base, `${method.kind}: buffers left alive`);
    // The final norm gives unit-RMS features, so logits ~ N(0, 0.02²·D): the loss starts at
    // ln V + 0.02²·D/2 ≈ ln V + 0.026, up to sampling noise.
    const expected = Math.log(256) + 0.02 ** 2 * config.hidden / 2;
    assert.ok(
      Math.abs(l[0] - expected) < 0.08,
      `${method.kind}: initial loss ${l[0]} vs ${expected}`,
    );
    g.forEach((v, i) => assert.ok(v.every(Number.isFinite), `${method.kind}: grad ${i} finite`));
  }
});

Deno.test("llama: chunked loss (3-row / 3-class chunks) equals crossEntropy(forward) in value and every gradient; evalLossSums gives sum and count", async () => {
  // lowrank: its Kaiming B makes every gradient nonzero, so nothing is compared trivially.
  const model = initLlama(TOY, METHODS.lowrank, 3);
  const params = model.params;
  const { inputs, targets } = batchData(21);
  const batch = { inputs: tensor(inputs, [B, T], "i32"), targets: tensor(targets, [B, T], "i32") };
  // 4·V·3 bytes: forward row chunks of 3 (10 = 3+3+3+1), backward vocabulary blocks of 3 (11 = 3+3+3+2).
  const chunkBytes = 4 * TOY.vocabSize * 3;
  const chunked = valueAndGrad((p: LlamaParams) => loss(model, p, batch, { chunkBytes }))(params);
  const plain = valueAndGrad((p: LlamaParams) =>
    crossEntropy(forward(model, p, batch.inputs), batch.targets, { ignoreIndex: -100 })
  )(params);
  const sums = evalLossSums(model, params, batch, { chunkBytes });
  const count = countTargets(batch.targets);
  const leaves = (r: { value: Tensor; grads: LlamaParams }) => [
    r.value,
    ...paramPaths(r.grads).map((e) => e.tensor),
  ];
  const [c, p] = [leaves(chunked), leaves(plain)];
  const all = await readAll([...c, ...p, sums.sum, sums.count, count]);
  const [cd, pd] = [all.slice(0, c.length), all.slice(c.length, 2 * c.length)];
  const [sum, cnt, expCount] = all.slice(2 * c.length);
  for (const t of [...c, ...p, sums.sum, sums.count, count, ...Object.values(batch)]) t.dispose();
  disposeModel(model);
  const names = ["loss", ...paramPaths(params).map((e) => e.path)];
  cd.forEach((v, i) => {
    for (let j = 0; j < v.length; j++) {
      assert.ok(
        Math.abs(v[j] - pd[i][j]) <= 1e-6 + 1e-5 * Math.abs(pd[i][j]),
        `${names[i]}[${j}]: chunked ${v[j]} vs plain ${pd[i][j]}`,
      );
    }
  });
  assert.equal(cnt[0], expCount[0]);
  assert.equal(cnt[0], B * T - 2);
  assert.ok(Math.abs(sum[0] / cnt[0] - pd[0][0]) <= 1e-6 * pd[0][0], "sum / count = mean loss");
});
