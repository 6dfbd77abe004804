/**
 * Softmax and log-softmax over the last axis, each one fused kernel with one invocation per row,
 * and their VJPs as one fused kernel each.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { rowGrid, rowMain } from "./wgsl.ts";

const UNIFORM = `
struct U { rows: u32, d: u32, scale: f32 }`;

// Three branch-free passes (max, sum of exp, write) rather than an online max; the row is still in
// cache for the later passes. Loops are unrolled with partial accumulators (see ./loop.ts).
function forwardCode(log: boolean): string {
  return `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
${UNIFORM}
${
    rowMain(`  let base = r * u.d;
  ${accDecl("m", "x[base]")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `m${k} = max(m${k}, x[base + ${i}]);`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += exp(x[base + ${i}] - m);`)}
  let s = ${accCombine("s", "+")};
${
      log
        ? `  let c = m + log(s);
  ${forUnrolled("j", "0u", "u.d", (i) => `y[base + ${i}] = x[base + ${i}] - c;`)}`
        : `  let inv = 1.0 / s;
  ${forUnrolled("j", "0u", "u.d", (i) => `y[base + ${i}] = exp(x[base + ${i}] - m) * inv;`)}`
    }`)
  }`;
}

const SOFTMAX_FWD = forwardCode(false);
const LOG_SOFTMAX_FWD = forwardCode(true);

// dx = scale * y * (g - sum(g * y)); `scale` lets fused callers (scaled attention) reuse it.
const SOFTMAX_BWD = `
@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
${UNIFORM}
${
  rowMain(`  let base = r * u.d;
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += g[base + ${i}] * y[base + ${i}];`)}
  let dot = ${accCombine("s", "+")};
  ${
    forUnrolled(
      "j",
      "0u",
      "u.d",
      (i) => `dx[base + ${i}] = u.scale * y[base + ${i}] * (g[base + ${i}] - dot);`,
    )
  }`)
}`;

// dx = g - exp(y) * sum(g), with y the log-softmax output.
const LOG_SOFTMAX_BWD = `
@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> u: U;
${UNIFORM}
${
  rowMain(`  let base = r * u.d;
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += g[base + ${i}];`)}
  let s = ${accCombine("s", "+")};
  ${
    forUnrolled("j", "0u", "u.d", (i) =>
      `dx[base + ${i}] = g[base + ${i}] - exp(y[base + ${i}]) * s;`)
  }`)
}`;

function rowUniforms(rows: number, d: number, scale = 1): Uint32Array {
  const u = new Uint32Array(4);
  u[0] = rows;
  u[1] = d;
  new Float32Array(u.buffer)[2] = scale;
  return u;
}

function checkInput(op: string, x: Tensor): void {
  if (x.dtype !== "f32") {
    throw new DTypeError(`${op}: needs an f32 tensor, got ${x.dtype} ${fmtShape(x.shape)}`);
  }
  if (x.rank === 0) throw new ShapeError(`${op}: needs at least one axis, got a scalar`);
  const d = x.shape[x.rank - 1];
  checkLoopBudget(op, unrolledEdges(d, 3), `a row of ${d} elements`);
}

function rowKernel(
  name: string,
  code: string,
  inputs: Tensor[],
  shape: readonly number[],
  scale = 1,
): Tensor {
  const out = Tensor.empty(shape);
  const d = shape[shape.length - 1];
  const rows = d === 0 ? 0 : out.size / d;
  if (rows > 0) {
    dispatch({
      name,
      code,
      inputs: inputs.map((t) => t.binding()),
      outputs: [out.binding()],
      uniforms: rowUniforms(rows, d, scale),
      workgroups: rowGrid(rows),
    });
  }
  return out;
}

/**
 * @internal Softmax VJP kernel shared with fused softmax variants: `scale * y * (g - sum(g * y))`
 * per row of the last axis, where `y` is the softmax output (entries with y = 0, e.g. masked
 * positions, get a zero gradient).
 */
export function softmaxBackward(y: Tensor, g: Tensor, scale = 1): Tensor {
  return rowKernel("softmax_backward", SOFTMAX_BWD, [y, g], y.shape, scale);
}

/**
 * Softmax over the last axis: `exp(x - max) / sum(exp(x - max))` per row, for any rank >= 1.
 * Numerically stable for any finite logits; a row that is entirely -Infinity gives NaN.
 */
export function softmax(x: Tensor): Tensor {
  checkInput("softmax", x);
  const y = rowKernel("softmax", SOFTMAX_FWD, [x], x.shape);
  if (isRecording()) recordOp("softmax", [x], y, (g) => [softmaxBackward(y, g)]);
  return y;
}

/**
 * Log-softmax over the last axis: `x - max - log(sum(exp(x - max)))` per row, for any rank >= 1.
 * Numerically stable for any finite logits.
 */
export function logSoftmax(x: Tensor): Tensor {
  checkInput("logSoftmax", x);
  const y = rowKernel("log_softmax", LOG_SOFTMAX_FWD, [x], x.shape);
  if (isRecording()) {
    recordOp(
      "logSoftmax",
      [x],
      y,
      (g) => [rowKernel("log_softmax_backward", LOG_SOFTMAX_BWD, [y, g], y.shape)],
    );
  }
  return y;
}
