/**
 * The randomized GaLore projector (optim/randomized_projector.ts): orthonormal, spans the top-r
 * subspace when the spectrum has a gap, captures a rank-deficient gradient whole, orders its
 * basis by singular value, is deterministic per seed, and `"auto"` picks it only above the exact
 * projector's size limit.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { qr } from "../ops/svd.ts";
import { computeProjectors, EXACT_PROJECTOR_MAX } from "../optim/galore.ts";
import { randomizedProjector } from "../optim/randomized_projector.ts";
import { randomArr, setup } from "./util.ts";

await setup();

const RUNS = { numRuns: 6, seed: 7 } as const;

/** Random orthogonal n×n (columns), row-major. */
function orthogonal(n: number, seed: number): Float64Array {
  return qr(randomArr([n, n], seed).data, n, n).q;
}

/** U[:, :s.length]·diag(s)·V[:, :s.length]ᵀ as an f32 tensor [m, n], with U and V. */
function withSpectrum(m: number, n: number, s: number[], seed: number) {
  const u = orthogonal(m, seed), v = orthogonal(n, seed + 1);
  const g = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let k = 0; k < s.length; k++) acc += u[i * m + k] * s[k] * v[j * n + k];
      g[i * n + j] = acc;
    }
  }
  return { g: tensor(g, [m, n]), u, v };
}

/** Column j of the basis as a vector of the smaller side (left [k, r]; right [r, k]). */
function basisVector(p: ArrayLike<number>, k: number, r: number, left: boolean, j: number) {
  return Array.from({ length: k }, (_, i) => left ? p[i * r + j] : p[j * k + i]);
}

const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);

function assertOrthonormal(vs: number[][], tol: number): void {
  vs.forEach((a, i) =>
    vs.forEach((b, j) => {
      const d = dot(a, b);
      assert.ok(Math.abs(d - (i === j ? 1 : 0)) < tol, `PᵀP[${i}][${j}] = ${d}`);
    })
  );
}

/** ‖(I − P·Pᵀ)x‖ for orthonormal columns `vs`. */
function residual(vs: number[][], x: number[]): number {
  const r = x.slice();
  for (const v of vs) {
    const c = dot(v, x);
    v.forEach((vi, i) => (r[i] -= c * vi));
  }
  return Math.sqrt(dot(r, r));
}

const shapes = fc.tuple(fc.integer({ min: 12, max: 48 }), fc.integer({ min: 12, max: 48 }));

Deno.test("randomized projector: orthonormal and spans the top-r subspace past a spectral gap", async () => {
  await fc.assert(
    fc.asyncProperty(shapes, fc.integer({ min: 1, max: 1e6 }), async ([m, n], seed) => {
      const k = Math.min(m, n), left = m < n;
      const r = Math.max(1, Math.floor(k / 4));
      // Top r in [50, 100], the rest in [0, 1]: (σ_{l+1}/σ_r)³ ≤ 1e-5 at one power step.
      const s = Array.from({ length: k }, (_, i) => (i < r ? 100 - (50 * i) / r : 1 - i / k));
      const { g, u, v } = withSpectrum(m, n, s, seed);
      const p = await randomizedProjector(g, r, { seed, oversample: 4 });
      assert.ok(p);
      assert.deepEqual(p.shape, left ? [m, r] : [r, n]);
      const [pd] = await readAll([p]);
      const vs = Array.from({ length: r }, (_, j) => basisVector(pd, k, r, left, j));
      assertOrthonormal(vs, 1e-5);
      const truth = left ? u : v;
      for (let j = 0; j < r; j++) {
        const x = Array.from({ length: k }, (_, i) => truth[i * k + j]);
        const res = residual(vs, x);
        assert.ok(res < 1e-3, `singular vector ${j} outside span: ${res}`);
      }
      tree.dispose([g, p]);
    }),
    RUNS,
  );
});

