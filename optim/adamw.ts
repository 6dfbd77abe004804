/**
 * Adam's moments as a transform (`scaleByAdam`), and AdamW as one fused kernel per parameter
 * (`adamw`): the fast path of `chain(scaleByAdam(), addDecayedWeights(λ), scaleByLearningRate(lr))`.
 * Moments are f32; gradients and parameters may be f32 or bf16.
 * @module
 */
import type { Tensor } from "../core/tensor.ts";
import {
  type AdamOptions,
  adamTransforms,
  type AdamWOptions,
  type MomentsState,
} from "./adam_core.ts";
import { F32_MOMENTS } from "./adam_f32.ts";
import type { GradientTransformation } from "./transform.ts";

export type { AdamOptions, AdamWOptions, MomentsState } from "./adam_core.ts";

/** State of {@link scaleByAdam} and {@link adamw}: the update count and f32 moments per parameter. */
export type AdamState = MomentsState<Tensor>;

const F32_ADAM = adamTransforms(F32_MOMENTS, ["scaleByAdam", "adamw"]);

/**
 * Adam's direction, as optax's `scale_by_adam`: m ← β1m + (1−β1)g, v ← β2v + (1−β2)g², update =
 * m̂ / (√v̂ + eps) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t), t counted in the state. One dispatch per
 * parameter, in place; needs no params (so it runs inside `galore`).
 */
export function scaleByAdam(opts: AdamOptions = {}): GradientTransformation<AdamState> {
  return F32_ADAM.direction(opts);
}

/**
 * AdamW as in `torch.optim.AdamW`, fused: update = −lr·(m̂/(√v̂ + eps) + λ·p) with the lr schedule
 * evaluated at the update count, so `applyUpdates` gives p(1 − lr·λ) − lr/(1−β1^t)·m /
 * (√v/√(1−β2^t) + eps). Equal, up to f32 rounding, to `chain(scaleByAdam, addDecayedWeights(λ),
 * scaleByLearningRate(lr))` in one dispatch per parameter instead of three. Needs `params` when
 * λ > 0.
 */
export function adamw(opts: AdamWOptions): GradientTransformation<AdamState> {
  return F32_ADAM.fused(opts);
}
