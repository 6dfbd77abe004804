/**
 * LoRO: the exact step's product equals the best rank-r approximation of W − η·P_T(G) computed
 * densely in float64 by an independent route (projectors from normal equations, a full SVD); the
 * transform's approximate steps are −lr·(r/d)·Adam, its exact steps apply `loroExactStep` to the
 * current factors and directions; it resumes from a checkpoint bit for bit; bad trees are refused.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { readAll, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { svdJacobi } from "../ops/svd.ts";
import { loro, scaleByAdam } from "../optim/mod.ts";
import { loroExactStep } from "../optim/loro.ts";
import { assertResumesBitExact, gradSeries, lcg, runSteps } from "./resume_ref.ts";
import { assertClose, setup } from "./util.ts";

await setup();

/** Row-major float64 product [p, q]·[q, s]. */
function mm(x: ArrayLike<number>, y: ArrayLike<number>, p: number, q: number, s: number) {
  const out = new Float64Array(p * s);
  for (let i = 0; i < p; i++) {
    for (let k = 0; k < q; k++) {
      const xv = x[i * q + k];
      for (let j = 0; j < s; j++) out[i * s + j] += xv * y[k * s + j];
    }
  }
  return out;
}

function tr(x: ArrayLike<number>, p: number, q: number): Float64Array {
  const out = new Float64Array(p * q);
  for (let i = 0; i < p; i++) for (let j = 0; j < q; j++) out[j * p + i] = x[i * q + j];
  return out;
}

/** Inverse of a small SPD matrix by Gauss–Jordan. */
function inv(a: Float64Array, n: number): Float64Array {
  const m = Float64Array.from(a), o = new Float64Array(n * n);
  for (let i = 0; i < n; i++) o[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    const piv = m[c * n + c];
    for (let j = 0; j < n; j++) {
      m[c * n + j] /= piv;
      o[c * n + j] /= piv;
    }
    for (let i = 0; i < n; i++) {
      if (i === c) continue;
      const f = m[i * n + c];
      for (let j = 0; j < n; j++) {
        m[i * n + j] -= f * m[c * n + j];
        o[i * n + j] -= f * o[c * n + j];
      }
    }
  }
  return o;
}

/** X·(XᵀX)⁻¹·Xᵀ for X [p, r]: the orthogonal projector onto span(X). */
function projector(x: Float64Array, p: number, r: number): Float64Array {
  const xt = tr(x, p, r);
  return mm(mm(x, inv(mm(xt, x, r, p, r), r), p, r, r), xt, p, r, p);
}

/** The best rank-r approximation of X [d, n] (full SVD of whichever orientation is tall). */
function truncate(x: Float64Array, d: number, n: number, r: number): Float64Array {
  const tall = d >= n;
  const [rows, cols, a] = tall ? [d, n, x] : [n, d, tr(x, d, n)];
  const { u, s, v } = svdJacobi(a, rows, cols);
  const out = new Float64Array(rows * cols);
  for (let k = 0; k < r; k++) {
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) out[i * cols + j] += u[i * cols + k] * s[k] * v[j * cols + k];
    }
  }
  return tall ? out : tr(out, rows, cols);
}

Deno.test("loro's exact step is the rank-r truncation of W − η·P_T(G) (dense float64 reference)", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 4 }),
      fc.integer({ min: 5, max: 12 }),
      fc.integer({ min: 5, max: 12 }),
      fc.double({ min: 0.01, max: 0.5, noNaN: true }),
      fc.integer({ min: 0, max: 1e6 }),
      (r, d, n, eta, seed) => {
        const b = Float64Array.from(lcg(seed, d * r));
        const a = Float64Array.from(lcg(seed + 1, r * n));
        const g = Float64Array.from(lcg(seed + 2, d * n));
        const db = mm(g, tr(a, r, n), d, n, r);
        const da = mm(tr(b, d, r), g, r, d, n);
        const f = loroExactStep(b, a, db, da, d, r, n, eta)!;
        const pb = projector(b, d, r), pa = projector(tr(a, r, n), n, r);
        const pg = mm(pb, g, d, d, n);
        const gp = mm(g, pa, d, n, n);
        const pgp = mm(pg, pa, d, n, n);
        const w = mm(b, a, d, r, n).map((x, i) => x - eta * (pg[i] + gp[i] - pgp[i]));
        const want = truncate(w, d, n, r);
        assertClose(mm(f.b, f.a, d, r, n), want, {
          atol: 1e-9,
          rtol: 1e-8,
          what: `${d}x${n} r${r}`,
        });
      },
    ),
    { numRuns: 40, seed: 7 },
  );
});

Deno.test("loro steps: approximate −lr·(r/d)·Adam, exact every k-th from the current factors", async () => {
  const [d, r, n, lr, k] = [9, 3, 7, 0.05, 3];
  const grads = gradSeries([[r, n], [d, r]], 6, 4);
  const opt = loro(scaleByAdam(), { lr, exactEvery: k });
  const adam = scaleByAdam();
  let run = {
    params: { A: tensor(lcg(1, r * n), [r, n]), B: tensor(lcg(2, d * r), [d, r]) },
    state: undefined as unknown,
  };
  run.state = opt.init(run.params);
  let adamState = adam.init(run.params);
  for (let s = 0; s < 6; s++) {
    const [a0, b0] = await readAll([run.params.A, run.params.B]);
    const dir = await adam.update(
      { A: tensor(grads[s][0], [r, n]), B: tensor(grads[s][1], [d, r]) },
      adamState,
    );
    adamState = dir.state;
    const [da, db] = await readAll(tree.flatten(dir.updates));
    tree.dispose(dir.updates);
    run = await runSteps(opt, run.params, run.state, grads, s, s + 1);
    const [a1, b1] = await readAll([run.params.A, run.params.B]);
    if ((s + 1) % k !== 0) {
      assertClose(a1, Array.from(a0, (x, i) => x - lr * r / d * da[i]), {
        atol: 1e-6,
        what: `A step ${s + 1}`,
      });
      assertClose(b1, Array.from(b0, (x, i) => x - lr * r / d * db[i]), {
        atol: 1e-6,
        what: `B step ${s + 1}`,
      });
    } else {
      const f = loroExactStep(b0, a0, db, da, d, r, n, lr)!;
      assertClose(a1, f.a, { atol: 1e-5, what: `A exact step ${s + 1}` });
      assertClose(b1, f.b, { atol: 1e-5, what: `B exact step ${s + 1}` });
    }
  }
  tree.dispose([run.params, run.state, adamState] as tree.TensorTree);
});

Deno.test("loro resumes from a checkpoint bit for bit, exact steps on both sides of the cut", async () => {
  const grads = gradSeries([[3, 8], [10, 3]], 7, 9);
  await assertResumesBitExact(
    () => loro(scaleByAdam(), { lr: 0.02, exactEvery: 2 }),
    () => ({ A: tensor(lcg(1, 24), [3, 8]), B: tensor(lcg(2, 30), [10, 3]) }),
    grads,
    3,
  );
});

Deno.test("loro refuses trees that are not factor pairs, and a bad period, by name", () => {
  assert.throws(() => loro(scaleByAdam(), { lr: 1, exactEvery: 0 }), /exactEvery/);
  const opt = loro(scaleByAdam(), { lr: 1 });
  const p = { q: { A: tensor(lcg(1, 6), [2, 3]) } };
  assert.throws(() => opt.update(p, opt.init(p), p), /q needs both factors/);
  const w = { w: tensor(lcg(1, 6), [2, 3]) };
  assert.throws(() => opt.update(w, opt.init(w), w), /not a low-rank factor/);
});
