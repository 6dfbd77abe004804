/**
 * Learning-rate schedules as plain functions `step -> lr` (step = 0-based update index), matching
 * the reference code's LambdaLR multipliers. As there, update 0 runs at lr 0 during warmup.
 * @module
 */

/** Options of {@link warmupCosine}. */
export interface WarmupCosineOptions {
  /** Peak learning rate (the multiplier 1). */
  lr: number;
  /** Linear-warmup steps (multiplier s / warmup). */
  warmup: number;
  /** Total steps N: the cosine reaches `minRatio` at step N. */
  total: number;
  /** Floor of the cosine as a fraction of `lr`; default 0.1 (the scripts' `min_lr_ratio`). */
  minRatio?: number;
}

/**
 * The multiplier of `get_cyclical_cosine_schedule_with_min_lr` with one cycle: s/warmup for
 * s < warmup, else minRatio + (1 − minRatio)·½(1 + cos(π·(s − warmup)/(N − warmup))). Steps past N
 * keep following the cosine (it turns back up), as the reference's formula does.
 */
export function warmupCosineMultiplier(
  step: number,
  warmup: number,
  total: number,
  minRatio = 0.1,
): number {
  if (step < warmup) return step / Math.max(1, warmup);
  const progress = (step - warmup) / Math.max(1, total - warmup);
  return minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Linear warmup to `lr`, then cosine decay to `lr·minRatio` at step `total`. */
export function warmupCosine(opts: WarmupCosineOptions): (step: number) => number {
  const { lr, warmup, total, minRatio = 0.1 } = opts;
  if (!(total > 0) || warmup < 0) {
    throw new RangeError(`warmupCosine: need total > 0 and warmup >= 0, got ${total}, ${warmup}`);
  }
  return (step) => lr * warmupCosineMultiplier(step, warmup, total, minRatio);
}

/** Options of {@link quickRecovery}. */
export interface QuickRecoveryOptions {
  /** Steps between momentum resets; resets happen at every positive multiple. */
  cycleLength: number;
  /** Steps of the ramp after each reset; default 10 (the reference's `--recovery_steps`). */
  recoverySteps?: number;
}

/**
 * The reference's `cosine_quick_recovery` around any base schedule: for the first R steps after
 * each reset at k·cycleLength (k ≥ 1), the lr ramps linearly from 0.001·base(k·C + R) to
 * base(k·C + R) with progress j/(R − 1); elsewhere it is `base(step)`. The ramp keeps the fresh
 * (zeroed) Adam moments from taking full-size steps right after a momentum reset.
 */
export function quickRecovery(
  base: (step: number) => number,
  opts: QuickRecoveryOptions,
): (step: number) => number {
  const { cycleLength, recoverySteps = 10 } = opts;
  if (!(cycleLength > 0)) throw new RangeError(`quickRecovery: cycleLength must be > 0`);
  return (step) => {
    const restart = Math.floor(step / cycleLength) * cycleLength;
    const since = step - restart;
    if (restart === 0 || recoverySteps <= 0 || since >= recoverySteps) return base(step);
    const target = base(restart + recoverySteps);
    const progress = recoverySteps > 1 ? Math.min(1, since / (recoverySteps - 1)) : 1;
    const start = 0.001 * target;
    return start + (target - start) * progress;
  };
}
