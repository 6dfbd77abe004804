/**
 * Weight refactorization (Glentis et al. 2025): SVD re-balancing of the low-rank factors B·A of a
 * linear, and of every block linear of an SLTrain or low-rank model. It runs rarely (once per
 * cycle), so it favours float64 accuracy on the CPU (`ops/svd.ts`) over speed.
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { canonicalSigns, qr, svdJacobi } from "../ops/svd.ts";
import { ConfigError } from "./errors.ts";
import type { LowRankLinearParams } from "./linear.ts";
import { blockLinears, type LlamaModel, type LlamaParams, mapLinears } from "./llama.ts";

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
 * small singular values too; each singular pair's sign is fixed by `canonicalSigns` (the largest
 * entry of each column of B' positive), so any implementation yields the same factors. One
 * readback. The new factors have the old ones' dtypes (f32 or bf16).
 * With `donate` (default true) disposes the old B and A.
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
  canonicalSigns(u, v, r, r, (j) => {
    // Column j of B' = Q_b·U[:, j] (times √s_j > 0): its largest entry in magnitude.
    let best = 0;
    for (let i = 0; i < out; i++) {
      let acc = 0;
      for (let l = 0; l < r; l++) acc += qb.q[i * r + l] * u[l * r + j];
      if (Math.abs(acc) > Math.abs(best)) best = acc;
    }
    return best;
  });
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
  // The new factors keep the old ones' storage (bf16 rounds once, here).
  return {
    b: tensor(nb, [out, r], b.dtype),
    a: tensor(na, [r, inp], a.dtype),
    singularValues: s,
  };
}

/**
 * Refactorizes every block linear of a `sltrain` or `lowrank` model (B·A unchanged up to rounding,
 * the factors balanced; SLTrain's V untouched) and returns the new params; the old B and A are
 * disposed, everything else is shared with `params`. All readbacks are issued together, so the
 * whole model costs about one GPU sync. Reset the optimizer's moments afterwards, as the method
 * prescribes. Throws {@link ConfigError} for a method without factors.
 */
export async function refactorLlama(model: LlamaModel, params: LlamaParams): Promise<LlamaParams> {
  if (model.method.kind !== "sltrain" && model.method.kind !== "lowrank") {
    throw new ConfigError(
      `refactorLlama needs a sltrain or lowrank model, got ${model.method.kind}`,
    );
  }
  const done = await Promise.all(
    blockLinears(params).map(({ params: lin }) => {
      const { A, B } = lin as LowRankLinearParams;
      return refactorFactors(B, A);
    }),
  );
  let i = 0;
  return mapLinears(params, (lin) => {
    const r = done[i++];
    return { ...lin, A: r.a, B: r.b };
  });
}
