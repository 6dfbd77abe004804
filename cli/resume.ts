/**
 * What a resumed run may change, and how a run is extended: `--resume` with another `--steps`
 * continues the run to the new length. Settings train.ts derives from `--steps` when their flag is
 * absent (the warmup, ReLoRA's merge period) keep the checkpoint's values, settings the run's
 * method does not use are not compared, and the learning-rate schedule's new shape is described
 * for the console and the log. Every other difference is a conflict, named.
 * @module
 */
import type { RawFlags } from "./flags.ts";
import type { MethodName, RunConfig } from "./run_config.ts";
import { lrSchedule, REFACTORABLE } from "./run_config.ts";

/**
 * The settings a resumed run may change: how long it runs and how it evaluates and reports. Any
 * other setting, including one added later, must match the checkpoint's.
 */
const MAY_CHANGE: ReadonlySet<string> = new Set<keyof RunConfig>([
  "modelName",
  "steps",
  "evalEvery",
  "evalTokens",
  "logEvery",
  "onNonfinite",
  // Recomputing activations or keeping SLTrain's W gives the same gradients to the bit: only
  // memory and time differ.
  "recompute",
  "keepWeight",
]);

/**
 * Settings train.ts derives from `--steps` when none of the flags that set them is given: the
 * warmup, ReLoRA's merge period, GoLore's first random refresh, Stable-SPAM's β1 schedule.
 */
const STEP_DERIVED: Partial<Record<keyof RunConfig, readonly string[]>> = {
  warmup: ["warmup"],
  reloraEvery: ["relora-every"],
  goloreRandomFrom: ["golore-rand-ratio"],
  stableSpamSchedule: ["stable-spam-total", "stable-spam-eta"],
};

/** The settings whose values train.ts derived from `--steps` under `flags` (their flags absent). */
export function derivedFromSteps(flags: RawFlags): Set<string> {
  return new Set(
    Object.entries(STEP_DERIVED).filter(([, fs]) => fs!.every((f) => flags[f] === undefined))
      .map(([k]) => k),
  );
}

/** The methods that refresh a GaLore-style projector every `galoreGap` steps. */
const GAP_METHODS: readonly MethodName[] = ["galore", "golore", "fira", "apollo", "apollo-mini"];

/**
 * The methods a setting affects; a setting not listed is compared for every method. A method
 * added later that reads one of these settings belongs in its list.
 */
const ONLY_FOR: Partial<Record<keyof RunConfig, readonly MethodName[]>> = {
  delta: ["sltrain"],
  refactorEvery: REFACTORABLE,
  reloraEvery: ["relora"],
  recoverySteps: [...REFACTORABLE, "relora"],
  galoreGap: GAP_METHODS,
  galoreScale: ["galore", "golore", "fira"],
};

/** Whether `key` changes what a run of `method` computes. */
export function applies(key: string, method: MethodName): boolean {
  const only = ONLY_FOR[key as keyof RunConfig];
  return only === undefined || only.includes(method);
}

/** Names the settings of `run` that differ from a checkpoint's (empty when it can resume). */
export function resumeConflicts(run: RunConfig, saved: RunConfig): string[] {
  const now = run as unknown as Record<string, unknown>;
  const then = saved as unknown as Record<string, unknown>;
  const keys = new Set([...Object.keys(now), ...Object.keys(then)]);
  return [...keys]
    .filter((k) =>
      !MAY_CHANGE.has(k) && (k === "method" || applies(k, run.method)) &&
      JSON.stringify(now[k]) !== JSON.stringify(then[k])
    )
    .map((k) => `${k}: checkpoint ${JSON.stringify(then[k])}, now ${JSON.stringify(now[k])}`);
}

/** A run reconciled with the checkpoint it resumes from (see {@link reconcileResume}). */
export interface Reconciled {
  /** The run to continue: `run` with the derived settings the checkpoint fixes. */
  run: RunConfig;
  /** Conflicting settings, named (the run cannot resume when there are any). */
  conflicts: string[];
  /** Derived settings taken from the checkpoint: name → [the checkpoint's, what `--steps` gives]. */
  kept: Record<string, [unknown, unknown]>;
}

/**
 * Reconciles `run` with the `saved` run of a checkpoint: each setting in `derived` (those whose
 * value came from `--steps`, not from their own flag) takes the checkpoint's value; what still
 * differs is a conflict unless it may change.
 */
export function reconcileResume(
  run: RunConfig,
  saved: RunConfig,
  derived: ReadonlySet<string>,
): Reconciled {
  const next = { ...run } as Record<string, unknown>;
  const then = saved as unknown as Record<string, unknown>;
  const kept: Record<string, [unknown, unknown]> = {};
  for (const k of Object.keys(STEP_DERIVED)) {
    if (!derived.has(k) || !(k in then) || JSON.stringify(next[k]) === JSON.stringify(then[k])) {
      continue;
    }
    if (applies(k, run.method)) kept[k] = [then[k], next[k]];
    next[k] = then[k];
  }
  const reconciled = next as unknown as RunConfig;
  return { run: reconciled, conflicts: resumeConflicts(reconciled, saved), kept };
}

const fmtLr = (v: number) => v.toPrecision(3);

/**
 * One line describing how a run of `saved.steps` steps, resumed at `step` as `run`, changes its
 * learning-rate schedule (null when the length is unchanged).
 */
export function describeExtension(
  run: RunConfig,
  saved: RunConfig,
  step: number,
  kept: Record<string, [unknown, unknown]>,
): string | null {
  if (run.steps === saved.steps) return null;
  const [before, after] = [lrSchedule(saved), lrSchedule(run)];
  const keptText = Object.entries(kept)
    .map(([k, [v, d]]) =>
      `${k} ${v} (kept from the checkpoint; --steps ${run.steps} would give ${d})`
    );
  return [
    `${
      run.steps > saved.steps ? "extending" : "shortening"
    } the run from ${saved.steps} to ${run.steps} steps`,
    ...keptText,
    `schedule: warmup ${run.warmup} steps to lr ${fmtLr(run.lr)}, cosine down to ${
      fmtLr(run.lr * run.minLrRatio)
    } at step ${run.steps} (was at step ${saved.steps})`,
    `lr at step ${step + 1}: ${fmtLr(after(step))}, was ${fmtLr(before(step))}`,
  ].join("; ");
}
