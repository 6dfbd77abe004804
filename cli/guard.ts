/**
 * The trainer's non-finite guard. Each step gets a u32 flag tensor: slot 0 for the loss, slot
 * 1 + i for the gradient of parameter i (leaf order). Kernels mark a slot when its tensor holds a
 * NaN or ±Infinity (see `ops/finite.ts`); the flags are read back together with the losses the
 * trainer reads anyway every `--log-every` steps, so the guard costs dispatches, never a sync. Each
 * step keeps its own flags until then, so a read names the first bad step and, in leaf order, the
 * first bad parameter of it.
 *
 * What happens to a bad step (`--on-nonfinite`):
 * - `stop` (default): the run stops at the next read, naming the step and the parameter, without
 *   writing a checkpoint; the last good checkpoint stays the one `--resume` continues from. (Its
 *   update was applied, and later steps' too, which is why nothing after it may be checkpointed.)
 * - `skip`: the step's update is not applied. The decision is made on the GPU before the update
 *   runs (`gated` in `core/kernel.ts`): every dispatch of the optimizer update and of applying it
 *   becomes a no-op when a flag of the step is set, so parameters and optimizer moments keep their
 *   values, however in place the update works. What lives on the CPU still advances: the step
 *   counter, the data position, the learning-rate schedule and the optimizer's own counts (Adam's
 *   bias correction counts the step as taken). The step is logged as `skip`; a run whose steps
 *   keep failing stops after {@link MAX_CONSECUTIVE_SKIPS} in a row. Per-layer updates cannot skip:
 *   they apply each weight's update during backward, before the whole gradient is known.
 * @module
 */
import { NonFiniteError } from "../core/errors.ts";
import { gated } from "../core/kernel.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import { flagNonFinite } from "../ops/finite.ts";

/** What the trainer does with a step whose loss or gradients are not finite. */
export type NonFinitePolicy = "stop" | "skip";

/** The policies, for flag validation. */
export const NONFINITE_POLICIES: readonly NonFinitePolicy[] = ["stop", "skip"];

/** Skipped steps in a row after which a `skip` run stops anyway. */
export const MAX_CONSECUTIVE_SKIPS = 10;

/** A step whose flags were set: its number and what was not finite. */
export interface NonFiniteStep {
  /** The optimizer step. */
  step: number;
  /** The loss read back (NaN, ±Infinity, or finite when only gradients were bad). */
  loss: number;
  /** Parameters (leaf order) whose gradient was not finite. */
  params: string[];
}

/** Flags, checks and the update gate of one run; see the module doc. */
export class NonFiniteGuard {
  readonly #paths: readonly string[];
  /** What a bad step does. */
  readonly policy: NonFinitePolicy;

  /** A guard over parameters with these paths (leaf order). */
  constructor(paths: readonly string[], policy: NonFinitePolicy) {
    this.#paths = paths;
    this.policy = policy;
  }

  /** A fresh, clear flag tensor for one step. */
  flags(): Tensor {
    return zeros([1 + this.#paths.length], "u32");
  }

  /** Marks the step's flags if the loss is not finite. */
  checkLoss(flags: Tensor, loss: Tensor): void {
    flagNonFinite(loss, flags, 0);
  }

  /** Marks the step's flags if the gradient of parameter `index` (leaf order) is not finite. */
  checkGrad(flags: Tensor, grad: Tensor, index: number): void {
    flagNonFinite(grad, flags, 1 + index);
  }

  /** Runs the step's update: gated on its flags under `skip`, as it is under `stop`. */
  update<T>(flags: Tensor, fn: () => T | Promise<T>): Promise<T> {
    return this.policy === "skip"
      ? gated(flags.binding(), flags.size, fn)
      : Promise.resolve().then(fn);
  }

  /** The verdict on a step from its flags as read back: null when everything was finite. */
  verdict(step: number, loss: number, flags: ArrayLike<number>): NonFiniteStep | null {
    if (flags[0] === 0 && Number.isFinite(loss) && !this.#paths.some((_, i) => flags[1 + i])) {
      return null;
    }
    return { step, loss, params: this.#paths.filter((_, i) => flags[1 + i] !== 0) };
  }
}

/** One line on a bad step: the step, the loss, and the first non-finite gradient (leaf order). */
export function describeNonFinite(bad: NonFiniteStep): string {
  const grads = bad.params.length === 0
    ? "every gradient is finite"
    : `the gradient of ${bad.params[0]} is not finite` +
      (bad.params.length > 1 ? ` (nor those of ${bad.params.length - 1} more parameters)` : "");
  return `step ${bad.step}: the loss is ${bad.loss}; ${grads}`;
}

/** The error a run stopped by non-finite values ends with, saying what to do next. */
export function nonFiniteStop(
  what: string,
  lastCheckpoint: string | null,
  policy: NonFinitePolicy,
): NonFiniteError {
  return new NonFiniteError(
    `non-finite values at ${what}. The run stopped without checkpointing them; ` +
      (lastCheckpoint
        ? `the last good checkpoint is ${lastCheckpoint}: --resume continues from it` +
          (policy === "stop" ? " (add --on-nonfinite skip to step over such steps)" : "")
        : "no checkpoint had been written yet"),
  );
}
