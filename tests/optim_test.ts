/**
 * Optimizer tests: AdamW against a float64 CPU reference, the fused AdamW against its chain, the
 * transforms' ownership (in-place donation, nothing allocated per step), schedules against their
 * closed forms, GPU clipping, gradient accumulation, per-layer updates against whole-tree
 * ones, GaLore's algebra (projection identities, moment mapping, equivalence with AdamW on
 * signed-permutation gradients, moments across refreshes, projector accuracy) and measured state
 * memory. Tolerances are stated per assertion.
 */
import fc from "fast-check";
import { gpuDevice } from "../core/device.ts";
import assert from "node:assert/strict";
import { fromBf16Bits, toBf16Bits } from "../core/bf16.ts";
import { dispatchStats } from "../core/kernel.ts";
import { memoryStats } from "../core/memory.ts";
import { full, readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { qr } from "../ops/svd.ts";
import { add, mul, sum } from "../ops/mod.ts";
import {
  type AdamState,
  adamw,
  addDecayedWeights,
  applyUpdates,
  chain,
  clipByGlobalNorm,
  type ClipState,
  galore,
  type GaLoreState,
  type GradientTransformation,
  multiSteps,
  partition,
  perLayer,
  quickRecovery,
  scaleByAdam,
  scaleByLearningRate,
  warmupCosine,
} from "../optim/mod.ts";
import { computeProjectors, project, projectBack } from "../optim/galore.ts";
import { scaleInPlace } from "../optim/inplace.ts";
import { setMultiTensorAdam } from "../optim/adam_f32.ts";
import { assertClose, backward, frob, mm, randomArr, setup, withBindingWindow } from "./util.ts";

await setup();

const RUNS = { numRuns: 5, seed: 42 } as const;

/** Row-major f32-rounded random matrix data. */
function rand(shape: number[], seed: number, lo = -1, hi = 1): Float64Array {
  return randomArr(shape, seed, lo, hi).data;
}

function up(data: Float64Array, shape: number[]): Tensor {
  return tensor(Float32Array.from(data), shape);
}

/** Float64 AdamW step (PyTorch semantics) in place. */
function adamRef(
  p: Float64Array,
  m: Float64Array,
  v: Float64Array,
  g: ArrayLike<number>,
  lr: number,
  t: number,
  wd: number,
  b1 = 0.9,
  b2 = 0.999,
  eps = 1e-8,
): void {
  const bc1 = 1 - b1 ** t, bc2 = 1 - b2 ** t;
  for (let i = 0; i < p.length; i++) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    p[i] = p[i] * (1 - lr * wd) - (lr / bc1) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps);
  }
}

/** Float64 copies of tensors' values (one sync). */
async function values(ts: Tensor[]): Promise<Float64Array[]> {
  return (await readAll(ts)).map((d) => Float64Array.from(d));
}

/** One to three tensor shapes of rank 1 or 2, sides up to `max`. */
function shapeLists(max: number) {
  return fc.array(fc.array(fc.integer({ min: 1, max }), { minLength: 1, maxLength: 2 }), {
    minLength: 1,
    maxLength: 3,
  });
}

/** One step of `opt` on `params` with gradients from `data` (uploaded fresh, consumed). */
async function step<S>(
  opt: GradientTransformation<S>,
  params: Tensor[],
  state: S,
  data: Float64Array[],
): Promise<{ params: Tensor[]; state: S }> {
  const grads = data.map((g, i) => up(g, [...params[i].shape]));
  const r = await opt.update(grads, state, params);
  return { params: applyUpdates(params, r.updates), state: r.state };
}

