/**
 * Knobs that force one kernel variant over the per-adapter choice, for tests, benchmarks and
 * trying new hardware; a run should keep the defaults. Each setter returns the previous setting,
 * so the caller can restore it.
 * @module
 */
import {
  type MatmulFamily,
  setMatmulFamily,
  setMatmulSplitK,
  setMatmulTextureThreshold,
} from "./ops/matmul.ts";
import { type FusedTarget, setFusedTarget } from "./ops/fused_target.ts";
import { setMultiTensorAdam } from "./optim/adam_f32.ts";

export type { FusedTarget, MatmulFamily };

/** The knobs of {@link tuning}. */
export interface Tuning {
  /**
   * Forces a matmul kernel family for every later matmul where the shape and device allow it;
   * `"auto"` (the default) restores the per-adapter table.
   */
  setMatmulFamily(family: MatmulFamily): MatmulFamily;
  /** The number of workgroups split-K aims for (default: the number of cores; 0: no split-K). */
  setMatmulSplitK(minWorkgroups: number): number;
  /**
   * The minimum 2·batch·M·N·K at which a matmul on a software adapter reads A through a texture
   * (`0`: whenever the shape allows it, `Infinity`: never).
   */
  setMatmulTextureThreshold(minFlops: number): number;
  /**
   * Allows (default) or forbids the multi-tensor AdamW kernel (each parameter then takes its own
   * dispatch; the same bits either way).
   */
  setMultiTensorAdam(enabled: boolean): boolean;
  /**
   * The kernel configuration of the fused ops (flash attention, SwiGLU, add + RMSNorm): `"gpu"`,
   * `"cpu"` (software adapters) or `"auto"` (the device's, the default).
   */
  setFusedTarget(target: FusedTarget): FusedTarget;
}

/**
 * Kernel-variant knobs (see {@link Tuning}).
 *
 * @example
 * ```ts
 * const prev = tuning.setMatmulFamily("register");
 * try {
 *   // ... time or test the register-tiled kernels
 * } finally {
 *   tuning.setMatmulFamily(prev);
 * }
 * ```
 */
export const tuning: Tuning = Object.freeze({
  setMatmulFamily,
  setMatmulSplitK,
  setMatmulTextureThreshold,
  setMultiTensorAdam,
  setFusedTarget,
});
