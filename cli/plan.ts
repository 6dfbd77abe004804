/**
 * The planner: the device peak of a training step as the device sees it (allocated bytes, the
 * figure `memoryStats().allocatedPeak` measures), for a run and for the variants of it a user can
 * choose between (method, optimizer, weight dtype, per-layer updates, recompute, micro-batch),
 * with a relative step cost, what fits a budget and the fastest that does.
 *
 * The peak is the steady state (`estimateMemory`, each tensor at the pool's size class) plus the
 * larger of two phases of a step: the start of backward, when every saved activation is alive
 * (per token and block, linear in the width and the SwiGLU width, measured on this library's
 * kernels), and, without per-layer updates, the end of backward, when every gradient is alive (in
 * the weights' dtype). `bench/plan_check.ts` sets the prediction beside the measured peak.
 * @module
 */
import { storageBytes } from "../core/dtype.ts";
import { sizeClass } from "../core/memory.ts";
import { estimateMemory } from "../models/estimate.ts";
import { blockLinearShapes, sparseNnz } from "../models/method.ts";
import { fmtBytes, table } from "./format.ts";
import { FlagError } from "./flags.ts";
import {
  linearMethod,
  type MethodName,
  type OptimizerName,
  optimizerSpec,
  type RunConfig,
} from "./run_config.ts";

/** A device peak by part, in bytes. */
export interface PeakEstimate {
  /** Weights, sparse indices and optimizer state, each tensor at its size class. */
  steady: number;
  /** Saved activations and the LM head's work at the start of backward. */
  activations: number;
  /** Every gradient at once (0 with per-layer updates, which never hold them all). */
  gradients: number;
  /** What the device holds beyond the tensors' bytes: size-class slack, pool, caches. */
  overhead: number;
  /** The predicted allocated peak: steady + max(activations, gradients) + overhead. */
  total: number;
}

// Bytes per token and block of saved activations (f32 whatever the weights' dtype): per unit of
// width and of SwiGLU width (fitted on tiny/60m steps, `bench/plan_check.ts`).
const ACT_PER_HIDDEN = 31.7;
const ACT_PER_INTER = 18;

/** The predicted device peak of one training step of `run` (one micro-batch of batch × seq). */
export function planPeak(run: RunConfig): PeakEstimate {
  const { model } = run;
  const est = estimateMemory(
    model,
    { method: linearMethod(run), optimizer: optimizerSpec(run), weights: run.dtype },
    "ours",
    sizeClass,
  );
  const tokens = run.batch * run.seq;
  const perBlock = ACT_PER_HIDDEN * model.hidden + ACT_PER_INTER * model.intermediate;
  // With recompute only each block's input is kept, plus one block's activations at a time.
  const saved = run.recompute
    ? tokens * (model.layers * 4 * model.hidden + perBlock)
    : tokens * model.layers * perBlock;
  const head = HEAD_PER_TOKEN * tokens + headFixed(run);
  const activations = saved + head;
  const gradients = run.perLayer ? 0 : gradientBytes(run);
  const step = Math.max(activations, gradients);
  const overhead = OVERHEAD * step;
  return {
    steady: est.total,
    activations,
    gradients,
    overhead,
    total: est.total + step + overhead,
  };
}

const HEAD_PER_TOKEN = 2600;
const OVERHEAD = 0.05;

// The LM head's and embedding's gradients, [vocab, hidden] in the weights' dtype: whole without
// per-layer updates, by rows with them.
function headFixed(run: RunConfig): number {
  const { vocabSize, hidden } = run.model;
  return run.perLayer ? 0 : 3 * sizeClass(storageBytes(run.dtype, vocabSize * hidden));
}

// Every trainable tensor's gradient, in its weight's dtype, at its size class.
function gradientBytes(run: RunConfig): number {
  const { model } = run;
  const method = linearMethod(run);
  const g = (n: number, dtype = run.dtype) => sizeClass(storageBytes(dtype, n));
  let bytes = 2 * g(model.vocabSize * model.hidden) +
    (2 * model.layers + 1) * g(model.hidden, "f32");
  for (const { shape: [m, n] } of blockLinearShapes(model)) {
    if (method.kind === "dense") bytes += model.layers * g(m * n);
    else {
      bytes += model.layers * (g(method.rank * n) + g(m * method.rank));
      if (method.kind === "sltrain") {
        bytes += model.layers * g(sparseNnz(method.delta, m, n));
      }
    }
  }
  return bytes;
}