Deno.test("adamw matches a float64 reference over 20 steps (random shapes, wd, schedule)", async () => {
  await fc.assert(
    fc.asyncProperty(
      shapeLists(40),
      fc.integer({ min: 1, max: 1e6 }),
      fc.constantFrom(0, 0.1),
      async (shapes, seed, wd) => {
        const lr = warmupCosine({ lr: 0.01, warmup: 5, total: 20, minRatio: 0.1 });
        const opt = adamw({ lr, weightDecay: wd });
        const p0 = shapes.map((s, i) => rand(s, seed + i));
        let params: Tensor[] = shapes.map((s, i) => up(p0[i], s));
        let state = opt.init(params);
        const ref = p0.map((p) => ({
          p: p.slice(),
          m: new Float64Array(p.length),
          v: new Float64Array(p.length),
        }));
        for (let t = 0; t < 20; t++) {
          const gs = shapes.map((s, i) => rand(s, seed * 31 + t * 7 + i, -2, 2));
          ({ params, state } = await step(opt, params, state, gs));
          ref.forEach((x, i) => adamRef(x.p, x.m, x.v, gs[i], lr(t), t + 1, wd));
        }
        const got = await readAll([...params, ...state.m, ...state.v]);
        const k = params.length;
        ref.forEach((x, i) => {
          // f32 vs f64 over 20 steps: errors stay ~1e-6 since each step is bounded by lr.
          assertClose(got[i], x.p, { atol: 1e-5, rtol: 1e-4, what: "params" });
          assertClose(got[k + i], x.m, { atol: 1e-5, rtol: 1e-4, what: "m" });
          assertClose(got[2 * k + i], x.v, { atol: 1e-5, rtol: 1e-4, what: "v" });
        });
        assert.equal(state.count, 20);
        tree.dispose([params, state]);
      },
    ),
    RUNS,
  );
});

Deno.test("multi-tensor Adam: up to 8 f32 parameters per dispatch give the single-tensor kernels' bits (mixed with bf16 ones, with and without decay, scaleByAdam too)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.record({ size: fc.integer({ min: 1, max: 3000 }), bf16: fc.boolean() }), {
        minLength: 1,
        maxLength: 20,
      }),
      fc.integer({ min: 1, max: 1e6 }),
      fc.constantFrom(0, 0.1),
      fc.boolean(),
      async (specs, seed, wd, direction) => {
        const run = async (multi: boolean) => {
          const prev = setMultiTensorAdam(multi);
          try {
            const opt = direction ? scaleByAdam() : adamw({ lr: 0.01, weightDecay: wd });
            const dtype = (b: boolean) => (b ? "bf16" : "f32");
            let params = specs.map((x, i) =>
              tensor(Float32Array.from(rand([x.size], seed + i)), [x.size], dtype(x.bf16))
            );
            let state = opt.init(params);
            let dispatches = 0;
            for (let t = 0; t < 3; t++) {
              const grads = specs.map((x, i) =>
                tensor(Float32Array.from(rand([x.size], seed * 7 + t * 31 + i, -2, 2)), [x.size])
              );
              const d0 = dispatchStats().dispatches;
              const r = await opt.update(grads, state, params);
              dispatches += dispatchStats().dispatches - d0;
              state = r.state;
              params = applyUpdates(params, r.updates);
            }
            const data = await readAll([...params, ...state.m, ...state.v]);
            tree.dispose([params, state]);
            return { data, dispatches };
          } finally {
            setMultiTensorAdam(prev);
          }
        };
        const [single, multi] = [await run(false), await run(true)];
        assert.deepEqual(multi.data, single.data);
        // Gradients are f32 here; a bf16 parameter keeps its own dispatch only where decay reads it.
        const decays = !direction && wd > 0;
        const grouped = specs.filter((x) => !(decays && x.bf16)).length;
        // Up to 8 per dispatch, fewer where the adapter has fewer storage bindings per stage
        // (3 per parameter, 4 with decay; Chromium allows 10 where lavapipe allows 32).
        const bindings = gpuDevice().limits.maxStorageBuffersPerShaderStage;
        const per = Math.min(8, Math.floor(bindings / (decays ? 4 : 3)));
        const perStep = specs.length - grouped + Math.ceil(grouped / per);
        assert.equal(multi.dispatches, 3 * perStep, "dispatches of the multi-tensor path");
      },
    ),
    RUNS,
  );
});

