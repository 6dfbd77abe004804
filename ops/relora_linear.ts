/**
 * ReLoRA's block linear as one tape node: y = x·(W + s·B·A)ᵀ with W frozen. A plain composition
 * (a matmul on W plus the low-rank path) would compute a dense out × in gradient for W in every
 * backward only to drop it, and the tape would keep both partial outputs alive; this op does
 * neither.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertDType, bytesPerElement } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, sizeOf } from "../core/shape.ts";
import { recordOp, untracked } from "../core/tape.ts";
import type { Tensor } from "../core/tensor.ts";
import { mapN } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { inputGradByRows, productByRows, weightBlockRows, type WeightRows } from "./weight_rows.ts";

// ba ← w + s·ba in place: one out × in temporary instead of two. Same expression as ReLoRA's merge
// (models/relora.ts), so the effective weight before a merge equals the merged W to the bit.
const mergeInPlace = kernelFamily((w: "f32" | "bf16") =>
  defineKernel({
    name: "relora_weight",
    inputs: { w },
    outputs: { ba: "f32" },
    uniforms: { s: "f32" },
    grid: "flat",
    body: "  store_ba(i, load_w(i) + u.s * load_ba(i));",
  })
);

/** Rows [r0, r0 + n) of W + s·B·A as a new f32 tensor; W (frozen) may be bf16. */
function effectiveRows(W: Tensor, B: Tensor, A: Tensor, s: number): WeightRows {
  const out = W.shape[0];
  return (r0, n) => {
    const [w, b] = n === out ? [W.view(W.shape), B.view(B.shape)] : [W.rows(r0, n), B.rows(r0, n)];
    const ba = matmul(b, A);
    mergeInPlace(w.dtype as "f32" | "bf16")({ w, ba }, { n: ba.size, s });
    w.dispose();
    b.dispose();
    return ba;
  };
}

function scaled(t: Tensor, s: number): Tensor {
  return mapN("relora_scale", [t], "v0 * c0", undefined, [s]);
}

/**
 * ReLoRA linear: `y = x·(W + s·B·A)ᵀ` for x [..., in] f32, frozen W [out, in], B [out, r], A [r,
 * in] (f32 or bf16), as one tape node. The effective weight is built transiently (once in forward,
 * once in backward for dx; in blocks of rows where it exceeds one storage binding); the VJP gives
 * dx = g·W_eff, dB = s·gᵀ·(x·Aᵀ), dA = s·(g·B)ᵀ·x and no gradient for W.
 */
export function reloraLinear(x: Tensor, W: Tensor, B: Tensor, A: Tensor, s: number): Tensor {
  assertDType("reloraLinear", ["f32"], ["x", x]);
  assertDType("reloraLinear", ["f32", "bf16"], ["W", W], ["B", B], ["A", A]);
  const [out, inF] = W.shape;
  if (
    W.rank !== 2 || B.rank !== 2 || A.rank !== 2 || B.shape[0] !== out || A.shape[1] !== inF ||
    B.shape[1] !== A.shape[0] || x.rank < 1 || x.shape[x.rank - 1] !== inF
  ) {
    throw new ShapeError(
      `reloraLinear: need x [..., in], W [out, in], B [out, r], A [r, in]; got x ${
        fmtShape(x.shape)
      }, W ${fmtShape(W.shape)}, B ${fmtShape(B.shape)}, A ${fmtShape(A.shape)}`,
    );
  }
  if (!Number.isFinite(s)) throw new RangeError(`reloraLinear: scale must be finite, got ${s}`);
  const lead = x.shape.slice(0, -1);
  const rows = sizeOf(lead);
  const per = weightBlockRows(out, inF, [
    inF * bytesPerElement(W.dtype),
    B.shape[1] * bytesPerElement(B.dtype),
  ]);
  const build = effectiveRows(W, B, A, s);
  const y = untracked(() => {
    const x2 = x.view([rows, inF]);
    const y2 = productByRows(x2, out, per, build);
    x2.dispose();
    const y = y2.view([...lead, out]);
    y2.dispose();
    return y;
  });
  recordOp("reloraLinear", [x, W, B, A], y, (g) => {
    const g2 = g.view([rows, out]);
    const xf = x.view([rows, inF]);
    // dx first, so the transient out × in weight is gone before the other temporaries exist.
    const dx2 = inputGradByRows(g2, inF, per, build);
    const dx = dx2.view(x.shape);
    dx2.dispose();
    // The scale rides on the rows × r products, the smallest tensors here.
    const gB = matmul(g2, B);
    const sgB = scaled(gB, s);
    gB.dispose();
    const dA = matmul(sgB, xf, { transA: true });
    sgB.dispose();
    const xA = matmul(xf, A, { transB: true });
    const sxA = scaled(xA, s);
    xA.dispose();
    const dB = matmul(g2, sxA, { transA: true });
    sxA.dispose();
    g2.dispose();
    xf.dispose();
    return [dx, null, dB, dA];
  });
  return y;
}