/**
 * A size in bytes from the command line: a number with an optional unit, decimal (kB, MB, GB, TB)
 * or binary (KiB, MiB, GiB, TiB), case-insensitive, e.g. `24GB`, `16 GiB`, `1.5e9`. Throws a
 * FlagError naming `flag` otherwise.
 */
export function parseByteSize(raw: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*(?:([kmgt])(i)?)?b?\s*$/i.exec(raw);
  if (m) {
    const power = m[2] ? " kmgt".indexOf(m[2].toLowerCase()) : 0;
    const v = Number(m[1]) * (m[3] ? 1024 : 1000) ** power;
    if (Number.isFinite(v) && v >= 1) return Math.round(v);
  }
  throw new FlagError(
    `--${flag} ${raw}: must be a positive size such as 24GB, 16GiB, 512MB or a number of bytes`,
  );
}

/** One choice the planner weighs. */
export interface PlanVariant {
  /** Block parameterization. */
  method: MethodName;
  /** Adam with f32 or 8-bit states. */
  optimizer: OptimizerName;
  /** Weight storage. */
  dtype: "f32" | "bf16";
  /** Update each weight during backward. */
  perLayer: boolean;
  /** Recompute activations in backward. */
  recompute: boolean;
  /** Sequences per micro-batch (the rest of the batch as gradient accumulation). */
  batch: number;
}

/** A variant with its predicted peak and relative cost. */
export interface PlanRow extends PlanVariant {
  /** Predicted allocated peak. */
  peak: PeakEstimate;
  /** Step time relative to the fastest variant listed (1 = fastest). */
  cost: number;
  /** Whether the peak is within the budget. */
  fits: boolean;
}

/** `run` as `v` would run it: the same tokens per optimizer step, in micro-batches of `v.batch`. */
export function applyVariant(run: RunConfig, v: PlanVariant): RunConfig {
  const perStep = run.batch * run.gradAccum;
  return {
    ...run,
    method: v.method,
    optimizer: v.optimizer,
    dtype: v.dtype,
    perLayer: v.perLayer,
    recompute: v.recompute,
    batch: v.batch,
    gradAccum: Math.max(1, Math.round(perStep / v.batch)),
  };
}

// Seconds per FLOP and per dispatch of a CPU adapter (platform.md: ~15 GFLOP/s in the matmuls,
// ~80 µs per dispatch), only to weigh FLOPs against per-micro-batch fixed costs.
const FLOP_SECONDS = 1 / 15e9;
const DISPATCH_SECONDS = 80e-6;
// Dispatches of one micro-batch per block (forward, backward, update) and for the rest.
const DISPATCHES_PER_BLOCK = 60;
const DISPATCHES_FIXED = 40;

/**
 * Estimated seconds of one optimizer step of `run` on a CPU adapter (6 FLOPs per weight and token,
 * 2 more with recompute; SLTrain's weight build 2·r per weight and micro-batch, twice with
 * recompute; attention; the update's pass over the weights; a fixed cost per dispatch). Only
 * ratios between variants are meant.
 */
export function stepSeconds(run: RunConfig): number {
  const { model } = run;
  const method = linearMethod(run);
  const tokens = run.batch * run.seq;
  let blockWeights = 0;
  for (const { shape: [m, n] } of blockLinearShapes(model)) blockWeights += m * n;
  const perToken = (run.recompute ? 8 : 6) * model.layers * blockWeights +
    6 * model.vocabSize * model.hidden +
    (run.recompute ? 8 : 6) * model.layers * model.hidden * run.seq;
  const build = method.kind === "sltrain"
    ? (run.recompute ? 2 : 1) * 2 * method.rank * model.layers * blockWeights
    : 0;
  const params = estimateMemory(model, { method }, "ours").params.trainable;
  const update = 10 * params * (run.optimizer === "adamw8bit" ? 1.5 : 1);
  const dispatches = DISPATCHES_PER_BLOCK * model.layers + DISPATCHES_FIXED;
  return run.gradAccum *
      ((perToken * tokens + build) * FLOP_SECONDS + dispatches * DISPATCH_SECONDS) +
    update * FLOP_SECONDS;
}

/**
 * The variants of `run`: full-rank and SLTrain (and `run`'s own method), Adam with f32 or 8-bit
 * states, f32 or bf16 weights, with and without per-layer updates and recompute, at micro-batches
 * of `run.batch`, its halves and 1; each with its peak, cost relative to the fastest, and whether
 * it fits `budget` (bytes).
 */
