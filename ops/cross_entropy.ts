/**
 * Fused, numerically stable softmax cross-entropy with an ignore index. Everything stays on the
 * GPU: the per-row log-sum-exp, the sum and the count of non-ignored targets (the mean never reads
 * anything back), and the VJP `(softmax - onehot) * scale` as one element-wise kernel.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch, grid1d } from "../core/kernel.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";

/** How {@link crossEntropy} reduces the per-target losses. */
export type Reduction = "mean" | "sum" | "none";

/** Options of {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** Targets equal to this value contribute no loss, no gradient and no count (default -100). */
  ignoreIndex?: number;
  /**
   * `mean` (default): sum over non-ignored targets divided by their count (0 when all are ignored);
   * `sum`: the plain sum; `none`: one loss per target, shaped like `targets` (0 where ignored).
   */
  reduction?: Reduction;
}

const ROW_WG = 16;
const MODE = { mean: 0, sum: 1, none: 2 } as const;

const UNIFORM = `
struct U { rows: u32, v: u32, ignore: i32, nan_bits: u32, mode: u32 }`;

// One invocation per row: log-sum-exp in three branch-free passes, then lse - x[target]. Targets
// are bound as i32 (a u32 target >= 2^31 reads as negative, i.e. out of range). An out-of-range
// target that is not the ignore index gives NaN: the GPU cannot throw, and a NaN loss is loud.
const ROWS = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> tg: array<i32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${UNIFORM}
const WG = ${ROW_WG}u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * (nwg.x * WG);
  if (r >= u.rows) { return; }
  let base = r * u.v;
  ${accDecl("m", "x[base]")}
  ${forUnrolled("j", "0u", "u.v", (i, k) => `m${k} = max(m${k}, x[base + ${i}]);`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.v", (i, k) => `s${k} += exp(x[base + ${i}] - m);`)}
  let s = ${accCombine("s", "+")};
  let l = m + log(s);
  lse[r] = l;
  let t = tg[r];
  if (t == u.ignore) {
    loss[r] = 0.0;
  } else if (t < 0 || t >= i32(u.v)) {
    loss[r] = bitcast<f32>(u.nan_bits);
  } else {
    loss[r] = l - x[base + u32(t)];
  }
}`;

// A single invocation sums the row losses (16 interleaved partial sums) and counts the non-ignored
// targets; a fixed order keeps the result deterministic.
// stats = [sum, count]; out = sum / count (mean, 0 if count is 0) or sum.
const REDUCE = `
@group(0) @binding(0) var<storage, read> loss: array<f32>;
@group(0) @binding(1) var<storage, read> tg: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${UNIFORM}
@compute @workgroup_size(1) fn main() {
  ${accDecl("s", "0.0")}
  var count = 0u;
  ${
  forUnrolled("j", "0u", "u.rows", (i, k) =>
    `s${k} += loss[${i}]; count += select(0u, 1u, tg[${i}] != u.ignore);`)
}
  let total = ${accCombine("s", "+")};
  let c = f32(count);
  stats[0] = total;
  stats[1] = c;
  if (u.mode == 0u) {
    out[0] = select(0.0, total / c, count > 0u);
  } else {
    out[0] = total;
  }
}`;

// dx = scale_r * (exp(x - lse_r) - onehot(target_r)), 0 on ignored rows; scale_r = g / count (mean),
// g (sum) or g[r] (none).
const BACKWARD = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> tg: array<i32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<uniform> u: U;
${UNIFORM}
const WG = 256u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * WG);
  if (i >= u.rows * u.v) { return; }
  let r = i / u.v;
  let j = i - r * u.v;
  let t = tg[r];
  if (t == u.ignore) { dx[i] = 0.0; return; }
  if (t < 0 || t >= i32(u.v)) { dx[i] = bitcast<f32>(u.nan_bits); return; }
  var scale: f32;
  if (u.mode == 0u) {
    scale = g[0] / stats[1];
  } else if (u.mode == 1u) {
    scale = g[0];
  } else {
    scale = g[r];
  }
  let p = exp(x[i] - lse[r]);
  dx[i] = scale * (p - select(0.0, 1.0, u32(t) == j));
}`;

const COUNT = `
@group(0) @binding(0) var<storage, read> tg: array<i32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
${UNIFORM}
@compute @workgroup_size(1) fn main() {
  var count = 0u;
  ${forUnrolled("j", "0u", "u.rows", (i) => `count += select(0u, 1u, tg[${i}] != u.ignore);`)}
  out[0] = f32(count);
}`;

function uniforms(rows: number, v: number, ignore: number, mode: number): Uint32Array {
  const u = new Uint32Array(8);
  const view = new DataView(u.buffer);
  view.setUint32(0, rows, true);
  view.setUint32(4, v, true);
  view.setInt32(8, ignore, true);
  view.setUint32(12, 0x7fc00000, true);
  view.setUint32(16, mode, true);
  return u;
}

function checkTargets(op: string, targets: Tensor): void {
  if (targets.dtype !== "i32" && targets.dtype !== "u32") {
    throw new DTypeError(
      `${op}: targets must be i32 (or u32), got ${targets.dtype} ${fmtShape(targets.shape)}`,
    );
  }
}

function checkIgnore(op: string, ignoreIndex: number): void {
  if (!Number.isInteger(ignoreIndex) || ignoreIndex < -(2 ** 31) || ignoreIndex >= 2 ** 31) {
    throw new ShapeError(`${op}: ignoreIndex ${ignoreIndex} is not an i32`);
  }
}

/**
 * Softmax cross-entropy of `logits` [..., V] (f32) against class indices `targets` [...] (i32 or
 * u32, the logits' shape without the last axis): `logsumexp(logits) - logits[target]` per target,
 * reduced as `opts.reduction` says (default: mean over the non-ignored targets, a scalar).
 *
 * One fused pass per row (stable for any finite logits). If every target is ignored, the mean is 0
 * (not NaN) and so is the gradient. A target outside `[0, V)` that is not `ignoreIndex` makes its
 * loss and gradient NaN (the GPU cannot throw; see `checkIds` in ops/embedding.ts for a CPU check).
 * The gradient flows to the logits only.
 */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  opts: CrossEntropyOptions = {},
): Tensor {
  const { ignoreIndex = -100, reduction = "mean" } = opts;
  const op = "crossEntropy";
  if (logits.dtype !== "f32") {
    throw new DTypeError(
      `${op}: logits must be f32, got ${logits.dtype} ${fmtShape(logits.shape)}`,
    );
  }
  checkTargets(op, targets);
  checkIgnore(op, ignoreIndex);
  if (!(reduction in MODE)) throw new ShapeError(`${op}: unknown reduction "${reduction}"`);
  if (logits.rank === 0 || !shapesEqual(logits.shape.slice(0, -1), targets.shape)) {
    throw new ShapeError(
      `${op}: logits ${
        fmtShape(logits.shape)
      } need targets shaped like logits without the last axis, ` +
        `got targets ${fmtShape(targets.shape)}`,
    );
  }
  const v = logits.shape[logits.rank - 1];
  if (v === 0 && targets.size > 0) {
    throw new ShapeError(`${op}: logits ${fmtShape(logits.shape)} have no classes`);
  }
  const rows = targets.size;
  checkLoopBudget(op, unrolledEdges(v, 2), `a row of ${v} logits`);
  checkLoopBudget(op, unrolledEdges(rows), `the reduction over ${rows} targets`);
  const mode = MODE[reduction];
  const u = uniforms(rows, v, ignoreIndex, mode);

  const rowLoss = Tensor.empty(targets.shape);
  const lse = Tensor.empty(targets.shape);
  if (rows > 0) {
    dispatch({
      name: "cross_entropy",
      code: ROWS,
      inputs: [logits.binding(), targets.binding()],
      outputs: [rowLoss.binding(), lse.binding()],
      uniforms: u,
      workgroups: grid1d(rows, ROW_WG),
    });
  }
  let out = rowLoss;
  let stats = lse;
  if (reduction !== "none") {
    out = Tensor.empty([]);
    stats = Tensor.empty([2]);
    dispatch({
      name: "cross_entropy_reduce",
      code: REDUCE,
      inputs: [rowLoss.binding(), targets.binding()],
      outputs: [out.binding(), stats.binding()],
      uniforms: u,
      workgroups: [1],
    });
    rowLoss.dispose();
  }
  const saved = reduction === "none" ? [lse] : [lse, stats];
  if (isRecording()) {
    recordOp(op, [logits, targets], out, (g) => {
      const dx = Tensor.empty(logits.shape);
      if (dx.size > 0) {
        dispatch({
          name: "cross_entropy_backward",
          code: BACKWARD,
          inputs: [
            logits.binding(),
            targets.binding(),
            lse.binding(),
            stats.binding(),
            g.binding(),
          ],
          outputs: [dx.binding()],
          uniforms: u,
          workgroups: grid1d(dx.size, 256),
        });
      }
      return [dx, null];
    }, saved);
  } else {
    for (const t of saved) t.dispose();
  }
  return out;
}

/**
 * The number of targets not equal to `ignoreIndex` (default -100), as an f32 scalar computed on the
 * GPU: with `crossEntropy(..., { reduction: "sum" })` it gives token-weighted means over batches.
 */
export function countTargets(targets: Tensor, opts: { ignoreIndex?: number } = {}): Tensor {
  const { ignoreIndex = -100 } = opts;
  checkTargets("countTargets", targets);
  checkIgnore("countTargets", ignoreIndex);
  checkLoopBudget("countTargets", unrolledEdges(targets.size), `${targets.size} targets`);
  const out = Tensor.empty([]);
  dispatch({
    name: "count_targets",
    code: COUNT,
    inputs: [targets.binding()],
    outputs: [out.binding()],
    uniforms: uniforms(targets.size, 0, ignoreIndex, 0),
    workgroups: [1],
  });
  return out;
}
