/**
 * One training run's settings, and how they turn into a model parameterization, a learning-rate
 * schedule and an optimizer.
 * @module
 */
import type { LlamaConfig } from "../models/config.ts";
import type { WeightDType } from "../models/linear.ts";
import type { LinearMethod } from "../models/method.ts";
import type { OptimizerSpec } from "../models/estimate.ts";
import { type LlamaParams, type ParamEntry, paramPaths } from "../models/llama.ts";
import {
  adamw,
  addDecayedWeights,
  chain,
  clipByGlobalNorm,
  galore,
  type GradientTransformation,
  multiSteps,
  partition,
  quickRecovery,
  scaleByAdam,
  scaleByLearningRate,
  warmupCosine,
} from "../optim/mod.ts";

/** The methods the trainer compares. */
export const METHODS = ["full", "lowrank", "sltrain", "relora", "galore"] as const;

/** A training method: how block linears are parameterized and optimized. */
export type MethodName = (typeof METHODS)[number];

/** Everything one run needs besides data. */
export interface RunConfig {
  /** Model shapes (vocab already matched to the tokenizer). */
  model: LlamaConfig;
  /** Preset name or config path, for reports. */
  modelName: string;
  /** Method. */
  method: MethodName;
  /** Rank r of low-rank factors, adapters and GaLore subspaces. */
  rank: number;
  /** SLTrain density δ. */
  delta: number;
  /** Low-rank scale numerator α (scale α/r). */
  alpha: number;
  /** Peak learning rate. */
  lr: number;
  /** Linear-warmup steps. */
  warmup: number;
  /** Optimizer steps. */
  steps: number;
  /** Cosine floor as a fraction of lr. */
  minLrRatio: number;
  /** Sequences per micro-batch. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** Micro-batches per optimizer step. */
  gradAccum: number;
  /** Global-norm clip (0 = off). */
  clip: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** Update each parameter during backward (gradients never all resident). */
  perLayer: boolean;
  /** GaLore projector refresh gap T. */
  galoreGap: number;
  /** GaLore scale α. */
  galoreScale: number;
  /** SLTrain: refactorize B, A and reset momentum every k steps (0 = never). */
  refactorEvery: number;
  /** ReLoRA: merge the adapters every k steps. */
  reloraEvery: number;
  /** Steps of the LR ramp after a momentum reset or ReLoRA merge. */
  recoverySteps: number;
  /** Evaluate every k steps (0 = only at the end). */
  evalEvery: number;
  /** Validation tokens per evaluation. */
  evalTokens: number;
  /** Seed of weights, supports and batch order. */
  seed: number;
  /** Read the loss back every k steps (each read is a GPU sync). */
  logEvery: number;
  /** Weight storage: f32, or bf16 for every 2-D weight and SLTrain's V (norm gains stay f32). */
  dtype: WeightDType;
  /** Recompute each block's activations in backward instead of keeping them (same gradients). */
  recompute: boolean;
}

/** The block-linear parameterization of a run. */
export function linearMethod(run: RunConfig): LinearMethod {
  switch (run.method) {
    case "full":
    case "galore":
      return { kind: "dense" };
    case "lowrank":
      return { kind: "lowrank", rank: run.rank, alpha: run.alpha };
    case "sltrain":
      return {
        kind: "sltrain",
        rank: run.rank,
        delta: run.delta,
        alpha: run.alpha,
        seed: run.seed,
      };
    case "relora":
      return { kind: "relora", rank: run.rank, alpha: run.alpha };
  }
}

/** The optimizer as the memory estimate sees it. */
export function optimizerSpec(run: RunConfig): OptimizerSpec {
  return run.method === "galore" ? { kind: "galore", rank: run.rank } : { kind: "adam" };
}

/** Steps at which momentum is reset (SLTrain refactorization) or adapters merge (ReLoRA); 0 = never. */
export function cycleLength(run: RunConfig): number {
  if (run.method === "sltrain") return run.refactorEvery;
  if (run.method === "relora") return run.reloraEvery;
  return 0;
}

/** The learning rate at each step: warmup + cosine, with a quick ramp after each reset/merge. */
export function lrSchedule(run: RunConfig): (step: number) => number {
  const base = warmupCosine({
    lr: run.lr,
    warmup: run.warmup,
    total: run.steps,
    minRatio: run.minLrRatio,
  });
  const cycle = cycleLength(run);
  return cycle > 0
    ? quickRecovery(base, { cycleLength: cycle, recoverySteps: run.recoverySteps })
    : base;
}

/** True for the tensors GaLore projects under this run: the dense 2-D weights of block linears. */
export function isGaloreTarget(run: RunConfig, entry: ParamEntry): boolean {
  return run.method === "galore" && entry.role === "block" && entry.factor === "w";
}

/**
 * The optimizer of a run: fused AdamW, with GaLore-Adam on the block weights for `galore`, behind
 * global-norm clipping when `clip > 0`, accumulating `gradAccum` micro-batches. Every schedule
 * clock and moment lives in its state, so a momentum reset is a fresh optimizer: `from` is the
 * step at which this one starts, so that its learning rate continues the run's schedule. Per-layer
 * runs wrap it in `perParameter`, which cannot clip by a global norm (refused here).
 */
export function buildOptimizer(
  run: RunConfig,
  params: LlamaParams,
  from = 0,
): GradientTransformation {
  const schedule = lrSchedule(run);
  const lr = (count: number) => schedule(from + count);
  let opt: GradientTransformation = adamw({ lr, weightDecay: run.weightDecay });
  if (run.method === "galore") {
    const targets = new Set(
      paramPaths(params).filter((e) => isGaloreTarget(run, e)).map((e) => e.path),
    );
    const inner = galore(scaleByAdam(), {
      rank: run.rank,
      updateProjGap: run.galoreGap,
      scale: run.galoreScale,
    });
    opt = partition((path) => (targets.has(path) ? "galore" : "adam"), {
      galore: chain(inner, addDecayedWeights(run.weightDecay), scaleByLearningRate(lr)),
      adam: opt,
    });
  }
  if (run.clip > 0) {
    if (run.perLayer) {
      throw new RangeError(
        "per-layer updates never hold all gradients at once, so they cannot clip by the global norm",
      );
    }
    opt = chain(clipByGlobalNorm(run.clip), opt);
  }
  return run.gradAccum > 1 ? multiSteps(opt, run.gradAccum) : opt;
}
