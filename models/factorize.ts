/**
 * Dense weight -> low-rank and sparse-plus-low-rank factors, for starting a low-rank or SLTrain run
 * from a pretrained dense model: the best rank-r approximation (truncated SVD) as balanced factors
 * s·B·A, and for SLTrain the largest entries of the residual W − s·B·A as the sparse part V on a
 * support chosen by magnitude. CPU float64 (`ops/svd.ts`); it runs once per linear at import.
 * @module
 */
import { topSubspace } from "../ops/svd.ts";

/** Factors of one weight W [out, in] with W ≈ s·B·A (⊕_I V). */
export interface Factors {
  /** B [out, r], row-major. */
  readonly B: Float32Array;
  /** A [r, in], row-major. */
  readonly A: Float32Array;
  /** Sparse values on `I` (SLTrain only). */
  readonly V?: Float32Array;
  /** Sorted flat indices row·in + col of V (SLTrain only). */
  readonly I?: Uint32Array;
  /** ‖W − approximation‖_F / ‖W‖_F (0 for a zero W). */
  readonly relError: number;
}

/**
 * Factorizes the row-major W [out, in]: truncated SVD W_r = U·S·Vᵀ split evenly, B = U·√S/√s and
 * A = √S·Vᵀ/√s, so s·B·A = W_r and both factors carry the same scale (as refactorization leaves
 * them). With `nnz > 0` the sparse part is the `nnz` largest-magnitude entries of the residual
 * W − s·B·A, at their positions (sorted): the best sparse correction of that low-rank part in
 * Frobenius norm.
 */
export function factorize(
  w: ArrayLike<number>,
  out: number,
  inF: number,
  rank: number,
  scale: number,
  nnz = 0,
): Factors {
  const r = rank;
  const sub = topSubspace(w, out, inF, r);
  // Project W on the basis: left gives M = Uᵀ·W = S·Vᵀ [r, in]; right gives N = W·V = U·S [out, r].
  const B = new Float32Array(out * r);
  const A = new Float32Array(r * inF);
  const root = 1 / Math.sqrt(scale);
  for (let k = 0; k < r; k++) {
    if (sub.side === "left") {
      const m = new Float64Array(inF);
      for (let i = 0; i < out; i++) {
        const u = sub.basis[i * r + k];
        if (u !== 0) { for (let j = 0; j < inF; j++) m[j] += u * w[i * inF + j]; }
      }
      const sigma = norm2(m);
      const sq = Math.sqrt(sigma);
      for (let i = 0; i < out; i++) B[i * r + k] = sub.basis[i * r + k] * sq * root;
      for (let j = 0; j < inF; j++) A[k * inF + j] = sigma > 0 ? (m[j] / sq) * root : 0;
    } else {
      const n = new Float64Array(out);
      for (let i = 0; i < out; i++) {
        let acc = 0;
        for (let j = 0; j < inF; j++) acc += w[i * inF + j] * sub.basis[k * inF + j];
        n[i] = acc;
      }
      const sigma = norm2(n);
      const sq = Math.sqrt(sigma);
      for (let i = 0; i < out; i++) B[i * r + k] = sigma > 0 ? (n[i] / sq) * root : 0;
      for (let j = 0; j < inF; j++) A[k * inF + j] = sub.basis[k * inF + j] * sq * root;
    }
  }
  const residual = new Float64Array(out * inF);
  let norm = 0;
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inF; j++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B[i * r + k] * A[k * inF + j];
      const x = w[i * inF + j];
      residual[i * inF + j] = x - scale * acc;
      norm += x * x;
    }
  }
  let I: Uint32Array | undefined;
  let V: Float32Array | undefined;
  if (nnz > 0) {
    I = largestIndices(residual, nnz);
    V = Float32Array.from(I, (idx) => residual[idx]);
    I.forEach((idx, n) => (residual[idx] -= V![n]));
  }
  let err = 0;
  for (const x of residual) err += x * x;
  return { B, A, V, I, relError: norm > 0 ? Math.sqrt(err / norm) : 0 };
}

function norm2(v: Float64Array): number {
  let s = 0;
  for (const x of v) s += x * x;
  return Math.sqrt(s);
}

/** The positions of the `k` largest |x| (ties: the lower index), sorted ascending. */
export function largestIndices(x: ArrayLike<number>, k: number): Uint32Array {
  const order = Uint32Array.from({ length: x.length }, (_, i) => i);
  order.sort((a, b) => Math.abs(x[b]) - Math.abs(x[a]) || a - b);
  return order.slice(0, k).sort();
}
