/**
 * sltrain: a functional tensor library on WebGPU for pretraining LLaMA-style language models with
 * SLTrain (sparse plus low-rank weights).
 *
 * Tensors are immutable handles to device memory; ops are pure functions that dispatch WGSL kernels
 * into one command stream; gradients come from an explicit tape; optimizers are optax-shaped
 * update transforms composed with `chain` and applied with `applyUpdates`.
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
export {
  type AdapterKind,
  type DeviceInfo,
  deviceInfo,
  init,
  type InitOptions,
} from "./core/device.ts";
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
export { assertDType, assertF32, type DType, type TensorData } from "./core/dtype.ts";
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
export {
  type Binding,
  cacheStats,
  dispatch,
  dispatchStats,
  gated,
  type KernelCall,
  type ProfileEntry,
  startProfile,
  stopProfile,
  sync,
} from "./core/kernel.ts";
export {
  emptyPool,
  type MemoryStats,
  memoryStats,
  resetPeakBytes,
  Storage,
} from "./core/memory.ts";
export { donate, inPlaceWindow, ownedAlone } from "./core/donate.ts";
export { Rng, type RngState } from "./core/rng.ts";
export type { Shape } from "./core/shape.ts";
export {
  type BackwardOptions,
  type GradRows,
  isRecording,
  type MultiVjp,
  recompute,
  recordMultiOp,
  recordOp,
  Tape,
  type TensorTree,
  untracked,
  valueAndGrad,
  type Vjp,
  type VjpContext,
} from "./core/tape.ts";
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
export * as tree from "./core/tree.ts";
export * from "./ops/mod.ts";
export * from "./models/mod.ts";
export * from "./optim/mod.ts";
