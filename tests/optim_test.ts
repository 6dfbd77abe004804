/**
 * Optimizer tests: AdamW against a float64 CPU reference, schedules against their closed forms,
 * GPU clipping, GaLore's algebra (projection identities, moment mapping, equivalence with AdamW on
 * signed-permutation gradients, moments across refreshes, projector accuracy), refactorization,
 * momentum reset and measured state memory. Tolerances are stated per assertion.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { memoryStats } from "../core/memory.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import {
  adamw,
  type AdamWState,
  chain,
  clipByGlobalNorm,
  clipGrads,
  computeProjectors,
  disposeTree,
  galore,
  type GaLoreState,
  partition,
  project,
  projectBack,
  qr,
  quickRecovery,
  refactorFactors,
  reloraMerge,
  resetState,
  treeBytes,
  warmupCosine,
} from "../optim/mod.ts";
import { assertClose, randomArr, setup } from "./util.ts";

await setup();

const RUNS = { numRuns: 5, seed: 42 } as const;

/** Row-major f32-rounded random matrix data. */
function rand(shape: number[], seed: number, lo = -1, hi = 1): Float64Array {
  return randomArr(shape, seed, lo, hi).data;
}

function up(data: Float64Array, shape: number[]): Tensor {
  return tensor(Float32Array.from(data), shape);
}

/** C = A·B for row-major A [m, k], B [k, n] (ta/tb: use the transpose of a stored operand). */
function mm(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
  ta = false,
  tb = false,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
      }
      c[i * n + j] = s;
    }
  }
  return c;
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

function frob(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

Deno.test("adamw matches a float64 reference over 20 steps (random shapes, wd, schedule)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 2 }), {
        minLength: 1,
        maxLength: 3,
      }),
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
        for (let step = 0; step < 20; step++) {
          const gs = shapes.map((s, i) => rand(s, seed * 31 + step * 7 + i, -2, 2));
          const gt = gs.map((g, i) => up(g, shapes[i]));
          const r = await opt.update(gt, state, params, step);
          gt.forEach((t) => t.dispose());
          params = r.params as Tensor[];
          state = r.state;
          ref.forEach((x, i) => adamRef(x.p, x.m, x.v, gs[i], lr(step), step + 1, wd));
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
        disposeTree([params, state]);
      },
    ),
    RUNS,
  );
});

Deno.test("update donates old params/state by default and keeps them with donate: false", async () => {
  const opt = adamw({ lr: 0.1 });
  const p = tensor([1, 2, 3]);
  const g = tensor([0.1, 0.2, 0.3]);
  const s = opt.init(p);
  const r1 = await opt.update(g, s, p, 0, { donate: false });
  assert.ok(!p.isDisposed && !s.m[0].isDisposed);
  const r2 = await opt.update(g, r1.state, r1.params, 1);
  assert.ok((r1.params as Tensor).isDisposed && r1.state.m[0].isDisposed);
  assert.ok(!(r2.params as Tensor).isDisposed);
  disposeTree([p, g, s, r2]);
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
  const gt = gs.map((g, i) => up(g, shapes[i]));
  const small = clipGrads(gt, norm / 4);
  const big = clipGrads(gt, norm * 2);
  const out = await readAll([
    small.norm,
    big.norm,
    ...(small.grads as Tensor[]),
    ...(big.grads as Tensor[]),
  ]);
  assertClose(out[0], [norm], { rtol: 1e-5, what: "norm" });
  const clippedNorm = Math.sqrt(out.slice(2, 5).reduce((a, g) => a + frob(g) ** 2, 0));
  assert.ok(Math.abs(clippedNorm - norm / 4) <= 1e-5 * norm, `${clippedNorm} vs ${norm / 4}`);
  out.slice(5, 8).forEach((g, i) => assertClose(g, gs[i], { atol: 0, rtol: 0, what: "unclipped" }));
  // As a chain stage with the norm kept for logging.
  const opt = chain(clipByGlobalNorm(norm / 4, { keepNorm: true }), adamw({ lr: 0.1 }));
  const ps = shapes.map((s) => up(new Float64Array(s.reduce((a, b) => a * b, 1)), s));
  const s0 = opt.init(ps);
  const r = await opt.update(gt, s0, ps, 0);
  const logged = (r.state.transforms[0] as { norm: Tensor }).norm;
  assertClose(await logged.data(), [norm], { rtol: 1e-5, what: "logged norm" });
  disposeTree([gt, small, big, r]);
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
        disposeTree([g, p, p32]);
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
    disposeTree([g, p, back]);
  }
});

