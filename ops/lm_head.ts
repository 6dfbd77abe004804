/**
 * The untied LM head fused with softmax cross-entropy, `CE(h·Wᵀ, targets)`, computed in
 * vocabulary blocks so that the [N, V] logits never exist whole (at N = 2048 tokens and V = 32000
 * they take 262 MB and overflow a 128 MiB storage binding), and W may be of any size (at 1B and
 * 7B it is itself over one binding).
 *
 * Each block of W is a zero-copy row window `W.rows(v0, m)`. Forward folds each block's logits
 * into an online log-sum-exp per row (running max and sum, plus the target's logit). Backward
 * recomputes each block's logits: the block's dW rows are final at once and are written straight
 * into the same rows of dW (no [V, D] accumulator, no copy; or handed to a per-layer update one
 * block at a time, see `VjpContext.gradRows`), and only dh [N, D], small next to W, is accumulated
 * across blocks. The tape keeps the inputs, the per-row log-sum-exp and the target count, nothing
 * of size V·N. W may be bf16: each block is widened for its products, and dW is bf16 too.
 * @module
 */
import { convert, convertInto } from "../core/convert.ts";
import { assertDType, bytesPerElement } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { type GradRows, isRecording, recordOp, untracked } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { forEachRowWindow, maxWindowBytes, rowAlignment } from "../core/windows.ts";
import {
  CE_MODE,
  ceBlock,
  ceFinish,
  ceGrad,
  ceReduce,
  checkCeLoops,
  checkIgnore,
  checkTargets,
} from "./ce_kernels.ts";
import { matmul, matmulInto } from "./matmul.ts";
import { addInto } from "./strided.ts";

/** Default bytes of one block of logits ([N, m] for m vocabulary rows). */
export const LM_HEAD_CHUNK_BYTES: number = 32 * 1024 * 1024;

/**
 * Bytes of one block of W and of dW as f32 ([m, D]). Smaller than the logits' bound: under
 * per-layer updates a block of dW (with, for bf16, W's widened block and dW before rounding) is
 * the step's peak above steady memory; 8 MiB blocks still make products of 2048 rows at D = 1024.
 */
export const LM_HEAD_WEIGHT_BLOCK_BYTES: number = 8 * 1024 * 1024;

