/**
 * `x·Wᵀ` for a few rows of x, the shape of one decoding step (y = x·Wᵀ with x [1, K], W [N, K]):
 * the register-tiled matmul computes 16 output rows per invocation, so at one row it does 16 times
 * the work. Here an invocation computes four outputs of one row, reading x once per four weights.
 * Inference only: not recorded on a tape.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, sizeOf } from "../core/shape.ts";
import { isRecording } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { checkLoopBudget } from "./loop.ts";

const MATVEC = defineKernel({
  name: "matvec_t",
  inputs: { x: "vec4f", w: "vec4f" },
  outputs: { y: "f32" },
  uniforms: { k4: "u32", cols: "u32" },
  grid: "flat", // one invocation per (row, group of 4 outputs)
  body: `  let groups = u.cols / 4u;
  let r = i / groups;
  let c = (i - r * groups) * 4u;
  let xb = r * u.k4;
  let wb = c * u.k4;
  var a0 = vec4f(0.0);
  var a1 = vec4f(0.0);
  var a2 = vec4f(0.0);
  var a3 = vec4f(0.0);
  for (var j = 0u; j < u.k4; j++) {
    let xv = x[xb + j];
    a0 += xv * w[wb + j];
    a1 += xv * w[wb + u.k4 + j];
    a2 += xv * w[wb + 2u * u.k4 + j];
    a3 += xv * w[wb + 3u * u.k4 + j];
  }
  let o = r * u.cols + c;
  store_y(o, dot(a0, vec4f(1.0)));
  store_y(o + 1u, dot(a1, vec4f(1.0)));
  store_y(o + 2u, dot(a2, vec4f(1.0)));
  store_y(o + 3u, dot(a3, vec4f(1.0)));`,
});

/** True when {@link matvecT} takes `w` [N, K]: K and N multiples of 4. */
export function matvecFits(w: Tensor): boolean {
  return w.rank === 2 && w.shape[1] % 4 === 0 && w.shape[0] % 4 === 0;
}

/**
 * `x·Wᵀ` for x [..., K] with few rows and W [N, K] (f32; K and N multiples of 4, see
 * {@link matvecFits}) -> [..., N]: what `matmul(x, w, { transB: true })` computes, in one pass over
 * W per row. Throws under a recording tape (it has no VJP).
 */
export function matvecT(x: Tensor, w: Tensor): Tensor {
  assertF32("matvecT", ["x", x], ["w", w]);
  const k = x.shape[x.rank - 1];
  if (!matvecFits(w) || w.shape[1] !== k) {
    throw new ShapeError(
      `matvecT: need x [..., K] and w [N, K] with K, N multiples of 4; got x ${
        fmtShape(x.shape)
      }, w ${fmtShape(w.shape)}`,
    );
  }
  if (isRecording()) throw new ShapeError("matvecT: inference only, it cannot be recorded");
  checkLoopBudget("matvecT", k / 4, `a row of ${k} inputs`);
  const rows = sizeOf(x.shape.slice(0, -1));
  const n = w.shape[0];
  const y = Tensor.empty([...x.shape.slice(0, -1), n]);
  MATVEC({ x, w, y }, { n: (rows * n) / 4, k4: k / 4, cols: n });
  return y;
}
