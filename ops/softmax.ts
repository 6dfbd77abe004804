/**
 * Softmax and log-softmax over the last axis, each one fused kernel with one invocation per row,
 * and their VJPs as one fused kernel each.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";

// Three branch-free passes (max, sum of exp, write) rather than an online max; the row is still in
// cache for the later passes. Loops are unrolled with partial accumulators (see ./loop.ts).
const forward = (log: boolean) =>
  defineKernel({
    name: log ? "log_softmax" : "softmax",
    inputs: { x: "f32" },
    outputs: { y: "f32" },
    uniforms: { d: "u32" },
    grid: "row",
    body: `  let base = r * u.d;
  ${accDecl("m", "load_x(base)")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `m${k} = max(m${k}, load_x(base + ${i}));`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += exp(load_x(base + ${i}) - m);`)}
  let s = ${accCombine("s", "+")};
${
      log
        ? `  let c = m + log(s);
  ${forUnrolled("j", "0u", "u.d", (i) => `store_y(base + ${i}, load_x(base + ${i}) - c);`)}`
        : `  let inv = 1.0 / s;
  ${
          forUnrolled("j", "0u", "u.d", (i) =>
            `store_y(base + ${i}, exp(load_x(base + ${i}) - m) * inv);`)
        }`
    }`,
  });

const SOFTMAX = forward(false);
const LOG_SOFTMAX = forward(true);

// dx = scale * y * (g - sum(g * y)); `scale` lets fused callers (scaled attention) reuse it.
const SOFTMAX_BWD = defineKernel({
  name: "softmax_backward",
  inputs: { y: "f32", g: "f32" },
  outputs: { dx: "f32" },
  uniforms: { d: "u32", scale: "f32" },
  grid: "row",
  body: `  let base = r * u.d;
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += load_g(base + ${i}) * load_y(base + ${i});`)}
  let dot = ${accCombine("s", "+")};
  ${
    forUnrolled("j", "0u", "u.d", (i) =>
      `store_dx(base + ${i}, u.scale * load_y(base + ${i}) * (load_g(base + ${i}) - dot));`)
  }`,
});

// dx = g - exp(y) * sum(g), with y the log-softmax output.
const LOG_SOFTMAX_BWD = defineKernel({
  name: "log_softmax_backward",
  inputs: { y: "f32", g: "f32" },
  outputs: { dx: "f32" },
  uniforms: { d: "u32" },
  grid: "row",
  body: `  let base = r * u.d;
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += load_g(base + ${i});`)}
  let s = ${accCombine("s", "+")};
  ${
    forUnrolled("j", "0u", "u.d", (i) =>
      `store_dx(base + ${i}, load_g(base + ${i}) - exp(load_y(base + ${i})) * s);`)
  }`,
});

/** Rows and row length of a tensor whose last axis is the row. */
function rowsOf(t: Tensor): { rows: number; d: number } {
  const d = t.shape[t.rank - 1];
  return { rows: d === 0 ? 0 : t.size / d, d };
}

function checkInput(op: string, x: Tensor): void {
  assertF32(op, x);
  if (x.rank === 0) throw new ShapeError(`${op}: needs at least one axis, got a scalar`);
  const d = x.shape[x.rank - 1];
  checkLoopBudget(op, unrolledEdges(d, 3), `a row of ${d} elements`);
}

/**
 * @internal Softmax VJP kernel shared with fused softmax variants: `scale * y * (g - sum(g * y))`
 * per row of the last axis, where `y` is the softmax output (entries with y = 0, e.g. masked
 * positions, get a zero gradient).
 */
export function softmaxBackward(y: Tensor, g: Tensor, scale = 1): Tensor {
  const dx = Tensor.empty(y.shape);
  SOFTMAX_BWD({ y, g, dx }, { ...rowsOf(y), scale });
  return dx;
}

/**
 * Softmax over the last axis: `exp(x - max) / sum(exp(x - max))` per row, for any rank >= 1.
 * Numerically stable for any finite logits; a row that is entirely -Infinity gives NaN.
 */
export function softmax(x: Tensor): Tensor {
  checkInput("softmax", x);
  const y = Tensor.empty(x.shape);
  SOFTMAX({ x, y }, rowsOf(x));
  if (isRecording()) recordOp("softmax", [x], y, (g) => [softmaxBackward(y, g)]);
  return y;
}

/**
 * Log-softmax over the last axis: `x - max - log(sum(exp(x - max)))` per row, for any rank >= 1.
 * Numerically stable for any finite logits.
 */
export function logSoftmax(x: Tensor): Tensor {
  checkInput("logSoftmax", x);
  const y = Tensor.empty(x.shape);
  LOG_SOFTMAX({ x, y }, rowsOf(x));
  if (isRecording()) {
    recordOp("logSoftmax", [x], y, (g) => {
      const dx = Tensor.empty(y.shape);
      LOG_SOFTMAX_BWD({ y, g, dx }, rowsOf(y));
      return [dx];
    });
  }
  return y;
}
