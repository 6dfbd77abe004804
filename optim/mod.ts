/**
 * Optimizers as update transforms in optax's shape: `{ init, update(updates, state, params) }`
 * over trees, composed with `chain`, applied with `applyUpdates` (the only place parameters
 * change; it and every transform work in place on the buffers they consume). Building blocks:
 * `scaleByAdam`, `addDecayedWeights`, `scaleByLearningRate` (schedules of the update count),
 * `scale`, `clipByGlobalNorm` (on the GPU, no readback), `galore` and `fira` around any inner
 * transform, `apollo` / `apolloMini` (random projections, no SVD),
 * `partition` by path, `multiSteps` (gradient accumulation), `perParameter` (per-layer updates
 * during backward); `adamw` is the fused one-kernel form of
 * `chain(scaleByAdam(), addDecayedWeights(λ), scaleByLearningRate(lr))`, and `adamw8bit` /
 * `scaleByAdam8bit` the same with 8-bit block-quantized moments.
 *
 * @example
 * ```ts
 * const lr = warmupCosine({ lr: 3e-3, warmup: 100, total: 1000 });
 * const opt = chain(clipByGlobalNorm(1), adamw({ lr, weightDecay: 0.1 }));
 * let state = opt.init(params);
 * // each step (update and applyUpdates consume what they are given):
 * const { value, grads } = valueAndGrad(lossOf)(params);
 * const r = await opt.update(grads, state, params);
 * state = r.state;
 * params = applyUpdates(params, r.updates);
 * ```
 * @module
 */
export * from "./transform.ts";
export * from "./inplace.ts";
export * from "./scale.ts";
export * from "./adamw.ts";
export * from "./adam8bit.ts";
export * from "./schedule.ts";
export * from "./clip.ts";
export * from "./galore.ts";
export * from "./partition.ts";
export * from "./multi_steps.ts";
export * from "./per_parameter.ts";
export {
  channelNorms,
  type Channels,
  type LimiterOptions,
  limitNormGrowth,
  NORM_EPS,
  normRatioInPlace,
  type RatioLimit,
  scaleByNormRatio,
  scaleChannelsInPlace,
} from "./norm_scaling.ts";
export * from "./fira.ts";
export * from "./apollo.ts";
export * from "./spam.ts";
export * from "./stable_spam.ts";
export * from "./golore.ts";
export * from "./loro.ts";