Deno.test("randomized projector: a gradient of rank below r is captured whole, basis ordered by σ", async () => {
  await fc.assert(
    fc.asyncProperty(shapes, fc.integer({ min: 1, max: 1e6 }), async ([m, n], seed) => {
      const k = Math.min(m, n), left = m < n;
      const r = Math.max(2, Math.floor(k / 3));
      const rho = 1 + (seed % (r - 1)); // rank ρ < r, as when batch·seq < r
      const s = Array.from({ length: rho }, (_, i) => 10 / (1 + i));
      const { g } = withSpectrum(m, n, s, seed);
      const p = await randomizedProjector(g, r, { seed, oversample: 3 });
      assert.ok(p);
      // R = Pᵀ·G (left) or G·Pᵀ (right): its energy is all of G's, sorted by basis vector.
      const [pd, gd] = await readAll([p, g]);
      const vs = Array.from({ length: r }, (_, j) => basisVector(pd, k, r, left, j));
      assertOrthonormal(vs, 1e-5);
      const c = Math.max(m, n);
      const lines = Array.from(
        { length: c },
        (_, t) => Array.from({ length: k }, (_, i) => (left ? gd[i * n + t] : gd[t * n + i])),
      );
      const total = lines.reduce((acc, x) => acc + dot(x, x), 0);
      const perVector = vs.map((b) => lines.reduce((acc, x) => acc + dot(b, x) ** 2, 0));
      const captured = perVector.reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(captured - total) <= 1e-5 * total, `captured ${captured} of ${total}`);
      for (let j = 0; j < rho; j++) {
        assert.ok(Math.abs(perVector[j] - s[j] ** 2) <= 1e-4 * total, `σ_${j}² = ${perVector[j]}`);
      }
      tree.dispose([g, p]);
    }),
    RUNS,
  );
});

Deno.test("randomized projector: same seed same bits; a non-finite gradient has no projector", async () => {
  const { g } = withSpectrum(20, 36, [5, 4, 3, 2, 1], 3);
  const [a, b, c] = await Promise.all(
    [1, 1, 2].map((seed) => randomizedProjector(g, 4, { seed, oversample: 2 })),
  ) as Tensor[];
  const [ad, bd, cd] = await readAll([a, b, c]);
  assert.deepEqual(bd, ad);
  assert.notDeepEqual(cd, ad);
  const bad = tensor(Float32Array.from({ length: 20 * 36 }, (_, i) => (i === 7 ? NaN : 1)), [
    20,
    36,
  ]);
  assert.equal(await randomizedProjector(bad, 4, { seed: 1 }), null);
  tree.dispose([g, a, b, c, bad]);
});

Deno.test("projector 'auto': exact up to the size limit, randomized above it", async () => {
  const small = withSpectrum(24, 40, [5, 4, 3, 2, 1], 5).g;
  const k = EXACT_PROJECTOR_MAX + 8;
  const large = tensor(Float32Array.from(randomArr([k, k + 40], 9).data), [k, k + 40]);
  const keys = ["w"];
  const run = (g: Tensor, method: "auto" | "cpu64" | "randomized") =>
    computeProjectors([g], 4, method, keys, 200);
  const got = await Promise.all([
    run(small, "auto"),
    run(small, "cpu64"),
    run(large, "auto"),
    run(large, "randomized"),
  ]);
  const [sa, sc, la, lr] = await readAll(got.flat());
  assert.deepEqual(sa, sc);
  assert.deepEqual(la, lr);
  tree.dispose([small, large, got]);
});

Deno.test("randomized refreshes started together run one at a time: the peak is one sketch's", async () => {
  const k = EXACT_PROJECTOR_MAX + 8;
  const grads = [1, 2, 3, 4].map((s) =>
    tensor(Float32Array.from(randomArr([k, k + 64], s).data), [k, k + 64], "f32")
  );
  const peakOf = async (gs: Tensor[]) => {
    const base = memoryStats().liveBytes;
    resetPeakBytes();
    // As per-layer updates do: every refresh starts before any has finished.
    const got = await Promise.all(
      gs.map((g, i) => computeProjectors([g], 8, "randomized", [`w${i}`])),
    );
    const peak = memoryStats().peakBytes - base;
    tree.dispose(got);
    return peak;
  };
  const one = await peakOf(grads.slice(0, 1));
  const four = await peakOf(grads);
  // Four projectors [k, 8] stay; the transients (sketch, Ω, products) must not add up.
  const projectorBytes = k * 8 * 4;
  assert.ok(four <= one + 3 * projectorBytes, `4 at once: ${four} B; one: ${one} B`);
  tree.dispose(grads);
});