Deno.test("the fused adamw equals chain(scaleByAdam, addDecayedWeights, scaleByLearningRate) over 12 steps with decay and a schedule", async () => {
  await fc.assert(
    fc.asyncProperty(
      shapeLists(30),
      fc.integer({ min: 1, max: 1e6 }),
      fc.constantFrom(0, 0.05, 0.3),
      async (shapes, seed, wd) => {
        const lr = warmupCosine({ lr: 0.02, warmup: 3, total: 12, minRatio: 0.1 });
        const fused = adamw({ lr, weightDecay: wd, betas: [0.8, 0.99], eps: 1e-6 });
        const chained = chain(
          scaleByAdam({ betas: [0.8, 0.99], eps: 1e-6 }),
          addDecayedWeights(wd),
          scaleByLearningRate(lr),
        );
        const p0 = shapes.map((s, i) => rand(s, seed + i));
        const fresh = () => shapes.map((s, i) => up(p0[i], s));
        const [pa0, pb0] = [fresh(), fresh()];
        let a = { params: pa0, state: fused.init(pa0) };
        let b = { params: pb0, state: chained.init(pb0) };
        for (let t = 0; t < 12; t++) {
          const gs = shapes.map((s, i) => rand(s, seed * 17 + t * 5 + i, -2, 2));
          a = await step(fused, a.params, a.state, gs);
          b = await step(chained, b.params, b.state, gs);
        }
        const [pa, pb] = [await values(a.params), await values(b.params)];
        // Same f64 scalars, different f32 rounding order (one kernel vs three): ~1 ulp per step.
        pa.forEach((x, i) => assertClose(x, pb[i], { atol: 2e-6, rtol: 2e-6, what: "params" }));
        // The moments take the same kernel arithmetic in both: equal to the bit.
        const [ma, mb] = [await values(a.state.m), await values((b.state[0] as AdamState).m)];
        ma.forEach((x, i) => assert.deepEqual(x, mb[i], "first moments"));
        tree.dispose([a, b]);
      },
    ),
    RUNS,
  );
});

Deno.test("transforms work in place: applyUpdates and adamw reuse the buffers they consume, allocate nothing per step, and copy a shared parameter instead", async () => {
  const opt = adamw({ lr: 0.1, weightDecay: 0.01 });
  let params = [tensor([1, 2, 3]), tensor([[4, 5], [6, 7]])];
  let state = opt.init(params);
  ({ params, state } = await step(opt, params, state, [rand([3], 1), rand([2, 2], 2)]));
  const buffers = params.map((p) => p.storage.buffer);
  const before = memoryStats();
  const old = params;
  ({ params, state } = await step(opt, params, state, [rand([3], 3), rand([2, 2], 4)]));
  const after = memoryStats();
  assert.ok(old.every((p) => p.isDisposed), "the consumed parameters are disposed");
  assert.deepEqual(params.map((p) => p.storage.buffer), buffers, "same buffers, new handles");
  assert.equal(after.liveBytes, before.liveBytes);
  assert.equal(after.liveBuffers, before.liveBuffers);
  // A parameter another handle still reads is not overwritten: the update goes to a copy.
  const alias = params[0].view([3]);
  const kept = await alias.data();
  ({ params, state } = await step(opt, params, state, [rand([3], 5), rand([2, 2], 6)]));
  assert.deepEqual(await alias.data(), kept);
  assert.notEqual(params[0].storage.buffer, alias.storage.buffer);
  tree.dispose([params, state, alias]);
});

Deno.test("update is synchronous except for a GaLore projector refresh; null updates leave parameters alone", async () => {
  const p = [up(rand([6, 9], 1), [6, 9])];
  const opt = chain(galore(scaleByAdam(), { rank: 2, updateProjGap: 2 }), scaleByLearningRate(0.1));
  let state = opt.init(p);
  const kinds: boolean[] = [];
  let params = p;
  for (let t = 0; t < 4; t++) {
    const r = opt.update([up(rand([6, 9], 10 + t), [6, 9])], state, params);
    kinds.push(r instanceof Promise);
    const { updates, state: s } = await r;
    state = s;
    params = applyUpdates(params, updates);
  }
  assert.deepEqual(kinds, [true, false, true, false]);
  const adam = adamw({ lr: 0.1 });
  const s = adam.init(params);
  assert.ok(!(adam.update([up(rand([6, 9], 3), [6, 9])], s, params) instanceof Promise));
  const same = applyUpdates({ w: params[0] }, { w: null });
  assert.equal(same.w, params[0]);
  assert.throws(() => applyUpdates({ w: params[0] }, { x: tensor([1]) }), /unknown parameters x/);
  const bad = galore(addDecayedWeights(0.1), { rank: 2 });
  const badState = bad.init(params);
  await assert.rejects(
    async () => await bad.update([up(rand([6, 9], 3), [6, 9])], badState),
    /inside galore there are none/,
  );
  tree.dispose([params, state]);
});

