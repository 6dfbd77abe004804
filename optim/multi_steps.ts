/**
 * Gradient accumulation as a transform (optax's `MultiSteps`).
 * @module
 */
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { donate } from "../core/donate.ts";
import { axpbyInPlace, scaleInPlace } from "./inplace.ts";
import { andThen, type GradientTransformation } from "./transform.ts";

/** State of {@link multiSteps}. */
export interface MultiStepsState {
  /** Micro-steps accumulated since the last real update (0 right after one). */
  micro: number;
  /** Sums of the updates of those micro-steps (leaf order); null right after a real update. */
  acc: Tensor[] | null;
  /** State of the wrapped transform. */
  inner: unknown;
}

/**
 * Accumulates `every` calls' updates and runs `inner` once on their mean: the first `every − 1`
 * calls return null updates (which `applyUpdates` skips), the `every`-th returns `inner`'s update
 * of the mean. The sum lives in the first micro-step's own buffers (consumed updates), so it
 * costs one gradient set, no copy. Use it outermost: `multiSteps(chain(...), k)`.
 */
export function multiSteps(
  inner: GradientTransformation,
  every: number,
): GradientTransformation<MultiStepsState> {
  if (!Number.isSafeInteger(every) || every < 1) {
    throw new RangeError(`multiSteps: every must be a positive integer, got ${every}`);
  }
  return {
    init: (params) => ({ micro: 0, acc: null, inner: inner.init(params) }),
    update(updates, state, params) {
      const g = tree.flatten(updates);
      const acc = state.acc === null ? g.map(donate) : state.acc.map((a, i) => {
        const sum = axpbyInPlace(a, 1, g[i], 1);
        g[i].dispose();
        return sum;
      });
      const micro = state.micro + 1;
      if (micro < every) {
        return {
          updates: tree.map(updates, () => null),
          state: { micro, acc, inner: state.inner },
        };
      }
      const mean = every === 1 ? acc : acc.map((a) => scaleInPlace(a, 1 / every));
      return andThen(inner.update(tree.unflatten(updates, mean), state.inner, params), (r) => ({
        updates: r.updates,
        state: { micro: 0, acc: null, inner: r.state },
      }));
    },
  };
}
