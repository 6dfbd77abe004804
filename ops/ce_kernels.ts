/**
 * @internal The softmax cross-entropy kernels shared by `crossEntropy` (ops/cross_entropy.ts) and
 * `lmHeadCrossEntropy` (ops/lm_head.ts): the per-row log-sum-exp and loss, the deterministic
 * reduction to a mean or sum and a target count, their uniform block and their input checks. One
 * copy of the arithmetic is what makes the two ops agree to the bit on equal logits.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { rowGrid, rowMain } from "./wgsl.ts";

/** Fields of {@link CE_UNIFORM}; the ones left out are 0. */
export interface CeUniforms {
  rows: number;
  v: number;
  ignore: number;
  mode?: number;
  off?: number;
  v0?: number;
  n?: number;
}

/**
 * rows/v/ignore/nan_bits/mode/off/v0/n: one layout for every cross-entropy kernel. mode: 0 mean,
 * 1 sum, 2 none; off, v0 and n are for chunked callers.
 */
export const CE_UNIFORM = `
struct U { rows: u32, v: u32, ignore: i32, nan_bits: u32, mode: u32, off: u32, v0: u32, n: u32 }`;

/** Packs {@link CE_UNIFORM} (nan_bits is a quiet NaN). */
export function ceUniforms(f: CeUniforms): Uint32Array {
  const u = new Uint32Array(8);
  const view = new DataView(u.buffer);
  view.setUint32(0, f.rows, true);
  view.setUint32(4, f.v, true);
  view.setInt32(8, f.ignore, true);
  view.setUint32(12, 0x7fc00000, true);
  view.setUint32(16, f.mode ?? 0, true);
  view.setUint32(20, f.off ?? 0, true);
  view.setUint32(24, f.v0 ?? 0, true);
  view.setUint32(28, f.n ?? 0, true);
  return u;
}

// One invocation per row of a block of `rows` logits rows that starts at global row `off`:
// log-sum-exp in three branch-free passes, then lse - x[target], both written at the global row so
// chunks fill shared [N] buffers without a concat. Targets are bound as i32 (a u32 target >= 2^31
// reads as negative, i.e. out of range). An out-of-range target that is not the ignore index gives
// NaN: the GPU cannot throw, and a NaN loss is loud.
const ROWS = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> tg: array<i32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${CE_UNIFORM}
${
  rowMain(`  let base = r * u.v;
  ${accDecl("m", "x[base]")}
  ${forUnrolled("j", "0u", "u.v", (i, k) => `m${k} = max(m${k}, x[base + ${i}]);`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.v", (i, k) => `s${k} += exp(x[base + ${i}] - m);`)}
  let s = ${accCombine("s", "+")};
  let l = m + log(s);
  let gr = u.off + r;
  lse[gr] = l;
  let t = tg[gr];
  if (t == u.ignore) {
    loss[gr] = 0.0;
  } else if (t < 0 || t >= i32(u.v)) {
    loss[gr] = bitcast<f32>(u.nan_bits);
  } else {
    loss[gr] = l - x[base + u32(t)];
  }`)
}`;

// A single invocation sums the row losses (16 interleaved partial sums) and counts the non-ignored
// targets; a fixed order keeps the result deterministic. out = sum / count (mean, 0 if count is 0)
// or sum.
const REDUCE = `
@group(0) @binding(0) var<storage, read> loss: array<f32>;
@group(0) @binding(1) var<storage, read> tg: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> count: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${CE_UNIFORM}
@compute @workgroup_size(1) fn main() {
  ${accDecl("s", "0.0")}
  var c = 0u;
  ${
  forUnrolled("j", "0u", "u.rows", (i, k) =>
    `s${k} += loss[${i}]; c += select(0u, 1u, tg[${i}] != u.ignore);`)
}
  let total = ${accCombine("s", "+")};
  count[0] = f32(c);
  if (u.mode == 0u) {
    out[0] = select(0.0, total / f32(c), c > 0u);
  } else {
    out[0] = total;
  }
}`;

/**
 * Row log-sum-exp and loss of `logits` [f.rows, f.v] (row r is global row `f.off + r`) into `lse`
 * and `loss` [N] at the global rows; `targets` [N]. Nothing is dispatched for 0 rows.
 */
export function ceRowLosses(
  name: string,
  logits: Tensor,
  targets: Tensor,
  loss: Tensor,
  lse: Tensor,
  f: CeUniforms,
): void {
  if (f.rows === 0) return;
  dispatch({
    name,
    code: ROWS,
    inputs: [logits.binding(), targets.binding()],
    outputs: [loss.binding(), lse.binding()],
    uniforms: ceUniforms(f),
    workgroups: rowGrid(f.rows),
  });
}

/**
 * Reduces the `f.rows` row losses into `out` (a scalar: the mean if `f.mode` is 0, else the sum) and
 * `count` (a scalar: the number of targets not equal to `f.ignore`).
 */
export function ceReduce(
  name: string,
  loss: Tensor,
  targets: Tensor,
  out: Tensor,
  count: Tensor,
  f: CeUniforms,
): void {
  dispatch({
    name,
    code: REDUCE,
    inputs: [loss.binding(), targets.binding()],
    outputs: [out.binding(), count.binding()],
    uniforms: ceUniforms(f),
    workgroups: [1],
  });
}

/** Throws unless `targets` is i32 or u32. */
export function checkTargets(op: string, targets: Tensor): void {
  if (targets.dtype !== "i32" && targets.dtype !== "u32") {
    throw new DTypeError(
      `${op}: targets must be i32 (or u32), got ${targets.dtype} ${fmtShape(targets.shape)}`,
    );
  }
}

/** Throws unless `ignoreIndex` is an i32. */
export function checkIgnore(op: string, ignoreIndex: number): void {
  if (!Number.isInteger(ignoreIndex) || ignoreIndex < -(2 ** 31) || ignoreIndex >= 2 ** 31) {
    throw new ShapeError(`${op}: ignoreIndex ${ignoreIndex} is not an i32`);
  }
}

/** Loop budgets of {@link ceRowLosses} (two passes over a row of `v`) and {@link ceReduce}. */
export function checkCeLoops(op: string, v: number, rows: number): void {
  checkLoopBudget(op, unrolledEdges(v, 2), `a row of ${v} logits`);
  checkLoopBudget(op, unrolledEdges(rows), `the reduction over ${rows} targets`);
}
