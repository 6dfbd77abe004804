/**
 * The untied LM head fused with softmax cross-entropy, `CE(h·Wᵀ, targets)`, computed in chunks so
 * that the [N, V] logits never exist whole: at N = 2048 tokens and V = 32000 they take 262 MB and
 * overflow a 128 MiB storage binding.
 *
 * Forward walks row chunks of h and keeps one log-sum-exp per row. Backward recomputes the logits
 * in vocabulary blocks: each block's dW rows are final at once (no [V, D] accumulator beside the
 * output), and only dh [N, D], small next to W, is accumulated across blocks. The tape keeps the
 * inputs, the per-row log-sum-exp and the target count, nothing of size V·N.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp, untracked } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import {
  CE_MODE,
  ceGrad,
  ceReduce,
  ceRowLosses,
  checkCeLoops,
  checkIgnore,
  checkTargets,
} from "./ce_kernels.ts";
import { matmul } from "./matmul.ts";
import { stridedCopy } from "./strided.ts";

/** Default bytes of one chunk of logits (forward rows or backward vocabulary block). */
export const LM_HEAD_CHUNK_BYTES: number = 32 * 1024 * 1024;

/** Options of {@link lmHeadCrossEntropy} and {@link lmHeadLossSums}. */
export interface LmHeadLossOptions {
  /** Targets equal to this value contribute no loss, no gradient and no count (default -100). */
  ignoreIndex?: number;
  /** Upper bound on the bytes of one chunk of f32 logits (default {@link LM_HEAD_CHUNK_BYTES}). */
  chunkBytes?: number;
}

/** Options of {@link lmHeadCrossEntropy}. */
export interface LmHeadCrossEntropyOptions extends LmHeadLossOptions {
  /** `mean` (default): over the non-ignored targets, 0 if there are none; `sum`: the plain sum. */
  reduction?: "mean" | "sum";
}

/** Token-weighted loss parts, both f32 scalars on the device. */
export interface LossSums {
  /** Sum of the per-target losses. */
  sum: Tensor;
  /** Number of non-ignored targets. */
  count: Tensor;
}

const ADD_INPLACE = defineKernel({
  name: "lm_head_accumulate",
  inputs: { part: "f32" },
  outputs: { acc: "f32" },
  grid: "flat",
  body: "  store_acc(i, load_acc(i) + load_part(i));",
});

/** Rows [r0, r0 + n) of a [R, D] tensor as a fresh [n, D] tensor (the whole tensor as a view). */
function rowsOf(x: Tensor, r0: number, n: number): Tensor {
  const d = x.shape[1];
  if (r0 === 0 && n === x.shape[0]) return x.view(x.shape);
  const out = Tensor.empty([n, d]);
  stridedCopy("lm_head_copy", "gather", x, out, [n * d], [1], r0 * d);
  return out;
}

interface Checked {
  n: number;
  d: number;
  v: number;
  ignore: number;
  chunkBytes: number;
}

function check(op: string, h: Tensor, w: Tensor, targets: Tensor, o: LmHeadLossOptions): Checked {
  const shapes = () =>
    `h ${fmtShape(h.shape)}, lmHead ${fmtShape(w.shape)}, targets ${fmtShape(targets.shape)}`;
  assertF32(op, ["h", h], ["lmHead", w]);
  checkTargets(op, targets);
  if (
    h.rank < 1 || w.rank !== 2 || w.shape[1] !== h.shape[h.rank - 1] ||
    !shapesEqual(h.shape.slice(0, -1), targets.shape)
  ) {
    throw new ShapeError(
      `${op}: need h [..., D], lmHead [V, D] and targets shaped like h without its last axis; ` +
        `got ${shapes()}`,
    );
  }
  const ignore = o.ignoreIndex ?? -100;
  checkIgnore(op, ignore);
  const chunkBytes = o.chunkBytes ?? LM_HEAD_CHUNK_BYTES;
  if (!(chunkBytes >= 4) || !Number.isFinite(chunkBytes)) {
    throw new RangeError(`${op}: chunkBytes must be at least 4, got ${chunkBytes}`);
  }
  const [v, d] = w.shape;
  const n = targets.size;
  if (v === 0 && n > 0) throw new ShapeError(`${op}: lmHead has no rows (${shapes()})`);
  checkCeLoops(op, v, n);
  return { n, d, v, ignore, chunkBytes };
}

// At least one row or column per chunk, however small the budget.
const chunk = (bytes: number, other: number) => Math.max(1, Math.floor(bytes / (4 * other)));

