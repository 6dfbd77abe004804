/**
 * Fused, numerically stable softmax cross-entropy with an ignore index. Everything stays on the
 * GPU: the per-row log-sum-exp, the sum and the count of non-ignored targets (the mean never reads
 * anything back), and the VJP `(softmax - onehot) * scale` as one element-wise kernel.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch } from "../core/kernel.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import {
  CE_UNIFORM,
  ceReduce,
  ceRowLosses,
  ceUniforms,
  checkCeLoops,
  checkIgnore,
  checkTargets,
} from "./ce_kernels.ts";
import { checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { flatGrid, flatMain } from "./wgsl.ts";

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

const MODE = { mean: 0, sum: 1, none: 2 } as const;

// dx = scale_r * (exp(x - lse_r) - onehot(target_r)), 0 on ignored rows; scale_r = g / count (mean),
// g (sum) or g[r] (none; count is then not read).
const BACKWARD = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> tg: array<i32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> count: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<uniform> u: U;
${CE_UNIFORM}
${
  flatMain(`  if (i >= u.rows * u.v) { return; }
  let r = i / u.v;
  let j = i - r * u.v;
  let t = tg[r];
  if (t == u.ignore) { dx[i] = 0.0; return; }
  if (t < 0 || t >= i32(u.v)) { dx[i] = bitcast<f32>(u.nan_bits); return; }
  var scale: f32;
  if (u.mode == 0u) {
    scale = g[0] / count[0];
  } else if (u.mode == 1u) {
    scale = g[0];
  } else {
    scale = g[r];
  }
  let p = exp(x[i] - lse[r]);
  dx[i] = scale * (p - select(0.0, 1.0, u32(t) == j));`)
}`;

const COUNT = `
@group(0) @binding(0) var<storage, read> tg: array<i32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> u: U;
${CE_UNIFORM}
@compute @workgroup_size(1) fn main() {
  var count = 0u;
  ${forUnrolled("j", "0u", "u.rows", (i) => `count += select(0u, 1u, tg[${i}] != u.ignore);`)}
  out[0] = f32(count);
}`;

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
  checkCeLoops(op, v, rows);
  const f = { rows, v, ignore: ignoreIndex, mode: MODE[reduction] };

  const rowLoss = Tensor.empty(targets.shape);
  const lse = Tensor.empty(targets.shape);
  ceRowLosses("cross_entropy", logits, targets, rowLoss, lse, f);
  let out = rowLoss;
  let count = lse; // mode "none": the backward kernel binds but never reads it
  if (reduction !== "none") {
    out = Tensor.empty([]);
    count = Tensor.empty([]);
    ceReduce("cross_entropy_reduce", rowLoss, targets, out, count, f);
    rowLoss.dispose();
  }
  const saved = reduction === "none" ? [lse] : [lse, count];
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
            count.binding(),
            g.binding(),
          ],
          outputs: [dx.binding()],
          uniforms: ceUniforms(f),
          workgroups: flatGrid(dx.size),
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
    uniforms: ceUniforms({ rows: targets.size, v: 0, ignore: ignoreIndex }),
    workgroups: [1],
  });
  return out;
}
