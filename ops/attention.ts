/**
 * Causal self-attention as a composition: `softmax(mask(q·kᵀ) / sqrt(Dh)) · v`, with the mask,
 * the scale and the softmax fused into one row kernel. Gradients come from the pieces (two batched
 * matmuls and the fused softmax's VJP kernel).
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { matmul } from "./matmul.ts";
import { softmaxBackward } from "./softmax.ts";

// Row r of the [..., T, T] scores is query i = r % T: softmax of scale * x over keys 0..i, zeros
// after. Masked keys are never read, so no -Infinity is needed (and a row always has key 0).
const CAUSAL_SOFTMAX = defineKernel({
  name: "causal_softmax",
  inputs: { x: "f32" },
  outputs: { y: "f32" },
  uniforms: { t: "u32", scale: "f32" },
  grid: "row",
  body: `  let base = r * u.t;
  let n = r % u.t + 1u;
  ${accDecl("m", "u.scale * load_x(base)")}
  ${forUnrolled("j", "0u", "n", (i, k) => `m${k} = max(m${k}, u.scale * load_x(base + ${i}));`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "n", (i, k) => `s${k} += exp(u.scale * load_x(base + ${i}) - m);`)}
  let inv = 1.0 / ${accCombine("s", "+")};
  ${
    forUnrolled("j", "0u", "n", (i) =>
      `store_y(base + ${i}, exp(u.scale * load_x(base + ${i}) - m) * inv);`)
  }
  ${forUnrolled("j", "n", "u.t", (i) => `store_y(base + ${i}, 0.0);`)}`,
});

/**
 * Causal softmax of attention scores `x` [..., T, T] (f32): row i is
 * `softmax(scale * x[i, 0..i])` followed by zeros for the future keys i+1..T-1.
 * Differentiable with respect to `x`.
 */
export function causalSoftmax(x: Tensor, scale = 1): Tensor {
  const op = "causalSoftmax";
  assertF32(op, ["scores", x]);
  const t = x.shape[x.rank - 1];
  if (x.rank < 2 || x.shape[x.rank - 2] !== t) {
    throw new ShapeError(`${op}: scores must be [..., T, T], got ${fmtShape(x.shape)}`);
  }
  if (!Number.isFinite(scale)) throw new ShapeError(`${op}: scale must be finite, got ${scale}`);
  checkLoopBudget(op, unrolledEdges(t, 3) + 2 * 16, `a row of ${t} keys`);
  const y = Tensor.empty(x.shape);
  const rows = t === 0 ? 0 : x.size / t;
  CAUSAL_SOFTMAX({ x, y }, { rows, t, scale });
  if (isRecording()) recordOp(op, [x], y, (g) => [softmaxBackward(y, g, scale)]);
  return y;
}

/**
 * Causal self-attention of `q`, `k`, `v` [B, H, T, Dh] (f32, equal shapes; any leading dims work):
 * `softmax(q·kᵀ / sqrt(Dh) + causal mask) · v` -> [B, H, T, Dh]. Position i attends to keys 0..i.
 * Materializes the [B, H, T, T] scores and probabilities (no flash-style tiling yet).
 */
export function causalSelfAttention(q: Tensor, k: Tensor, v: Tensor): Tensor {
  const op = "causalSelfAttention";
  assertF32(op, ["q", q], ["k", k], ["v", v]);
  if (q.rank < 2 || !shapesEqual(q.shape, k.shape) || !shapesEqual(q.shape, v.shape)) {
    throw new ShapeError(
      `${op}: q, k, v must have equal shapes [B, H, T, Dh], got ${fmtShape(q.shape)}, ${
        fmtShape(k.shape)
      }, ${fmtShape(v.shape)}`,
    );
  }
  const dh = q.shape[q.rank - 1];
  const t = q.shape[q.rank - 2];
  checkLoopBudget(op, unrolledEdges(t, 3) + 2 * 16, `a row of ${t} keys`);
  const scores = matmul(q, k, { transB: true });
  const p = causalSoftmax(scores, dh > 0 ? 1 / Math.sqrt(dh) : 1);
  const out = matmul(p, v);
  // Under a tape, the VJPs own these; otherwise they are dead now.
  if (!isRecording()) {
    scores.dispose();
    p.dispose();
  }
  return out;
}
