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
export {
  BLOCK_LINEARS,
  type BlockLinearName,
  type BlockLinearShape,
  blockLinearShapes,
  checkKind,
  checkRank,
  type LinearMethod,
  METHOD_KINDS,
  sparseNnz,
  validateMethod,
} from "./method.ts";
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
export * from "./linear.ts";
export * from "./llama.ts";
export * from "./memory.ts";
export * from "./refactor.ts";
export * from "./relora.ts";
export * from "./merge.ts";
export * from "./kv_cache.ts";
export * from "./factorize.ts";