export function planRows(run: RunConfig, budget: number): PlanRow[] {
  const methods = [...new Set<MethodName>([run.method, "full", "sltrain"])];
  const batches: number[] = [];
  for (let b = run.batch; b >= 1; b = Math.floor(b / 2)) batches.push(b);
  if (batches.at(-1) !== 1) batches.push(1);
  const rows: Omit<PlanRow, "cost">[] = [];
  const secs: number[] = [];
  for (const method of methods) {
    for (const optimizer of ["adamw", "adamw8bit"] as const) {
      for (const dtype of ["f32", "bf16"] as const) {
        for (const perLayer of [false, true]) {
          for (const recompute of [false, true]) {
            for (const batch of batches) {
              const v = { method, optimizer, dtype, perLayer, recompute, batch };
              const r = applyVariant(run, v);
              const peak = planPeak(r);
              rows.push({ ...v, peak, fits: peak.total <= budget });
              secs.push(stepSeconds(r));
            }
          }
        }
      }
    }
  }
  const fastest = Math.min(...secs);
  return rows.map((r, i) => ({ ...r, cost: secs[i] / fastest }));
}

const label = (v: PlanVariant) =>
  `${v.method} ${v.optimizer} ${v.dtype}${v.perLayer ? " per-layer" : ""}${
    v.recompute ? " recompute" : ""
  }`;

/** The flags that select `v` on train.ts. */
export function variantFlags(v: PlanVariant, run: RunConfig): string {
  const accum = applyVariant(run, v).gradAccum;
  return [
    `--method ${v.method}`,
    `--optimizer ${v.optimizer}`,
    `--dtype ${v.dtype}`,
    ...(v.perLayer ? ["--per-layer"] : []),
    ...(v.recompute ? ["--recompute"] : []),
    `--batch ${v.batch}`,
    ...(accum > 1 ? [`--grad-accum ${accum}`] : []),
  ].join(" ");
}

/**
 * The planner's answer for `run` on a device of `budget` bytes: per method, optimizer, dtype and
 * memory option, the largest micro-batch that fits (or the smallest, marked, when none does), its
 * predicted peak and relative step cost; then the fastest that fits, or — when nothing does — the
 * configuration that needs least and how much that is.
 */
export function fitReport(run: RunConfig, budget: number): string {
  const rows = planRows(run, budget);
  const groups = Map.groupBy(rows, label);
  // Rows come largest micro-batch first: the first that fits, else the last (the least it needs).
  const list = [...groups.values()].map((g) => g.find((r) => r.fits) ?? g.at(-1)!);
  const body = list.map((r) => [
    label(r),
    `${r.batch}`,
    fmtBytes(r.peak.total),
    fmtBytes(r.peak.steady),
    r.cost.toFixed(2),
    r.fits ? "yes" : "no",
  ]);
  const head = `${run.modelName}: ${run.batch * run.gradAccum} × ${run.seq} tokens per step, ` +
    `budget ${fmtBytes(budget)} (predicted allocated peak of one step; cost relative to the ` +
    "fastest listed)";
  const out = [
    head,
    table(["configuration", "micro-batch", "peak", "steady", "cost", "fits"], body),
  ];
  const fitting = rows.filter((r) => r.fits).sort((a, b) => a.cost - b.cost);
  if (fitting.length > 0) {
    const best = fitting[0];
    out.push(
      `fastest that fits: ${label(best)}, micro-batch ${best.batch} (peak ${
        fmtBytes(best.peak.total)
      }): ${variantFlags(best, run)}`,
    );
  } else {
    const least = rows.reduce((a, b) => a.peak.total <= b.peak.total ? a : b);
    out.push(
      `nothing fits ${fmtBytes(budget)}: the smallest is ${
        label(least)
      }, micro-batch ${least.batch}, which needs ${fmtBytes(least.peak.total)} (${
        variantFlags(least, run)
      })`,
    );
  }
  return out.join("\n");
}

/**
 * Refuses `run` up front when its predicted peak is over `budget`, naming both and the
 * planner's command for what fits.
 */
export function checkDeviceBudget(run: RunConfig, budget: number): void {
  const peak = planPeak(run).total;
  if (peak <= budget) return;
  throw new FlagError(
    `--max-device-bytes ${fmtBytes(budget)}: ${run.method} on ${run.modelName} is predicted to ` +
      `need ${fmtBytes(peak)} at its peak (steady ${
        fmtBytes(planPeak(run).steady)
      }); see what fits with --fit ${fmtBytes(budget).replace(" ", "")}`,
  );
}
