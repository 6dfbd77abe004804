/**
 * @internal Products with a dense weight that exists only transiently and may be larger than one
 * storage binding: the SLTrain and ReLoRA linears build their [out, in] weight W from factors, and
 * at 7B (11008 × 4096 in f32, 180 MB) it does not fit a 128 MiB binding. Here W is built and used
 * block by block of its rows (out-rows r0..r0+n): y[:, rows] = x·W_rowsᵀ is added into the columns
 * of y, and dx = Σ g[:, rows]·W_rows. With one block (the usual case) this is exactly
 * `matmul(x, W, { transB: true })` and `matmul(g, W)`.
 * @module
 */
import { Tensor, zeros } from "../core/tensor.ts";
import { forEachRowWindow, maxWindowBytes, rowWindow } from "../core/windows.ts";
import { matmul } from "./matmul.ts";
import { addInto, stridedCopy } from "./strided.ts";

/** Builds rows [r0, r0 + n) of the weight as a new f32 [n, in] tensor (the caller frees it). */
export type WeightRows = (r0: number, n: number) => Tensor;

/**
 * Rows per block of an f32 [out, in] weight so that a block fits one binding window; block starts
 * aligned for row views of tensors with `alsoAligned` row bytes (the factors the blocks are built
 * from). `out` when the whole weight fits.
 */
export function weightBlockRows(out: number, inF: number, alsoAligned: number[]): number {
  const limit = maxWindowBytes();
  if (4 * out * inF <= limit) return Math.max(out, 1);
  return rowWindow(4 * inF, limit, "a row of the built weight", alsoAligned);
}

/**
 * y = x·Wᵀ [T, out] for x [T, in], W built by `build` in blocks of `per` rows; with `init` [T,
 * out] (consumed) the product is added to it instead.
 */
export function productByRows(
  x: Tensor,
  out: number,
  per: number,
  build: WeightRows,
  init?: Tensor,
): Tensor {
  const t = x.shape[0];
  if (per >= out && !init) {
    const w = build(0, out);
    const y = matmul(x, w, { transB: true });
    w.dispose();
    return y;
  }
  const y = init ?? zeros([t, out]);
  forEachRowWindow(out, per, (r0, n) => {
    const w = build(r0, n);
    const part = matmul(x, w, { transB: true });
    w.dispose();
    addInto(part, y, r0);
    part.dispose();
  });
  return y;
}

/**
 * dx = g·W [T, in] for g [T, out], W built by `build` in blocks of `per` rows; with `init` [T, in]
 * (consumed) the product is added to it instead.
 */
export function inputGradByRows(
  g: Tensor,
  inF: number,
  per: number,
  build: WeightRows,
  init?: Tensor,
): Tensor {
  const [t, out] = g.shape;
  if (per >= out && !init) {
    const w = build(0, out);
    const dx = matmul(g, w);
    w.dispose();
    return dx;
  }
  const dx = init ?? zeros([t, inF]);
  forEachRowWindow(out, per, (r0, n) => {
    const w = build(r0, n);
    const gCols = per >= out ? g : Tensor.empty([t, n]);
    if (gCols !== g) stridedCopy("weight_rows_g", "gather", g, gCols, [t, n], [out, 1], r0);
    const part = matmul(gCols, w);
    if (gCols !== g) gCols.dispose();
    w.dispose();
    addInto(part, dx);
    part.dispose();
  });
  return dx;
}
