/**
 * All ops: pure tensor functions, each with its kernel(s) and VJP in one file per family.
 * @module
 */
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./softmax.ts";
export * from "./embedding.ts";
export * from "./cross_entropy.ts";
export * from "./rmsnorm.ts";
export * from "./rope.ts";
export * from "./shape.ts";
export * from "./sparse.ts";
export * from "./matmul.ts";
export * from "./attention.ts";
export * from "./flash_attention.ts";
export * from "./fused_target.ts";
export * from "./swiglu.ts";
export * from "./add_rms_norm.ts";
export * from "./sltrain_linear.ts";
export * from "./relora_linear.ts";
export * from "./svd.ts";
export * from "./lm_head.ts";
export * from "./cast.ts";
export * from "./finite.ts";
