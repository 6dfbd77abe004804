/**
 * Optimizers as pure `{ init, update }` transforms with fused WGSL kernels: AdamW, GaLore around
 * any inner optimizer, global-norm clipping, `chain` and `partition`, LR schedules, momentum reset,
 * and low-rank factor maintenance (refactorization, ReLoRA merge).
 *
 * @example
 * ```ts
 * const lr = warmupCosine({ lr: 3e-3, warmup: 1100, total: 11000 });
 * const opt = chain(clipByGlobalNorm(1), adamw({ lr }));
 * let state = opt.init(params);
 * // each step; update donates (disposes) the old params and state:
 * ({ params, state } = await opt.update(grads, state, params, step));
 * ```
 * @module
 */
export * from "./transform.ts";
export * from "./adamw.ts";
export * from "./schedule.ts";
export * from "./clip.ts";
export * from "./galore.ts";
export * from "./refactor.ts";
export * from "./svd.ts";