Deno.test("galore's first moment equals dense Adam's first moment mapped into the subspace", async () => {
  for (const [m, n] of [[10, 24], [24, 10]]) {
    const r = 4;
    const inner = adamw({ lr: 0.01 });
    const opt = galore(inner, { rank: r, updateProjGap: 100, scale: 1 });
    const dense = adamw({ lr: 0.01 });
    let gp: Tensor[] = [up(rand([m, n], 1), [m, n])];
    let dp: Tensor[] = [up(rand([m, n], 1), [m, n])];
    let gs: GaLoreState = opt.init(gp);
    let ds: AdamWState = dense.init(dp);
    for (let step = 0; step < 4; step++) {
      const g = [up(rand([m, n], 50 + step), [m, n])];
      const a = await opt.update(g, gs, gp, step);
      const b = await dense.update(g, ds, dp, step);
      [gp, gs, dp, ds] = [a.params as Tensor[], a.state, b.params as Tensor[], b.state];
      disposeTree(g);
    }
    const [pd, mg, md] = await readAll([gs.proj[0]!, (gs.inner as AdamWState).m[0], ds.m[0]]);
    // Left: m_g = Pᵀ·m_dense [r, n]; right: m_g = m_dense·Qᵀ [m, r].
    const want = m < n ? mm(pd, md, r, m, n, true) : mm(md, pd, m, n, r, false, true);
    assertClose(mg, want, { atol: 1e-6, rtol: 1e-4, what: `${m}x${n} first moment` });
    disposeTree([gp, gs, dp, ds]);
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
    const opt = galore(adamw({ lr: 0.02, weightDecay: wd }), {
      rank: k,
      updateProjGap: 2,
      scale: 1,
    });
    const dense = adamw({ lr: 0.02, weightDecay: wd });
    let gp: Tensor[] = [up(rand([m, n], 9), [m, n])];
    let dp: Tensor[] = [up(rand([m, n], 9), [m, n])];
    let gs = opt.init(gp);
    let ds = dense.init(dp);
    for (let step = 0; step < 5; step++) {
      // Distinct, fixed-order singular values so every refresh yields the same projector.
      const s = Array.from(
        { length: k },
        (_, i) => (k - i) * (1 + 0.3 * step) * (1 + 0.01 * i * step),
      );
      const g = [up(withSpectrum(u, v, s, m, n), [m, n])];
      const a = await opt.update(g, gs, gp, step);
      const b = await dense.update(g, ds, dp, step);
      [gp, gs, dp, ds] = [a.params as Tensor[], a.state, b.params as Tensor[], b.state];
      disposeTree(g);
    }
    const [x, y] = await readAll([gp[0], dp[0]]);
    // Same f32 operations up to the order of two roundings: 1e-6 absolute on O(1) weights.
    assertClose(x, y, { atol: 1e-6, rtol: 1e-6, what: `${m}x${n} galore vs adamw` });
    disposeTree([gp, gs, dp, ds]);
  }
});

Deno.test("galore's moments carry across projector refreshes", async () => {
  const [m, n, r] = [9, 14, 3];
  const opt = galore(adamw({ lr: 0.01 }), { rank: r, updateProjGap: 2, scale: 0.25 });
  let params: Tensor[] = [up(rand([m, n], 5), [m, n])];
  let state = opt.init(params);
  const grads = [0, 1, 2].map((t) => rand([m, n], 70 + t));
  const projs: Float32Array[] = [];
  for (let step = 0; step < 3; step++) {
    const g = [up(grads[step], [m, n])];
    const res = await opt.update(g, state, params, step, { donate: false });
    projs.push((await res.state.proj[0]!.data()) as Float32Array);
    disposeTree(g);
    params = res.params as Tensor[];
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
  const mGot = await (state.inner as AdamWState).m[0].data();
  assertClose(mGot, mRef, { atol: 1e-6, rtol: 1e-4, what: "moment across refresh" });
  assert.equal(state.count, 3);
});

Deno.test("refactorization leaves B·A unchanged within 1e-5 relative and balances the factors", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 12, max: 40 }),
      fc.integer({ min: 12, max: 40 }),
      fc.integer({ min: 1, max: 1e6 }),
      async (r, out, inp, seed) => {
        const bd = rand([out, r], seed, -3, 3), ad = rand([r, inp], seed + 1, -0.1, 0.1);
        const ba = mm(bd, ad, out, r, inp);
        const res = await refactorFactors(up(bd, [out, r]), up(ad, [r, inp]));
        const [nb, na] = await readAll([res.b, res.a]);
        const diff = mm(nb, na, out, r, inp).map((x, i) => x - ba[i]);
        assert.ok(frob(diff) <= 1e-5 * frob(ba), `relative change ${frob(diff) / frob(ba)}`);
        // Balanced: B'ᵀB' = A'A'ᵀ = diag(s).
        const btb = mm(nb, nb, r, out, r, true), aat = mm(na, na, r, inp, r, false, true);
        btb.forEach((x, i) => assert.ok(Math.abs(x - aat[i]) <= 1e-4 * res.singularValues[0]));
        disposeTree([res.a, res.b]);
      },
    ),
    RUNS,
  );
});