Deno.test("schedules match their closed forms at every step", () => {
  const N = 300, W = 30, lr0 = 3e-3, min = 0.1;
  const f = warmupCosine({ lr: lr0, warmup: W, total: N, minRatio: min });
  const normal = (s: number) =>
    s < W ? s / W : min + (1 - min) * 0.5 * (1 + Math.cos(Math.PI * (s - W) / (N - W)));
  for (let s = 0; s <= N; s++) assert.ok(Math.abs(f(s) - lr0 * normal(s)) <= 1e-15, `step ${s}`);
  assert.equal(f(0), 0);
  assert.ok(Math.abs(f(N) - lr0 * min) < 1e-15);
  // Port of the reference _get_cosine_schedule_with_quick_recovery_lambda (restarts every C).
  const C = 50, R = 10;
  const q = quickRecovery(f, { cycleLength: C, recoverySteps: R });
  for (let s = 0; s <= N; s++) {
    const last = Math.floor(s / C) * C;
    const since = s - last;
    let want = lr0 * normal(s);
    if (last > 0 && since < R) {
      const target = lr0 * normal(last + R);
      const start = target * 0.001;
      want = start + (target - start) * Math.min(since / (R - 1), 1);
    }
    assert.ok(Math.abs(q(s) - want) <= 1e-15, `quick recovery step ${s}: ${q(s)} vs ${want}`);
  }
  assert.ok(Math.abs(q(C) - 0.001 * lr0 * normal(C + R)) < 1e-18);
  assert.ok(Math.abs(q(C + R - 1) - lr0 * normal(C + R)) < 1e-15);
});

Deno.test("clipping scales to the max norm on the GPU, and leaves small gradients alone", async () => {
  const shapes = [[7, 33], [129], [5000]];
  const gs = shapes.map((s, i) => rand(s, 100 + i));
  const norm = Math.sqrt(gs.reduce((a, g) => a + frob(g) ** 2, 0));
  const upAll = () => gs.map((g, i) => up(g, shapes[i]));
  const run = (maxNorm: number) => {
    const clip = clipByGlobalNorm(maxNorm, { keepNorm: true });
    return clip.update(upAll(), clip.init([])) as { updates: Tensor[]; state: ClipState };
  };
  const small = run(norm / 4);
  const big = run(norm * 2);
  const out = await readAll([small.state.norm!, big.state.norm!, ...small.updates, ...big.updates]);
  assertClose(out[0], [norm], { rtol: 1e-5, what: "norm" });
  assertClose(out[1], [norm], { rtol: 1e-5, what: "norm" });
  const clippedNorm = Math.sqrt(out.slice(2, 5).reduce((a, g) => a + frob(g) ** 2, 0));
  assert.ok(Math.abs(clippedNorm - norm / 4) <= 1e-5 * norm, `${clippedNorm} vs ${norm / 4}`);
  out.slice(5, 8).forEach((g, i) => assertClose(g, gs[i], { atol: 0, rtol: 0, what: "unclipped" }));
  tree.dispose([small, big]);
});

Deno.test("multiSteps: k micro-steps update once, with the mean of their gradients", async () => {
  const shapes = [[5, 7], [11]];
  const p0 = shapes.map((s, i) => rand(s, 60 + i));
  const micro = [0, 1, 2].map((k) => shapes.map((s, i) => rand(s, 70 + 10 * k + i, -2, 2)));
  const mean = micro[0].map((g, i) => g.map((x, j) => (x + micro[1][i][j] + micro[2][i][j]) / 3));
  const inner = adamw({ lr: 0.05, weightDecay: 0.1 });
  const accumulate = multiSteps(inner, 3);
  const fresh = () => shapes.map((s, i) => up(p0[i], s));
  const pa0 = fresh();
  let a = { params: pa0, state: accumulate.init(pa0) };
  const first = a.params.map((p) => p.storage.buffer);
  for (let k = 0; k < 3; k++) {
    const old = a.params;
    a = await step(accumulate, a.params, a.state, micro[k]);
    if (k < 2) assert.ok(a.params.every((p, i) => p === old[i]), "untouched before the 3rd");
  }
  assert.deepEqual(a.params.map((p) => p.storage.buffer), first);
  assert.equal(a.state.micro, 0);
  assert.equal(a.state.acc, null);
  const pb0 = fresh();
  let b = { params: pb0, state: inner.init(pb0) };
  b = await step(inner, b.params, b.state, mean);
  const [pa, pb] = [await values(a.params), await values(b.params)];
  // The mean is summed in f32 on the device, in f64 here: 1e-6 on the moments, ~lr·1e-6 on p.
  pa.forEach((x, i) => assertClose(x, pb[i], { atol: 1e-6, rtol: 1e-6, what: "params" }));
  tree.dispose([a, b]);
});

