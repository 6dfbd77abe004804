/**
 * Optimizers as update transforms in optax's shape: `{ init, update(updates, state, params) }`
 * over trees, composed with `chain`, applied with `applyUpdates` (the only place parameters
 * change; it and every transform work in place on the buffers they consume). Building blocks:
 * `scaleByAdam`, `addDecayedWeights`, `scaleByLearningRate` (schedules of the update count),
 * `scale`, `clipByGlobalNorm` (on the GPU, no readback), `galore` and `fira` around any inner
 * transform, `apollo` / `apolloMini` (random projections, no SVD),
 * `partition` by path, `multiSteps` (gradient accumulation), `perLayer` (per-layer updates
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
// The public `optim` namespace of mod.ts, name by name; helpers the transforms share (in-place
// kernels, projection internals) stay in their files.
export {
  applyUpdates,
  chain,
  type GradientTransformation,
  type MaybePromise,
  type RowUpdate,
  type Schedule,
  scheduleAt,
  type TransformResult,
} from "./transform.ts";
export { addDecayedWeights, scale, scaleByLearningRate, type ScheduleState } from "./scale.ts";
export {
  quickRecovery,
  type QuickRecoveryOptions,
  warmupCosine,
  warmupCosineMultiplier,
  type WarmupCosineOptions,
} from "./schedule.ts";

// Adam and its 8-bit form
export {
  type AdamOptions,
  type AdamState,
  adamw,
  type AdamWOptions,
  type MomentsState,
  scaleByAdam,
} from "./adamw.ts";
export {
  type Adam8bitState,
  adamw8bit,
  isQuantized,
  type Moment8bit,
  type QuantizedMoment,
  scaleByAdam8bit,
} from "./adam8bit.ts";

// Around other transforms
export { addSumOfSquares, clipByGlobalNorm, type ClipState, globalNorm } from "./clip.ts";
export { partition, type PartitionState } from "./partition.ts";
export { multiSteps, type MultiStepsState } from "./multi_steps.ts";
export {
  type PerLayer,
  perLayer,
  type PerLayerStartOptions,
  type PerLayerStep,
} from "./per_layer.ts";

// Low-rank projections of the gradient: GaLore, Fira, APOLLO
export {
  galore,
  type GaLoreOptions,
  type GaLoreState,
  PROJECTOR_METHODS,
  type ProjectorMethod,
  type ProjectorRefresh,
} from "./galore.ts";
export { fira, type FiraOptions, type FiraState } from "./fira.ts";
export {
  apollo,
  apolloMini,
  type ApolloOptions,
  type ApolloState,
  GRANULARITIES,
  type Granularity,
} from "./apollo.ts";
export {
  type Channels,
  type LimiterOptions,
  limitNormGrowth,
  type RatioLimit,
  scaleByNormRatio,
} from "./norm_scaling.ts";

// Spike-aware Adam: SPAM and Stable-SPAM
export { scaleBySpam, type SpamOptions, type SpamState } from "./spam.ts";
export { scaleByStableSpam, type StableSpamOptions, type StableSpamState } from "./stable_spam.ts";

// Random projections (GoLore) and the low-rank Riemannian optimizer (LoRO)
export { golore, type GoLoreOptions } from "./golore.ts";
export { loro, type LoroFactors, type LoroOptions, type LoroState } from "./loro.ts";