/** Forward over row chunks: the reduced loss, the target count and the per-row log-sum-exp. */
function forwardPass(
  h: Tensor,
  w: Tensor,
  targets: Tensor,
  c: Checked,
  mode: number,
): { out: Tensor; count: Tensor; lse: Tensor } {
  const { n, d, v, ignore } = c;
  // untracked: the chunk matmuls are internals of this op's single tape node.
  return untracked(() => {
    const h2 = h.view([n, d]);
    const rowLoss = Tensor.empty([n]);
    const lse = Tensor.empty([n]);
    const rows = chunk(c.chunkBytes, v);
    for (let r0 = 0; r0 < n; r0 += rows) {
      const m = Math.min(rows, n - r0);
      const hc = rowsOf(h2, r0, m);
      const logits = matmul(hc, w, { transB: true });
      hc.dispose();
      ceRowLosses("lm_head_rows", logits, targets, rowLoss, lse, { rows: m, v, ignore, off: r0 });
      logits.dispose();
    }
    h2.dispose();
    const out = Tensor.empty([]);
    const count = Tensor.empty([]);
    ceReduce("lm_head_reduce", rowLoss, targets, out, count, { rows: n, v, ignore, mode });
    rowLoss.dispose();
    return { out, count, lse };
  });
}

/** dh and dW by vocabulary blocks, recomputing each block's logits from h and W. */
function backwardPass(
  h: Tensor,
  w: Tensor,
  targets: Tensor,
  c: Checked,
  mode: number,
  lse: Tensor,
  count: Tensor,
  g: Tensor,
): [Tensor, Tensor] {
  const { n, d, v, ignore } = c;
  if (n === 0) return [zeros(h.shape), zeros(w.shape)];
  return untracked(() => {
    const h2 = h.view([n, d]);
    const cols = chunk(c.chunkBytes, n);
    const dW = Tensor.empty([v, d]);
    let dh: Tensor | null = null;
    for (let v0 = 0; v0 < v; v0 += cols) {
      const m = Math.min(cols, v - v0);
      const wb = rowsOf(w, v0, m);
      const dl = matmul(h2, wb, { transB: true });
      // In place: the block's logits become its gradient.
      ceGrad("lm_head_backward", dl, null, { targets, lse, count, g }, {
        rows: n,
        cols: m,
        v,
        v0,
        ignore,
        mode,
      });
      // Block rows of dW are final: written straight into the output, never accumulated.
      const dWb = matmul(dl, h2, { transA: true });
      stridedCopy("lm_head_copy", "scatter", dWb, dW, [m * d], [1], v0 * d);
      dWb.dispose();
      const part = matmul(dl, wb);
      dl.dispose();
      wb.dispose();
      if (dh === null) dh = part;
      else {
        ADD_INPLACE({ part, acc: dh }, { n: dh.size });
        part.dispose();
      }
    }
    h2.dispose();
    const dhOut = dh!.view(h.shape);
    dh!.dispose();
    return [dhOut, dW];
  });
}

/**
 * Cross-entropy of the untied LM head, `crossEntropy(h·lmHeadᵀ, targets)`, as one tape node whose
 * peak memory is one chunk of logits instead of all of them.
 *
 * Shapes: h [..., D] f32, lmHead [V, D] f32, targets [...] (i32 or u32; h's shape without its last
 * axis) → a scalar: the mean over non-ignored targets (0 if there are none) or, with
 * `reduction: "sum"`, their sum. Everything stays on the device (the count too). Targets outside
 * [0, V) that are not `ignoreIndex` give NaN, as in `crossEntropy`.
 *
 * Chunks hold at most `chunkBytes` of f32 logits: forward takes ⌊chunkBytes / 4V⌋ rows at a time,
 * backward ⌊chunkBytes / 4N⌋ vocabulary rows (each at least 1). The VJP recomputes the logits
 * (one extra h·Wᵀ) and returns dh [..., D] and dW [V, D]; targets get no gradient.
 */
export function lmHeadCrossEntropy(
  h: Tensor,
  lmHead: Tensor,
  targets: Tensor,
  opts: LmHeadCrossEntropyOptions = {},
): Tensor {
  const op = "lmHeadCrossEntropy";
  const reduction = opts.reduction ?? "mean";
  if (reduction !== "mean" && reduction !== "sum") {
    throw new ShapeError(`${op}: reduction must be "mean" or "sum", got "${reduction}"`);
  }
  const c = check(op, h, lmHead, targets, opts);
  const mode = CE_MODE[reduction];
  const { out, count, lse } = forwardPass(h, lmHead, targets, c, mode);
  if (isRecording()) {
    recordOp(op, [h, lmHead, targets], out, (g) => {
      const [dh, dW] = backwardPass(h, lmHead, targets, c, mode, lse, count, g);
      return [dh, dW, null];
    }, [lse, count]);
  } else {
    lse.dispose();
    count.dispose();
  }
  return out;
}

/**
 * The sum of the LM head's per-target cross-entropies and the number of non-ignored targets, for
 * token-weighted evaluation across batches without a readback per batch (add the sums and counts
 * on the device, divide once). Same forward and shapes as {@link lmHeadCrossEntropy}; not
 * differentiated (nothing is recorded on a running tape).
 */
export function lmHeadLossSums(
  h: Tensor,
  lmHead: Tensor,
  targets: Tensor,
  opts: LmHeadLossOptions = {},
): LossSums {
  const c = check("lmHeadLossSums", h, lmHead, targets, opts);
  const { out, count, lse } = forwardPass(h, lmHead, targets, c, CE_MODE.sum);
  lse.dispose();
  return { sum: out, count };
}
