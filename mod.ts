/**
 * sltrain: a functional tensor library on WebGPU for pretraining LLaMA-style language models with
 * SLTrain (sparse plus low-rank weights).
 *
 * Tensors are immutable handles to device memory; ops are pure functions that dispatch WGSL kernels
 * into one command stream; gradients come from an explicit tape; optimizers are optax-shaped
 * update transforms composed with `chain` and applied with `applyUpdates`.
 *
 * The top level holds the tensor library: device, tensors, autodiff, kernels, ops. Namespaces hold
 * the rest: `optim` (update transforms, in optax's shape), `models` (LLaMA, its linear
 * parameterizations, memory estimates), `linalg` (float64 CPU linear algebra), `tree` (tensor
 * trees) and `tuning` (kernel-variant knobs for tests and benchmarks).
 *
 * @example
 * ```ts
 * import { init, tensor, valueAndGrad, mul, sum, exp } from "jsr:@sltrain/sltrain";
 *
 * await init();
 * const x = tensor([[1, 2], [3, 4]]);
 * const f = valueAndGrad((p: typeof x) => sum(mul(exp(p), p)));
 * const { value, grads } = f(x);
 * console.log(await value.item(), await grads.toArray()); // d/dx x·e^x = (1 + x)·e^x
 * ```
 *
 * @example Training: a chained transform, `update`, then `applyUpdates`
 * ```ts
 * import { optim, valueAndGrad } from "jsr:@sltrain/sltrain";
 * const { adamw, applyUpdates, chain, clipByGlobalNorm, warmupCosine } = optim;
 *
 * const opt = chain(clipByGlobalNorm(1), adamw({ lr: warmupCosine({ lr: 3e-3, warmup: 100, total: 1000 }) }));
 * let state = opt.init(params);
 * for (let step = 0; step < 1000; step++) {
 *   const { value, grads } = valueAndGrad(lossOf)(params);
 *   const r = await opt.update(grads, state, params); // consumes grads and the old state
 *   state = r.state;
 *   params = applyUpdates(params, r.updates); // in place on the old parameters' buffers
 *   value.dispose();
 * }
 * ```
 * @module
 */

// The public API, name by name, in groups. A new op goes in its group here; a new optimizer or
// model piece goes in optim/mod.ts or models/mod.ts and appears as `optim.x` / `models.x`.

// --- Device ---
export {
  type AdapterKind,
  type DeviceInfo,
  deviceInfo,
  init,
  type InitOptions,
} from "./core/device.ts";

// --- Tensors: creation, lifetimes, reading back ---
export {
  arange,
  full,
  keep,
  type NestedArray,
  ones,
  randomNormal,
  type RandomOptions,
  randomUniform,
  readAll,
  scope,
  Tensor,
  tensor,
  zeros,
} from "./core/tensor.ts";
export type { DType, TensorData } from "./core/dtype.ts";
export type { Shape } from "./core/shape.ts";
export { Rng, type RngState } from "./core/rng.ts";
export * as tree from "./core/tree.ts";
export type { TensorTree } from "./core/tree.ts";

// --- Memory ---
export { donate } from "./core/donate.ts";
export {
  emptyPool,
  type MemoryStats,
  memoryStats,
  resetPeakBytes,
  Storage,
} from "./core/memory.ts";

// --- Errors ---
export {
  DeviceError,
  DeviceLimitError,
  DisposedError,
  DTypeError,
  GradientError,
  NonFiniteError,
  ShapeError,
  SLTrainError,
} from "./core/errors.ts";

// --- Autodiff ---
export {
  type BackwardOptions,
  type GradRows,
  isRecording,
  type MultiVjp,
  recompute,
  recordMultiOp,
  recordOp,
  Tape,
  untracked,
  valueAndGrad,
  type Vjp,
  type VjpContext,
} from "./core/tape.ts";