/** Options of {@link lmHeadCrossEntropy} and {@link lmHeadLossSums}. */
export interface LmHeadLossOptions {
  /** Targets equal to this value contribute no loss, no gradient and no count (default -100). */
  ignoreIndex?: number;
  /** Upper bound on the bytes of one block of f32 logits (default {@link LM_HEAD_CHUNK_BYTES}). */
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

interface Checked {
  n: number;
  d: number;
  v: number;
  ignore: number;
  /** Vocabulary rows per block. */
  block: number;
}

function check(op: string, h: Tensor, w: Tensor, targets: Tensor, o: LmHeadLossOptions): Checked {
  const shapes = () =>
    `h ${fmtShape(h.shape)}, lmHead ${fmtShape(w.shape)}, targets ${fmtShape(targets.shape)}`;
  assertDType(op, ["f32"], ["h", h]);
  assertDType(op, ["f32", "bf16"], ["lmHead", w]);
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
  return { n, d, v, ignore, block: vocabBlock(n, d, v, w, chunkBytes) };
}

/**
 * Vocabulary rows per block: logits [N, m] within `chunkBytes`, the block of W and of dW (as f32)
 * within that, {@link LM_HEAD_WEIGHT_BLOCK_BYTES} and one binding window; block starts aligned
 * for views of W and dW. At least one aligned group of rows, so a tiny `chunkBytes` is a soft
 * bound.
 */
function vocabBlock(n: number, d: number, v: number, w: Tensor, chunkBytes: number): number {
  // dW's block bounded too: under per-layer updates one block of it is all of dW that exists (see
  // VjpContext.gradRows), and a bf16 block is widened to f32 (W's and dW's) before it is used.
  const bytes = Math.min(chunkBytes, maxWindowBytes());
  const cols = Math.min(
    Math.floor(bytes / (4 * Math.max(n, 1))),
    Math.floor(Math.min(bytes, LM_HEAD_WEIGHT_BLOCK_BYTES) / (4 * Math.max(d, 1))),
  );
  if (cols >= v) return Math.max(v, 1);
  const step = rowAlignment(d * bytesPerElement(w.dtype));
  return Math.max(step, Math.floor(cols / step) * step);
}

/** Rows [v0, v0 + m) of W as f32: a view, or for bf16 a widened copy of the view. */
function blockOf(w: Tensor, v0: number, m: number): Tensor {
  const view = m === w.shape[0] ? w.view(w.shape) : w.rows(v0, m);
  if (view.dtype === "f32") return view;
  const wide = convert(view, "f32");
  view.dispose();
  return wide;
}

/** Forward over vocabulary blocks: the reduced loss, the target count and the per-row lse. */
function forwardPass(
  h: Tensor,
  w: Tensor,
  targets: Tensor,
  c: Checked,
  mode: number,
): { out: Tensor; count: Tensor; lse: Tensor } {
  const { n, d, v, ignore } = c;
  // untracked: the block matmuls are internals of this op's single tape node.
  return untracked(() => {
    const h2 = h.view([n, d]);
    const state = { mx: Tensor.empty([n]), se: Tensor.empty([n]), tl: Tensor.empty([n]) };
    if (n > 0) {
      forEachRowWindow(v, c.block, (v0, m) => {
        const wb = blockOf(w, v0, m);
        const logits = matmul(h2, wb, { transB: true });
        wb.dispose();
        ceBlock("lm_head_block", logits, targets, state, { rows: n, cols: m, v0, first: v0 === 0 });
        logits.dispose();
      });
    }
    h2.dispose();
    const rowLoss = Tensor.empty([n]);
    const lse = Tensor.empty([n]);
    ceFinish("lm_head_finish", state, targets, rowLoss, lse, { rows: n, v, ignore });
    for (const t of Object.values(state)) t.dispose();
    const out = Tensor.empty([]);
    const count = Tensor.empty([]);
    ceReduce("lm_head_reduce", rowLoss, targets, out, count, { rows: n, v, ignore, mode });
    rowLoss.dispose();
    return { out, count, lse };
  });
}

/**
 * dh and dW by vocabulary blocks, recomputing each block's logits from h and W. With `rows`, each
 * block of dW goes to it as soon as W's block has been read for the last time, and dW is null.
 */
function backwardPass(
  h: Tensor,
  w: Tensor,
  targets: Tensor,
  c: Checked,
  mode: number,
  lse: Tensor,
  count: Tensor,
  g: Tensor,
  rows: GradRows | null,
): [Tensor, Tensor | null] {
  const { n, d, v, ignore } = c;
  if (n === 0) return [zeros(h.shape), zeros(w.shape, w.dtype)];
  return untracked(() => {
    const h2 = h.view([n, d]);
    const dW = rows ? null : Tensor.empty([v, d], w.dtype);
    let dh: Tensor | null = null;
    forEachRowWindow(v, c.block, (v0, m) => {
      const wb = blockOf(w, v0, m);
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
      // The block's rows of dW are final: written straight into them (or a block of their own
      // for `rows`), never accumulated.
      const dWb = !dW
        ? Tensor.empty([m, d], w.dtype)
        : m === v
        ? dW.view(dW.shape)
        : dW.rows(v0, m);
      if (dWb.dtype === "f32") {
        matmulInto(dl, h2, dWb, { transA: true });
      } else {
        const wide = matmul(dl, h2, { transA: true });
        convertInto(wide, dWb);
        wide.dispose();
      }
      const part = matmul(dl, wb);
      dl.dispose();
      wb.dispose();
      // W's rows v0.. are read for the last time above: the taker may now update them in place.
      if (rows) rows.take(dWb, v0);
      else dWb.dispose();
      if (dh === null) dh = part;
      else {
        addInto(part, dh);
        part.dispose();
      }
    });
    rows?.end();
    h2.dispose();
    const dhOut = dh!.view(h.shape);
    dh!.dispose();
    return [dhOut, dW];
  });
}

/**
 * Cross-entropy of the untied LM head, `crossEntropy(h·lmHeadᵀ, targets)`, as one tape node whose
 * peak memory is one block of logits instead of all of them.
 *
 * Shapes: h [..., D] f32, lmHead [V, D] f32 or bf16, targets [...] (i32 or u32; h's shape without
 * its last axis) → a scalar: the mean over non-ignored targets (0 if there are none) or, with
 * `reduction: "sum"`, their sum. Everything stays on the device (the count too). Targets outside
 * [0, V) that are not `ignoreIndex` give NaN, as in `crossEntropy`.
 *
 * Blocks take ⌊chunkBytes / 4N⌋ vocabulary rows (fewer if W's block as f32 would exceed
 * `chunkBytes`, {@link LM_HEAD_WEIGHT_BLOCK_BYTES} or one storage binding; rounded down to the
 * offset alignment of W's rows, at least one aligned group), in forward and backward alike; a
 * single block gives `crossEntropy`'s loss to the bit. The VJP recomputes the logits (one extra
 * h·Wᵀ) and returns dh [..., D] and dW [V, D] in lmHead's dtype, or, when the backward's caller
 * takes lmHead's gradient by rows (`VjpContext.gradRows`, e.g. per-layer updates) and its blocks
 * line up with these, hands dW over block by block (the same bits) so that no [V, D] gradient
 * exists; targets get no gradient.
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
    recordOp(op, [h, lmHead, targets], out, (g, ctx) => {
      // dW by blocks of rows when the backward's caller takes them and they line up with ours
      // (the same blocks either way, so the same bits).
      const offer = c.n > 0 ? ctx.gradRows(lmHead) : null;
      const rows = offer && (c.block % offer.multiple === 0 || c.block >= c.v) ? offer : null;
      const [dh, dW] = backwardPass(h, lmHead, targets, c, mode, lse, count, g, rows);
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
