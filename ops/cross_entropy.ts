/**
 * Fused, numerically stable softmax cross-entropy with an ignore index. Everything stays on the
 * GPU: the per-row log-sum-exp, the sum and the count of non-ignored targets (the mean never reads
 * anything back), and the VJP `(softmax - onehot) * scale` as one element-wise kernel.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import {
  CE_MODE,
  ceGrad,
  ceReduce,
  ceRowLosses,
  checkCeLoops,
  checkIgnore,
  checkTargets,
} from "./ce_kernels.ts";
import { checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";

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

const COUNT = defineKernel({
  name: "count_targets",
  inputs: { tg: "i32" },
  outputs: { out: "f32" },
  uniforms: { rows: "u32", ignore: "i32" },
  grid: { workgroupSize: [1] },
  body: `  var count = 0u;
  ${forUnrolled("j", "0u", "u.rows", (i) => `count += select(0u, 1u, load_tg(${i}) != u.ignore);`)}
  store_out(0u, f32(count));`,
});

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
  assertF32(op, ["logits", logits]);
  checkTargets(op, targets);
  checkIgnore(op, ignoreIndex);
  if (!(reduction in CE_MODE)) throw new ShapeError(`${op}: unknown reduction "${reduction}"`);
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
  const f = { rows, v, ignore: ignoreIndex, mode: CE_MODE[reduction] };

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
      ceGrad("cross_entropy_backward", dx, logits, { targets, lse, count, g }, { ...f, cols: v });
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
  COUNT({ tg: targets, out }, { rows: targets.size, ignore: ignoreIndex }, [1]);
  return out;
}