Deno.test("perLayer: updates made inside backward (GaLore refreshes included) equal the whole-tree update bit for bit", async () => {
  const shapes: Record<string, number[]> = { w1: [6, 10], w2: [10, 4], b: [10], e: [12, 6] };
  const names = Object.keys(shapes);
  const fresh = () =>
    Object.fromEntries(names.map((n, i) => [n, up(rand(shapes[n], 80 + i), shapes[n])]));
  const targets = fresh();
  // loss = Σ_n Σ p_n ⊙ p_n ⊙ t_n: each parameter gets its own final gradient 2·p_n ⊙ t_n.
  const lossOf = (p: Record<string, Tensor>) =>
    names.map((n) => sum(mul(mul(p[n], p[n]), targets[n]))).reduce((a, b) => add(a, b));
  const opt = partition((path, t) => (t.rank === 2 && path !== "e" ? "galore" : "adam"), {
    galore: chain(
      galore(scaleByAdam(), { rank: 3, updateProjGap: 2 }),
      addDecayedWeights(0.1),
      scaleByLearningRate(0.05),
    ),
    adam: adamw({ lr: 0.05, weightDecay: 0.1 }),
  });
  const perLayerOpt = perLayer(opt);
  const a0 = fresh();
  let whole = { params: a0, state: opt.init(a0) };
  const b0 = fresh();
  let perLeaf = { params: b0, state: perLayerOpt.init(b0) };
  // Three steps: refreshes at the first and the third (updateProjGap 2).
  for (let t = 0; t < 3; t++) {
    const grads = backward(whole.params, lossOf);
    const r = await opt.update(tree.unflatten(whole.params, grads), whole.state, whole.params);
    whole = { params: applyUpdates(whole.params, r.updates), state: r.state };
    const s = perLayerOpt.start(perLeaf.params, perLeaf.state);
    backward(perLeaf.params, lossOf, s.onGrad);
    perLeaf = await s.finish();
  }
  const a = await readAll(tree.flatten(whole.params));
  const b = await readAll(tree.flatten(perLeaf.params));
  a.forEach((x, i) => assert.deepEqual(b[i], x, `parameter ${names[i]}`));
  tree.dispose([whole, perLeaf, targets]);
});

/** Random orthogonal n×n (columns), row-major. */
function orthogonal(n: number, seed: number): Float64Array {
  return qr(rand([n, n], seed), n, n).q;
}

/** U[:, :k]·diag(s)·V[:, :k]ᵀ for orthogonal U (m×m), V (n×n). */
function withSpectrum(
  u: Float64Array,
  v: Float64Array,
  s: number[],
  m: number,
  n: number,
): Float64Array {
  const g = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let k = 0; k < s.length; k++) acc += u[i * m + k] * s[k] * v[j * n + k];
      g[i * n + j] = acc;
    }
  }
  return g;
}

Deno.test("projector is orthonormal and spans the top-r subspace of known spectra", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 4, max: 40 }),
      fc.integer({ min: 4, max: 40 }),
      fc.integer({ min: 1, max: 1e6 }),
      async (m, n, seed) => {
        const k = Math.min(m, n);
        const r = Math.max(1, Math.floor(k / 3));
        // Chosen spectrum: top r in [5, 10], the rest in [0, 1]: a clear gap after r.
        const s = Array.from({ length: k }, (_, i) => (i < r ? 10 - (5 * i) / r : 1 - i / k));
        const u = orthogonal(m, seed), v = orthogonal(n, seed + 1);
        const g = up(withSpectrum(u, v, s, m, n), [m, n]);
        const checkBasis = (pd: Float32Array) => {
          const left = m < n;
          const d = left ? m : n;
          // Basis as d×r columns: left stored [m, r]; right stored [r, n] (rows = vectors).
          const basis = (i: number, j: number) => left ? pd[i * r + j] : pd[j * n + i];
          const truth = left ? u : v;
          for (let a = 0; a < r; a++) {
            for (let b = 0; b < r; b++) {
              let dot = 0;
              for (let i = 0; i < d; i++) dot += basis(i, a) * basis(i, b);
              assert.ok(Math.abs(dot - (a === b ? 1 : 0)) < 1e-5, `PᵀP[${a}][${b}] = ${dot}`);
            }
          }
          // Every true top-r singular vector lies in span(P): ‖(I − PPᵀ)u_j‖ < 1e-4.
          for (let j = 0; j < r; j++) {
            const x = Array.from({ length: d }, (_, i) => truth[i * d + j]);
            const c = Array.from(
              { length: r },
              (_, a) => x.reduce((acc, xi, i) => acc + basis(i, a) * xi, 0),
            );
            const resid = x.map((xi, i) =>
              xi - c.reduce((acc, ca, a) => acc + ca * basis(i, a), 0)
            );
            assert.ok(frob(resid) < 1e-4, `vector ${j} outside span: ${frob(resid)}`);
          }
        };
        // Both Gram modes; with this gap even the f32 Gram stays within the 1e-4 residual bound.
        const [p, p32] = [
          ...await computeProjectors([g], r),
          ...await computeProjectors([g], r, "gpu32"),
        ];
        const [pd, pd32] = (await readAll([p, p32])) as Float32Array[];
        checkBasis(pd);
        checkBasis(pd32);
        tree.dispose([g, p, p32]);
      },
    ),
    RUNS,
  );
});

