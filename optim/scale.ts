/**
 * The small stateless-or-counting stages of a chain: a constant scale, decoupled weight decay and
 * the learning rate (with its schedule clock in the state).
 * @module
 */
import * as tree from "../core/tree.ts";
import { axpbyInPlace, scaleInPlace } from "./inplace.ts";
import { type GradientTransformation, pairLeaves, type Schedule, scheduleAt } from "./transform.ts";

/** updates ← c·updates. Stateless (state null). */
export function scale(c: number): GradientTransformation<null> {
  return {
    init: () => null,
    update: (updates, state) => ({
      updates: tree.map(updates, (u) => scaleInPlace(u, c)),
      state,
    }),
  };
}

/** State of {@link scaleByLearningRate}: updates taken, the clock of the schedule. */
export interface ScheduleState {
  /** Updates since init (0 before the first). */
  count: number;
}

/**
 * updates ← −lr(count)·updates: the descent step, so it comes last in a chain. `lr` is a number or
 * a schedule of the update count (see `schedule.ts`).
 */
export function scaleByLearningRate(lr: Schedule): GradientTransformation<ScheduleState> {
  return {
    init: () => ({ count: 0 }),
    update(updates, state) {
      const a = -scheduleAt(lr, state.count);
      return {
        updates: tree.map(updates, (u) => scaleInPlace(u, a)),
        state: { count: state.count + 1 },
      };
    },
  };
}

/**
 * updates ← updates + λ·params: decoupled weight decay (AdamW's), before the learning rate scales
 * it. Needs `params`; inside `galore` there are none, so put it after `galore` in the chain.
 * Stateless; with λ = 0 it passes updates through without a dispatch.
 */
export function addDecayedWeights(weightDecay: number): GradientTransformation<null> {
  if (!(weightDecay >= 0)) {
    throw new RangeError(`addDecayedWeights: weightDecay must be >= 0, got ${weightDecay}`);
  }
  return {
    init: () => null,
    update(updates, state, params) {
      if (weightDecay === 0) return { updates, state };
      if (params === undefined) {
        throw new RangeError(
          "addDecayedWeights needs the parameters; inside galore there are none, so chain it after galore",
        );
      }
      const { params: p } = pairLeaves(updates, params, "addDecayedWeights");
      return {
        updates: tree.map(updates, (u, _, i) => axpbyInPlace(u, 1, p![i], weightDecay)),
        state,
      };
    },
  };
}
