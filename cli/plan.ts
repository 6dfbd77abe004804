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
import { FlagError } from "./flag_error.ts";
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
  /** Saved activations and the LM head's blocks at the start of backward. */
  activations: number;
  /** Every gradient at once (0 with per-layer updates, which never hold them all). */
  gradients: number;
  /** What the device holds beyond the tensors: the pool's free buffers, the texture cache. */
  overhead: number;
  /** The predicted allocated peak: steady + max(activations, gradients) + overhead. */
  total: number;
}

// Bytes per token and block of saved activations (f32 whatever the weights' dtype), per unit of
// width and of SwiGLU width: fitted on steps of 128- and 256-wide models with SwiGLU widths of
// 352 and 704 (bench/plan_check.ts), checked at 60m and 350m.
const ACT_PER_HIDDEN = 31.7;
const ACT_PER_INTER = 18;
// The LM head's vocabulary blocks (ops/lm_head.ts): logits within 32 MiB, W's and dW's f32
// blocks within 8 MiB; the head keeps one block of logits and about 2.5 of W and dW.
const LOGIT_BLOCK_BYTES = 32 * 1024 * 1024;
const WEIGHT_BLOCK_BYTES = 8 * 1024 * 1024;
// bf16 weights: the update widens blocks of a gradient and its weight to f32 (about 2.5 blocks).
const WIDENED_BYTES = 2.5 * WEIGHT_BLOCK_BYTES;
// The pool keeps free buffers up to 1/32 of the live bytes, at least 64 MiB (core/memory.ts). At
// the start of backward it holds the LM head's freed blocks (about twice the head's working set,
// within that budget); at the end of backward, gradients have used up most of it (a tenth).
// Measured at tiny, 60m and 350m (bench/plan_check.ts, bench/memory.ts).
const POOL_FRACTION = 1 / 32;
const POOL_MIN = 64 * 1024 * 1024;
const POOL_FILL = { activations: 0.95, gradients: 0.1 };
// With recompute, the backward of one block holds its recomputed activations and their
// gradients: about 1.6 blocks' worth.
const RECOMPUTED_BLOCKS = 1.6;
// The matmul's texture cache (ops/matmul.ts) holds the [tokens, n] operands of the weight
// gradients of products of at least 2^26 FLOPs, about 1.5 of each width (60m, 350m).
const TEXTURE_MIN_FLOPS = 2 ** 26;
const TEXTURES_PER_WIDTH = 1.5;
// Slack of the size classes on the step's (large) buffers: at most 1/32, about half on average.
const CLASS_SLACK = 1 / 64;

/** The predicted device peak of one training step of `run` (one micro-batch of batch × seq). */
export function planPeak(run: RunConfig): PeakEstimate {
  const { model } = run;
  const { hidden, intermediate, layers, vocabSize } = model;
  const steady = estimateMemory(
    model,
    { method: linearMethod(run), optimizer: optimizerSpec(run), weights: run.dtype },
    "ours",
    sizeClass,
  ).total;
  const tokens = run.batch * run.seq;
  const perBlock = ACT_PER_HIDDEN * hidden + ACT_PER_INTER * intermediate;
  // With recompute each block's input is kept, and one block's activations exist at a time.
  const saved = tokens * layers * (run.recompute ? 4 * hidden : perBlock);
  const rows = Math.min(
    vocabSize,
    Math.floor(LOGIT_BLOCK_BYTES / (4 * tokens)),
    Math.floor(WEIGHT_BLOCK_BYTES / (4 * hidden)),
  );
  const head = 4 * rows * (tokens + 2.5 * hidden);
  const textures = Math.min(
    128 * 2 ** 20,
    [hidden, intermediate, rows].filter((n) => 2 * tokens * hidden * n >= TEXTURE_MIN_FLOPS)
      .reduce((sum, n) => sum + TEXTURES_PER_WIDTH * 4 * tokens * n, 0),
  );
  // Without per-layer updates the head's dW is whole from the start of backward.
  const headGrad = run.perLayer ? 0 : sizeClass(storageBytes(run.dtype, vocabSize * hidden));
  const activations = saved + headGrad +
    Math.max(head, run.recompute ? RECOMPUTED_BLOCKS * tokens * perBlock : 0);
  const gradients = run.perLayer
    ? 0
    : gradientBytes(run) + (run.dtype === "bf16" ? WIDENED_BYTES : 0);
  const step = Math.max(activations, gradients) * (1 + CLASS_SLACK);
  const fill = activations >= gradients ? POOL_FILL.activations : POOL_FILL.gradients;
  const pool = Math.min(2 * head, Math.max(POOL_MIN, (steady + step) * POOL_FRACTION));
  const overhead = fill * pool + textures;
  return { steady, activations, gradients, overhead, total: steady + step + overhead };
}

// Every trainable tensor's gradient, in its weight's dtype (norm gains f32), at its size class.
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
      if (method.kind === "sltrain") bytes += model.layers * g(sparseNnz(method.delta, m, n));
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
  // Fastest first; among equally fast ones, the smallest.
  const fitting = rows.filter((r) => r.fits)
    .sort((a, b) => a.cost - b.cost || a.peak.total - b.peak.total);
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
 * Refuses `run` up front when its predicted peak is over `budget`, naming both (and `from`, where
 * the budget comes from) and the planner's command for what fits.
 */
export function checkDeviceBudget(
  run: RunConfig,
  budget: number,
  from = "--max-device-bytes",
): void {
  const peak = planPeak(run).total;
  if (peak <= budget) return;
  throw new FlagError(
    `${from} ${fmtBytes(budget)}: ${run.method} on ${run.modelName} is predicted to ` +
      `need ${fmtBytes(peak)} at its peak (steady ${
        fmtBytes(planPeak(run).steady)
      }); see what fits with --fit ${fmtBytes(budget).replace(" ", "")}`,
  );
}
