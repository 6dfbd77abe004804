/**
 * LLaMA model configs, block-linear parameterizations (dense, low-rank, SLTrain, ReLoRA) and
 * analytic parameter and memory estimates, merging into dense weights, factorizing dense weights,
 * and KV-cached decoding.
 * @module
 */
export {
  headDim,
  type LlamaConfig,
  parseConfig,
  type PresetName,
  PRESETS,
  validateConfig,
  withVocab,
} from "./config.ts";
export { ConfigError } from "./errors.ts";

// The LLaMA model
export {
  type Batch,
  type BlockLinear,
  blockLinears,
  disposeModel,
  evalLossSums,
  forward,
  hiddenStates,
  type HiddenStatesOptions,
  IGNORE_INDEX,
  initLlama,
  type InitLlamaOptions,
  type LayerBuffers,
  type LayerParams,
  type Llama,
  type LlamaBuffers,
  type LlamaModel,
  type LlamaParams,
  loss,
  type LossOptions,
  mapLinears,
  type ParamEntry,
  paramPaths,
  type ParamRole,
} from "./llama.ts";
export { disposeCache, extend, type Extended, type KVCache } from "./kv_cache.ts";

// The block linears' parameterizations
export {
  BLOCK_LINEARS,
  type BlockLinearName,
  type BlockLinearShape,
  blockLinearShapes,
  type LinearMethod,
  METHOD_KINDS,
  sparseNnz,
  validateMethod,
} from "./method.ts";
export {
  applyLinear,
  type DenseLinearParams,
  initLinear,
  type InitLinearOptions,
  linearBuffer,
  type LinearInit,
  type LinearParams,
  linearScale,
  type LowRankLinearParams,
  type ReLoRALinearParams,
  type SLTrainLinearParams,
  type WeightDType,
} from "./linear.ts";

// Between parameterizations: refactorization, ReLoRA merges, dense copies, factorizing
export { type Refactored, refactorFactors, refactorLlama } from "./refactor.ts";
export { type Merged, mergeRelora, type MergeReloraOptions, reloraMerge } from "./relora.ts";
export { type DenseCopy, denseModel, denseWeight } from "./merge.ts";
export { factorize, type Factors } from "./factorize.ts";

// Sizes: parameter counts and memory, estimated and measured
export {
  ACCOUNTING,
  type Accounting,
  type ByteSizes,
  countParams,
  estimateMemory,
  type MemoryEstimate,
  type OptimizerSpec,
  type ParamCount,
  type ScalingOptimizerSpec,
  type TrainingSetup,
} from "./estimate.ts";
export { type MeasuredMemory, measureMemory, type MeasureMemoryOptions } from "./memory.ts";