Deno.test("galore at full rank: project-back after project is the identity", async () => {
  for (const [m, n] of [[12, 20], [20, 12], [16, 16]]) {
    const g = up(rand([m, n], m * n), [m, n]);
    const [p] = await computeProjectors([g], Math.min(m, n));
    const left = m < n;
    const back = projectBack(project(g, p, left), p, left);
    assertClose(await back.data(), rand([m, n], m * n), {
      atol: 1e-5,
      rtol: 1e-5,
      what: `${m}x${n}`,
    });
    tree.dispose([g, p, back]);
  }
});

Deno.test("galore's first moment equals dense Adam's first moment mapped into the subspace", async () => {
  for (const [m, n] of [[10, 24], [24, 10]]) {
    const r = 4;
    const opt = chain(
      galore(scaleByAdam(), { rank: r, updateProjGap: 100, scale: 1 }),
      scaleByLearningRate(0.01),
    );
    const dense = adamw({ lr: 0.01 });
    let a = { params: [up(rand([m, n], 1), [m, n])], state: [] as unknown[] };
    a.state = opt.init(a.params);
    let b = {
      params: [up(rand([m, n], 1), [m, n])],
      state: dense.init([up(rand([m, n], 1), [m, n])]),
    };
    for (let t = 0; t < 4; t++) {
      a = await step(opt, a.params, a.state, [rand([m, n], 50 + t)]);
      b = await step(dense, b.params, b.state, [rand([m, n], 50 + t)]);
    }
    const gs = a.state[0] as GaLoreState;
    const [pd, mg, md] = await readAll([gs.proj[0]!, (gs.inner as AdamState).m[0], b.state.m[0]]);
    // Left: m_g = Pᵀ·m_dense [r, n]; right: m_g = m_dense·Qᵀ [m, r].
    const want = m < n ? mm(pd, md, r, m, n, true) : mm(md, pd, m, n, r, false, true);
    assertClose(mg, want, { atol: 1e-6, rtol: 1e-4, what: `${m}x${n} first moment` });
    tree.dispose([a, b]);
  }
});

