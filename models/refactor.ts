/**
 * Low-rank factor maintenance: SVD re-balancing of SLTrain's B·A (weight refactorization, Glentis
 * et al. 2025) and ReLoRA's merge-and-reinit. Both run rarely (once per cycle), so they favour
 * float64 accuracy on the CPU over speed.
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { randomUniform, readAll, type Tensor, tensor, zeros } from "../core/tensor.ts";
import { mapN } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { qr, svdJacobi } from "./svd.ts";

/** Result of {@link refactorFactors}. */
export interface Refactored {
  /** New B = U·√S, shape [out, r]. */
  b: Tensor;
  /** New A = √S·Vᵀ, shape [r, in]. */
  a: Tensor;
  /** Singular values of B·A, descending (r of them). */
  singularValues: Float64Array;
}

/**
 * Re-balances low-rank factors without changing their product: with B·A = U·S·Vᵀ (rank ≤ r),
 * returns B' = U·√S and A' = √S·Vᵀ, so B'·A' = B·A up to rounding (≈1e-7 relative in f32) and
 * both factors carry the same scale. Computed as QR(B) = Q_b R_b, QR(Aᵀ) = Q_a R_a, then a
 * one-sided Jacobi SVD of the r×r core R_b·R_aᵀ: never forms the out×in product, and accurate for
 * small singular values too. One readback. With `donate` (default true) disposes the old B and A.
 */
export async function refactorFactors(
  b: Tensor,
  a: Tensor,
  opts: { donate?: boolean } = {},
): Promise<Refactored> {
  if (b.rank !== 2 || a.rank !== 2 || b.shape[1] !== a.shape[0]) {
    throw new ShapeError(
      `refactorFactors: need B [out, r] and A [r, in], got ${fmtShape(b.shape)} and ${
        fmtShape(a.shape)
      }`,
    );
  }
  const [out, r] = b.shape;
  const inp = a.shape[1];
  if (out < r || inp < r) {
    throw new ShapeError(`refactorFactors: rank ${r} exceeds a side of ${out}x${inp}`);
  }
  const [bd, ad] = await readAll([b, a]);
  const qb = qr(bd, out, r);
  // Aᵀ [in, r] row-major is A read column-wise.
  const at = new Float64Array(inp * r);
  for (let i = 0; i < r; i++) for (let j = 0; j < inp; j++) at[j * r + i] = ad[i * inp + j];
  const qa = qr(at, inp, r);
  const core = new Float64Array(r * r); // R_b · R_aᵀ
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += qb.r[i * r + k] * qa.r[j * r + k];
      core[i * r + j] = s;
    }
  }
  const { u, s, v } = svdJacobi(core, r, r);
  const root = s.map(Math.sqrt);
  // B' = Q_b·U·√S [out, r];  A' = √S·Vᵀ·Q_aᵀ, i.e. A'[k][j] = √s_k · Σ_l V[l][k]·Q_a[j][l].
  const left = new Float64Array(r * r);
  const right = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let k = 0; k < r; k++) {
      left[i * r + k] = u[i * r + k] * root[k];
      right[i * r + k] = v[i * r + k] * root[k];
    }
  }
  const nb = new Float32Array(out * r);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < r; k++) {
      let acc = 0;
      for (let l = 0; l < r; l++) acc += qb.q[i * r + l] * left[l * r + k];
      nb[i * r + k] = acc;
    }
  }
  const na = new Float32Array(r * inp);
  for (let j = 0; j < inp; j++) {
    for (let k = 0; k < r; k++) {
      let acc = 0;
      for (let l = 0; l < r; l++) acc += qa.q[j * r + l] * right[l * r + k];
      na[k * inp + j] = acc;
    }
  }
  if (opts.donate ?? true) {
    b.dispose();
    a.dispose();
  }
  return { b: tensor(nb, [out, r]), a: tensor(na, [r, inp]), singularValues: s };
}

/** Result of {@link reloraMerge}. */
export interface Merged {
  /** W + scale·B·A. */
  w: Tensor;
  /** Fresh B: zeros, so the merged model computes the same function. */
  b: Tensor;
  /** Fresh A: Kaiming-uniform like `nn.Linear` (bound 1/√in). */
  a: Tensor;
}

/**
 * ReLoRA's merge: W ← W + scale·B·A, then B ← 0 and A re-drawn, so the function is unchanged and
 * the adapter starts a new low-rank direction. Reset the adapter's optimizer state afterwards
 * (`resetState`). On the GPU, no readback. With `donate` (default true) disposes W, B and A.
 */
export function reloraMerge(
  w: Tensor,
  b: Tensor,
  a: Tensor,
  scale: number,
  opts: { seed?: number; donate?: boolean } = {},
): Merged {
  const [out, inp] = w.shape;
  if (w.rank !== 2 || b.shape[0] !== out || a.shape[1] !== inp || b.shape[1] !== a.shape[0]) {
    throw new ShapeError(
      `reloraMerge: W ${fmtShape(w.shape)}, B ${fmtShape(b.shape)}, A ${fmtShape(a.shape)} ` +
        `do not fit W + B·A`,
    );
  }
  const ba = matmul(b, a);
  const merged = mapN("relora_merge", [w, ba], "v0 + c0 * v1", undefined, [scale]);
  ba.dispose();
  const bound = 1 / Math.sqrt(inp);
  const fresh = {
    w: merged,
    b: zeros(b.shape),
    a: randomUniform(a.shape, -bound, bound, { seed: opts.seed ?? 0 }),
  };
  if (opts.donate ?? true) {
    w.dispose();
    b.dispose();
    a.dispose();
  }
  return fresh;
}