Deno.test("momentum reset zeroes moments and step counts (adamw and galore)", async () => {
  const opt = partition((_, t) => (t.rank === 2 ? "galore" : "adam"), {
    galore: galore(adamw({ lr: 0.01 }), { rank: 2, updateProjGap: 10 }),
    adam: adamw({ lr: 0.01 }),
  });
  let params: Tensor[] = [up(rand([6, 8], 1), [6, 8]), up(rand([8], 2), [8])];
  let state = opt.init(params);
  for (let step = 0; step < 3; step++) {
    const g = [up(rand([6, 8], 10 + step), [6, 8]), up(rand([8], 20 + step), [8])];
    const res = await opt.update(g, state, params, step);
    params = res.params as Tensor[];
    state = res.state;
    disposeTree(g);
  }
  const beforeG = state.galore as GaLoreState, beforeA = state.adam as AdamWState;
  assert.equal(beforeG.count, 3);
  const fresh = resetState(opt, state, params);
  const gl = fresh.galore as GaLoreState, ad = fresh.adam as AdamWState;
  assert.ok(beforeA.m[0].isDisposed, "old state disposed");
  assert.equal(gl.count, 0);
  assert.equal(ad.count, 0);
  assert.deepEqual(gl.proj, [null]);
  const inner = gl.inner as AdamWState;
  const all = await readAll([...inner.m, ...inner.v, ...ad.m, ...ad.v]);
  for (const a of all) assert.ok(a.every((x) => x === 0), "state is zero");
  disposeTree([params, fresh]);
});

Deno.test("measured optimizer-state bytes equal the analytic count (adam and galore)", async () => {
  const shapes = [[24, 40], [40, 24], [40], [100, 8]];
  const r = 6;
  const mk = () => shapes.map((s, i) => up(rand(s, i), s));
  const grads = shapes.map((s, i) => up(rand(s, 40 + i), s));
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  // Adam: 2 moments per trainable weight, 4 bytes each.
  {
    let params = mk();
    const live0 = memoryStats().liveBytes;
    const opt = adamw({ lr: 0.01 });
    let state = opt.init(params);
    const res = await opt.update(grads, state, params, 0);
    params = res.params as Tensor[];
    state = res.state;
    const want = 8 * shapes.reduce((a, s) => a + size(s), 0);
    assert.equal(memoryStats().liveBytes - live0, want);
    assert.equal(treeBytes(state), want);
    disposeTree([params, state]);
  }
  // GaLore on 2-D: projector min(m,n)·r + moments 2·r·max(m,n); AdamW on the rest.
  {
    let params = mk();
    const live0 = memoryStats().liveBytes;
    const opt = partition((_, t) => (t.rank === 2 ? "galore" : "adam"), {
      galore: galore(adamw({ lr: 0.01 }), { rank: r }),
      adam: adamw({ lr: 0.01 }),
    });
    let state = opt.init(params);
    const res = await opt.update(grads, state, params, 0);
    params = res.params as Tensor[];
    state = res.state;
    let want = 0;
    for (const s of shapes) {
      want += s.length === 2
        ? 4 * (Math.min(s[0], s[1]) * r + 2 * r * Math.max(s[0], s[1]))
        : 8 * size(s);
    }
    assert.equal(memoryStats().liveBytes - live0, want);
    assert.equal(treeBytes(state), want);
    disposeTree([params, state]);
  }
  disposeTree(grads);
});

Deno.test("reloraMerge folds scale·B·A into W and restarts the adapter at B = 0", async () => {
  const [out, r, inp, scale] = [9, 3, 7, 0.25];
  const wd = rand([out, inp], 1), bd = rand([out, r], 2), ad = rand([r, inp], 3);
  const res = reloraMerge(up(wd, [out, inp]), up(bd, [out, r]), up(ad, [r, inp]), scale);
  const [w, b] = await readAll([res.w, res.b]);
  const ba = mm(bd, ad, out, r, inp);
  assertClose(w, wd.map((x, i) => x + scale * ba[i]), { atol: 1e-6, rtol: 1e-5, what: "merged W" });
  assert.ok(b.every((x) => x === 0));
  disposeTree(res);
});