/** A signed permutation matrix (row-major n×n) from a seed. */
function signedPermutation(n: number, seed: number): Float64Array {
  const perm = Array.from({ length: n }, (_, i) => i);
  let s = seed;
  for (let i = n - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2147483648;
    const j = s % (i + 1);
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const p = new Float64Array(n * n);
  perm.forEach((j, i) => (p[i * n + j] = (s >> (i % 16)) & 1 ? -1 : 1));
  return p;
}

Deno.test("galore equals dense AdamW when gradients' singular vectors are signed permutations", async () => {
  for (const [m, n] of [[6, 11], [11, 6]]) {
    const k = Math.min(m, n);
    const u = signedPermutation(m, 3), v = signedPermutation(n, 4);
    const wd = 0.05;
    const opt = chain(
      galore(scaleByAdam(), { rank: k, updateProjGap: 2, scale: 1 }),
      addDecayedWeights(wd),
      scaleByLearningRate(0.02),
    );
    const dense = adamw({ lr: 0.02, weightDecay: wd });
    let a = { params: [up(rand([m, n], 9), [m, n])], state: [] as unknown[] };
    a.state = opt.init(a.params);
    let b = { params: [up(rand([m, n], 9), [m, n])], state: dense.init(a.params) };
    for (let t = 0; t < 5; t++) {
      // Distinct, fixed-order singular values so every refresh yields the same projector.
      const s = Array.from({ length: k }, (_, i) => (k - i) * (1 + 0.3 * t) * (1 + 0.01 * i * t));
      const g = withSpectrum(u, v, s, m, n);
      a = await step(opt, a.params, a.state, [g]);
      b = await step(dense, b.params, b.state, [g]);
    }
    const [x, y] = await readAll([a.params[0], b.params[0]]);
    // Same f32 operations up to the order of a few roundings: 1e-6 absolute on O(1) weights.
    assertClose(x, y, { atol: 1e-6, rtol: 1e-6, what: `${m}x${n} galore vs adamw` });
    tree.dispose([a, b]);
  }
});

Deno.test("galore's moments carry across projector refreshes", async () => {
  const [m, n, r] = [9, 14, 3];
  const opt = galore(scaleByAdam(), { rank: r, updateProjGap: 2, scale: 0.25 });
  let state = opt.init([up(rand([m, n], 5), [m, n])]);
  const grads = [0, 1, 2].map((t) => rand([m, n], 70 + t));
  const projs: Float32Array[] = [];
  for (let t = 0; t < 3; t++) {
    const res = await opt.update([up(grads[t], [m, n])], state);
    projs.push((await res.state.proj[0]!.data()) as Float32Array);
    tree.dispose(res.updates);
    state = res.state;
  }
  assert.deepEqual(projs[0], projs[1]);
  assert.notDeepEqual(projs[1], projs[2]); // refreshed at step 2
  // m after 3 steps, with no reset at the refresh: each R_t projected with that step's projector.
  const b1 = 0.9;
  const mRef = new Float64Array(r * n);
  for (let t = 0; t < 3; t++) {
    const rt = mm(projs[t], grads[t], r, m, n, true);
    for (let i = 0; i < mRef.length; i++) mRef[i] = b1 * mRef[i] + (1 - b1) * rt[i];
  }
  const mGot = await (state.inner as AdamState).m[0].data();
  assertClose(mGot, mRef, { atol: 1e-6, rtol: 1e-4, what: "moment across refresh" });
  assert.equal(state.count, 3);
  tree.dispose(state);
});

Deno.test("a fresh init is the momentum reset: zero moments, counts at 0, no projector yet", async () => {
  const opt = partition((_, t) => (t.rank === 2 ? "galore" : "adam"), {
    galore: galore(scaleByAdam(), { rank: 2, updateProjGap: 10 }),
    adam: adamw({ lr: 0.01 }),
  });
  const params = [up(rand([6, 8], 1), [6, 8]), up(rand([8], 2), [8])];
  const state = opt.init(params);
  const gl = state.galore as GaLoreState, ad = state.adam as AdamState;
  assert.equal(gl.count, 0);
  assert.equal(ad.count, 0);
  assert.deepEqual(gl.proj, [null]);
  const inner = gl.inner as AdamState;
  const all = await readAll([...inner.m, ...inner.v, ...ad.m, ...ad.v]);
  for (const a of all) assert.ok(a.every((x) => x === 0), "state is zero");
  assert.deepEqual(inner.m.map((t) => t.shape), [[2, 8]]);
  tree.dispose([params, state]);
});

Deno.test("measured optimizer-state bytes equal the analytic count (adam and galore)", async () => {
  const shapes = [[24, 40], [40, 24], [40], [100, 8]];
  const r = 6;
  const mk = () => shapes.map((s, i) => up(rand(s, i), s));
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const measure = async (opt: GradientTransformation, want: number) => {
    let params = mk();
    const live0 = memoryStats().liveBytes;
    let state = opt.init(params);
    ({ params, state } = await step(opt, params, state, shapes.map((s, i) => rand(s, 40 + i))));
    assert.equal(memoryStats().liveBytes - live0, want);
    assert.equal(tree.bytes(state), want);
    tree.dispose([params, state]);
  };
  // Adam: 2 moments per trainable weight, 4 bytes each.
  await measure(adamw({ lr: 0.01 }), 8 * shapes.reduce((a, s) => a + size(s), 0));
  // GaLore on 2-D: projector min(m,n)·r + moments 2·r·max(m,n); AdamW on the rest.
  let want = 0;
  for (const s of shapes) {
    want += s.length === 2
      ? 4 * (Math.min(s[0], s[1]) * r + 2 * r * Math.max(s[0], s[1]))
      : 8 * size(s);
  }
  await measure(
    partition((_, t) => (t.rank === 2 ? "galore" : "adam"), {
      galore: chain(galore(scaleByAdam(), { rank: r }), scaleByLearningRate(0.01)),
      adam: adamw({ lr: 0.01 }),
    }),
    want,
  );
});

Deno.test("bf16 parameters and gradients: adamw computes in f32 and rounds the update once; applyUpdates adds in f32 and rounds the parameter once (odd sizes included)", async () => {
  const bf = (x: number) => fromBf16Bits(toBf16Bits(x));
  for (const n of [1, 7, 300]) {
    const p0 = rand([n], n).map(bf), g0 = rand([n], n + 1, -2, 2).map(bf);
    const m0 = rand([n], n + 2, -0.5, 0.5), v0 = rand([n], n + 3, 0, 0.5);
    const [lr, wd, t] = [0.01, 0.1, 3];
    const opt = adamw({ lr, weightDecay: wd });
    const p = tensor(Float32Array.from(p0), [n], "bf16");
    const state: AdamState = { count: t - 1, m: [up(m0, [n])], v: [up(v0, [n])] };
    const r = await opt.update([tensor(Float32Array.from(g0), [n], "bf16")], state, [p]);
    const [u] = r.updates as Tensor[];
    assert.equal(u.dtype, "bf16");
    const [ud] = await readAll([u]);
    const [next] = applyUpdates([p], [u]);
    assert.equal(next.dtype, "bf16");
    const [pd] = await readAll([next]);
    const f = Math.fround;
    for (let i = 0; i < n; i++) {
      const m = f(0.9) * m0[i] + f(1 - f(0.9)) * g0[i];
      const v = f(0.999) * v0[i] + f(1 - f(0.999)) * g0[i] ** 2;
      const step = f(-lr / (1 - 0.9 ** t)) * m /
        (Math.sqrt(v) * f(1 / Math.sqrt(1 - 0.999 ** t)) + f(1e-8));
      const want = step + f(-lr * wd) * p0[i];
      // One rounding to bf16 (2^-8 relative) on top of f32 arithmetic (1e-6 of the terms).
      const scale = Math.abs(step) + Math.abs(f(-lr * wd) * p0[i]);
      assert.ok(
        Math.abs(ud[i] - want) <= 2 ** -8 * Math.abs(want) + 1e-6 * scale,
        `u[${i}]: ${ud[i]} vs ${want}`,
      );
      assert.equal(ud[i], bf(ud[i]), "the update is a bf16 value");
      // p + u in f32, then one rounding to nearest even.
      assert.equal(pd[i], bf(f(p0[i] + ud[i])), `p[${i}]`);
    }
    // Scaling a bf16 tensor of odd size touches exactly its elements.
    const s = scaleInPlace(tensor(Float32Array.from(p0), [n], "bf16"), 3);
    assert.deepEqual([...(await s.data())], [...p0].map((x) => bf(f(3 * x))));
    tree.dispose([next, r.state, s]);
  }
});

Deno.test("clipping a tensor past one storage binding: the norm spans every window, the scale reaches both ends", async () => {
  await withBindingWindow(async (limit) => {
    const n = limit / 4 + 5000;
    const clip = clipByGlobalNorm(1, { keepNorm: true });
    const r = clip.update([full([n], 0.5), full([3], 2, "bf16")], clip.init([])) as {
      updates: Tensor[];
      state: ClipState;
    };
    const norm = Math.sqrt(0.25 * n + 12);
    const flat = r.updates[0];
    const ends = [flat.rows(0, 4), flat.rows(n - 4, 4)];
    const [nd, a, b, small] = await readAll([r.state.norm!, ...ends, r.updates[1]]);
    assertClose(nd, [norm], { rtol: 1e-5, what: "norm" });
    const scale = 1 / (norm + 1e-6);
    assertClose([...a, ...b], new Array(8).fill(0.5 * scale), { rtol: 1e-5, what: "clipped" });
    assertClose(small, new Array(3).fill(2 * scale), { rtol: 2 ** -8, what: "clipped bf16" });
    tree.dispose([r, ends]);
  });
});