// --- Kernels: declaring your own, syncing, profiling, tuning ---
export {
  type Bindable,
  type BindingArgs,
  type Builtin,
  type CustomGrid,
  defineKernel,
  type Grid,
  type Kernel,
  kernelFamily,
  type KernelSpec,
  type StorageType,
  type TextureType,
  type UniformArgs,
  type UniformScalar,
  type UniformType,
  type Workgroups,
} from "./core/define_kernel.ts";
export { assertDType, assertF32 } from "./core/dtype.ts";
export {
  type Binding,
  cacheStats,
  dispatchStats,
  type ProfileEntry,
  startProfile,
  stopProfile,
  sync,
} from "./core/kernel.ts";
export { type FusedTarget, type MatmulFamily, type Tuning, tuning } from "./tuning.ts";

// --- Ops: elementwise, reductions, shapes ---
export {
  add,
  addScalar,
  copy,
  div,
  equal,
  exp,
  greater,
  log,
  mapN,
  mul,
  mulScalar,
  neg,
  powScalar,
  relu,
  rsqrt,
  sigmoid,
  silu,
  sqrt,
  square,
  sub,
  where,
} from "./ops/elementwise.ts";
export { cast } from "./ops/cast.ts";
export { flagNonFinite } from "./ops/finite.ts";
export { max, mean, sum, sumTo } from "./ops/reduce.ts";
export {
  broadcastTo,
  concat,
  expandDims,
  permute,
  reshape,
  slice,
  squeeze,
  stack,
  transpose,
} from "./ops/shape.ts";

// --- Ops: matmul, sparse, the block linears ---
export { matmul, matmulInto, type MatmulOptions } from "./ops/matmul.ts";
export { gatherFlat, scatterAdd, scatterToDense, sddmm, type SddmmOptions } from "./ops/sparse.ts";
export {
  lowRankLinear,
  sampleSupport,
  sltrainLinear,
  type SLTrainLinearOptions,
  type SLTrainPath,
  sltrainPath,
} from "./ops/sltrain_linear.ts";
export { reloraLinear } from "./ops/relora_linear.ts";

// --- Ops: the transformer's ---
export { checkIds, embedding } from "./ops/embedding.ts";
export { logSoftmax, softmax } from "./ops/softmax.ts";
export {
  countTargets,
  crossEntropy,
  type CrossEntropyOptions,
  type Reduction,
} from "./ops/cross_entropy.ts";
export {
  LM_HEAD_CHUNK_BYTES,
  LM_HEAD_WEIGHT_BLOCK_BYTES,
  lmHeadCrossEntropy,
  type LmHeadCrossEntropyOptions,
  type LmHeadLossOptions,
  lmHeadLossSums,
  type LossSums,
} from "./ops/lm_head.ts";
export { rmsNorm } from "./ops/rmsnorm.ts";
export { type AddRmsNorm, addRmsNorm } from "./ops/add_rms_norm.ts";
export { rope, ropeFrequencies, type RopeOptions } from "./ops/rope.ts";
export { causalSelfAttention, causalSoftmax } from "./ops/attention.ts";
export {
  flashAttention,
  type FlashAttentionOptions,
  MAX_ATTENTION_HEAD_DIM,
} from "./ops/flash_attention.ts";
export { swiglu } from "./ops/swiglu.ts";

// --- Namespaces ---
export * as linalg from "./ops/linalg.ts";
export * as models from "./models/mod.ts";
export * as optim from "./optim/mod.ts";
// The types of a model's data, also at the top level: `/io` and `/files` take and return them.
export type { LlamaConfig } from "./models/config.ts";
export type {
  LayerBuffers,
  LayerParams,
  LlamaBuffers,
  LlamaModel,
  LlamaParams,
} from "./models/llama.ts";
export type { BlockLinearName, LinearMethod } from "./models/method.ts";
export type {
  DenseLinearParams,
  LinearParams,
  LowRankLinearParams,
  ReLoRALinearParams,
  SLTrainLinearParams,
} from "./models/linear.ts";
