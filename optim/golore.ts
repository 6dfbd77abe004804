/**
 * GoLore (He et al. 2024, "Subspace Optimization for Large Language Models with Convergence
 * Guarantees") as a transform: GaLore whose projectors are random — the orthonormalized span of a
 * Gaussian matrix, drawn afresh at every refresh — from a chosen step on, and GaLore's SVD
 * projectors before it. Random subspaces keep the projected gradient an unbiased estimate of the
 * full one, which SVD subspaces of a noisy gradient do not; the benchmark's code (OptimAI-Lab
 * Memory_Efficient_Pretraining, `pt_golore`) switches at a fraction `rand_ratio` of the run, and its
 * default (−1) means random from the first step.
 * @module
 */
import { galore, type GaLoreOptions, type GaLoreState, type ProjectorMethod } from "./galore.ts";
import type { GradientTransformation } from "./transform.ts";

/** Options of {@link golore}: GaLore's, plus when the projections turn random. */
export interface GoLoreOptions extends Omit<GaLoreOptions, "projector"> {
  /** First update count whose refresh draws a random projector; default 0 (always random). */
  randomFrom?: number;
  /** How refreshes before `randomFrom` find the top-r subspace (see `ProjectorMethod`). */
  projector?: ProjectorMethod;
}

/**
 * GoLore around `inner` (e.g. `scaleByAdam()`), for 2-D weights: exactly {@link galore} (same
 * state, refresh rule, scale and project-back), except that a refresh at update count
 * ≥ `randomFrom` takes `randomProjector`'s basis instead of the gradient's top-r singular
 * subspace. As in GaLore the inner state is kept across refreshes.
 *
 * Difference from the reference: at a refresh it also rotates the first moment into the new
 * subspace (m ← Pₙᵀ·Pₒ·m) for that step's update, but keeps the unrotated, un-updated moment in its
 * state, so the rotation never persists and the refresh step's gradient is lost from m; here the
 * moments are kept as GaLore keeps them.
 */
export function golore(
  inner: GradientTransformation,
  opts: GoLoreOptions,
): GradientTransformation<GaLoreState> {
  const { randomFrom = 0, projector = "auto", ...rest } = opts;
  if (!Number.isInteger(randomFrom) || randomFrom < 0) {
    throw new RangeError(`golore: randomFrom must be a non-negative integer, got ${randomFrom}`);
  }
  return galore(inner, {
    ...rest,
    projector: (count) => (count >= randomFrom ? "random" : projector),
  });
}
