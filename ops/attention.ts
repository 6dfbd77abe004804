/**
 * Causal self-attention as a composition: `softmax(mask(q·kᵀ) / sqrt(Dh)) · v`, with the mask,
 * the scale and the softmax fused into one row kernel. Gradients come from the pieces (two batched
 * matmuls and the fused softmax's VJP kernel).
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch, grid1d } from "../core/kernel.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { matmul } from "./matmul.ts";
import { softmaxBackward } from "./softmax.ts";

const ROW_WG = 16;

// Row r of the [..., T, T] scores is query i = r % T: softmax of scale * x over keys 0..i, zeros
// after. Masked keys are never read, so no -Infinity is needed (and a row always has key 0).
const CAUSAL_SOFTMAX = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
struct U { rows: u32, t: u32, scale: f32 }
@group(0) @binding(2) var<uniform> u: U;
const WG = ${ROW_WG}u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * (nwg.x * WG);
  if (r >= u.rows) { return; }
  let base = r * u.t;
  let n = r % u.t + 1u;
  ${accDecl("m", "u.scale * x[base]")}
  ${forUnrolled("j", "0u", "n", (i, k) => `m${k} = max(m${k}, u.scale * x[base + ${i}]);`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "n", (i, k) => `s${k} += exp(u.scale * x[base + ${i}] - m);`)}
  let inv = 1.0 / ${accCombine("s", "+")};
  ${forUnrolled("j", "0u", "n", (i) => `y[base + ${i}] = exp(u.scale * x[base + ${i}] - m) * inv;`)}
  ${forUnrolled("j", "n", "u.t", (i) => `y[base + ${i}] = 0.0;`)}
}`;

/**
 * Causal softmax of attention scores `x` [..., T, T] (f32): row i is
 * `softmax(scale * x[i, 0..i])` followed by zeros for the future keys i+1..T-1.
 * Differentiable with respect to `x`.
 */
export function causalSoftmax(x: Tensor, scale = 1): Tensor {
  const op = "causalSoftmax";
  if (x.dtype !== "f32") {
    throw new DTypeError(`${op}: needs f32 scores, got ${x.dtype} ${fmtShape(x.shape)}`);
  }
  const t = x.shape[x.rank - 1];
  if (x.rank < 2 || x.shape[x.rank - 2] !== t) {
    throw new ShapeError(`${op}: scores must be [..., T, T], got ${fmtShape(x.shape)}`);
  }
  if (!Number.isFinite(scale)) throw new ShapeError(`${op}: scale must be finite, got ${scale}`);
  checkLoopBudget(op, unrolledEdges(t, 3) + 2 * 16, `a row of ${t} keys`);
  const y = Tensor.empty(x.shape);
  const rows = t === 0 ? 0 : x.size / t;
  if (rows > 0) {
    const u = new Uint32Array(4);
    u[0] = rows;
    u[1] = t;
    new Float32Array(u.buffer)[2] = scale;
    dispatch({
      name: "causal_softmax",
      code: CAUSAL_SOFTMAX,
      inputs: [x.binding()],
      outputs: [y.binding()],
      uniforms: u,
      workgroups: grid1d(rows, ROW_WG),
    });
  }
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
  for (const t of [q, k, v]) {
    if (t.dtype !== "f32") {
      throw new DTypeError(`${op}: q, k, v must be f32, got ${t.dtype} ${fmtShape(t.shape)}`);
    }
  }
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
