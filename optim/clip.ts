/**
 * Global-norm gradient clipping entirely on the GPU: the norm and the scale stay in device memory,
 * so clipping costs dispatches, never a readback (a sync costs milliseconds: bench/NOTES.md).
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertDType } from "../core/dtype.ts";
import { fmtShape } from "../core/shape.ts";
import { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import { FLOAT_DTYPES } from "./elementwise_kernel.ts";
import { scaleByTensorInPlace } from "./inplace.ts";
import { foldPartials, partialReduction, REDUCE_HELPERS, REDUCE_WG } from "./partial_reduce.ts";
import type { GradientTransformation } from "./transform.ts";

// Sums of squares of every leaf, one partial per chunk, then folded by FINALIZE or ACCUMULATE.
const partialSumsOf = partialReduction("clip_sumsq", "e * e", "sum");

const FINALIZE = defineKernel({
  name: "clip_finalize",
  inputs: { partials: "f32" },
  outputs: { norm: "f32", scale: "f32" },
  uniforms: { count: "u32", maxNorm: "f32" },
  grid: { workgroupSize: [REDUCE_WG], builtins: { lid: "local_invocation_id" } },
  helpers: REDUCE_HELPERS,
  body: `${foldPartials("sum")}
  if (lid.x == 0u) {
    let nrm = sqrt(acc[0]);
    norm[0] = nrm;
    // torch.nn.utils.clip_grad_norm_: coefficient max/(norm + 1e-6), clamped to 1.
    scale[0] = min(1.0, u.maxNorm / (nrm + 1e-6));
  }`,
});

const ACCUMULATE = defineKernel({
  name: "clip_accumulate",
  inputs: { partials: "f32" },
  outputs: { into: "f32" },
  uniforms: { count: "u32" },
  grid: { workgroupSize: [REDUCE_WG], builtins: { lid: "local_invocation_id" } },
  helpers: REDUCE_HELPERS,
  body: `${foldPartials("sum")}
  if (lid.x == 0u) { into[0] = into[0] + acc[0]; }`,
});

/**
 * The global L2 norm of all gradients and the clip scale min(1, maxNorm / (norm + 1e-6)), both as
 * one-element tensors computed on the GPU (two dispatch rounds, no readback).
 */
export function globalNormAndScale(
  grads: TensorTree,
  maxNorm = Infinity,
): { norm: Tensor; scale: Tensor } {
  const leaves = tree.flatten(grads);
  assertDType("globalNorm", FLOAT_DTYPES, ...leaves);
  const { partials, count: total } = partialSumsOf(leaves);
  const norm = Tensor.empty([1]);
  const scale = Tensor.empty([1]);
  FINALIZE({ partials, norm, scale }, {
    count: total,
    maxNorm: Number.isFinite(maxNorm) ? maxNorm : 3.4e38,
  }, [1]);
  partials.dispose();
  return { norm, scale };
}

/**
 * Adds the sum of squares of every element of `grads` to `into[0]` (a one-element f32 tensor),
 * on the GPU with no readback: a global norm gathered piece by piece, e.g. from gradients that
 * per-layer updates see one at a time (or a block of rows at a time). √into[0] is the norm.
 */
export function addSumOfSquares(grads: TensorTree, into: Tensor): void {
  if (into.size !== 1 || into.dtype !== "f32") {
    throw new RangeError(
      `addSumOfSquares: into must be a one-element f32 tensor, got ${into.dtype} ${
        fmtShape(into.shape)
      }`,
    );
  }
  const leaves = tree.flatten(grads);
  assertDType("addSumOfSquares", FLOAT_DTYPES, ...leaves);
  const { partials, count } = partialSumsOf(leaves);
  ACCUMULATE({ partials, into }, { count }, [1]);
  partials.dispose();
}

/** The global L2 norm of a tree of gradients, as a one-element tensor (no readback). */
export function globalNorm(grads: TensorTree): Tensor {
  const { norm, scale } = globalNormAndScale(grads);
  scale.dispose();
  return norm;
}

/** State of {@link clipByGlobalNorm}: the latest pre-clip global norm, if asked to keep it. */
export interface ClipState {
  /** One-element tensor with the last step's global norm (for logging; read it when convenient). */
  norm: Tensor | null;
}

/**
 * Scales all updates by min(1, maxNorm / (‖g‖ + 1e-6)), like `torch.nn.utils.clip_grad_norm_`,
 * with the norm and the scale computed on the GPU and applied in place (no readback). With
 * `keepNorm`, the state holds the pre-clip norm of the latest step as a tensor (the previous one
 * is disposed), for logging without an extra sync. The norm spans every update it is given, so it
 * must not run inside `perLayer`.
 */
export function clipByGlobalNorm(
  maxNorm: number,
  opts: { keepNorm?: boolean } = {},
): GradientTransformation<ClipState> {
  if (!(maxNorm > 0)) throw new RangeError(`clipByGlobalNorm: maxNorm must be > 0, got ${maxNorm}`);
  return {
    init: () => ({ norm: null }),
    update(updates, state) {
      const { norm, scale } = globalNormAndScale(updates, maxNorm);
      const clipped = tree.map(updates, (u) => scaleByTensorInPlace(u, scale));
      scale.dispose();
      state.norm?.dispose();
      if (!opts.keepNorm) norm.dispose();
      return { updates: clipped, state: { norm: opts.keepNorm ? norm : null } };
    },
  };
}
