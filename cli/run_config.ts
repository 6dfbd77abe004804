/**
 * One training run's settings, and how they turn into a model parameterization, a learning-rate
 * schedule and an optimizer.
 * @module
 */
import type { LlamaConfig } from "../models/config.ts";
import type { LinearMethod } from "../models/method.ts";
import type { OptimizerSpec } from "../models/estimate.ts";
import { type LlamaParams, type ParamEntry, paramPaths } from "../models/llama.ts";
import { adamw, chain, clipByGlobalNorm, galore, type Optimizer, partition } from "../optim/mod.ts";
import { quickRecovery, warmupCosine } from "../optim/schedule.ts";

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
 * The optimizer of one parameter (or one group of like parameters): GaLore around AdamW for GaLore
 * targets, AdamW otherwise. Per-layer updates use it per tensor (no clipping: gradients are never
 * all resident); {@link buildOptimizer} uses it per group.
 */
export function leafOptimizer(run: RunConfig, galoreTarget: boolean): Optimizer {
  const adam = adamw({ lr: lrSchedule(run), weightDecay: run.weightDecay });
  if (!galoreTarget) return adam as Optimizer;
  return galore(adam as Optimizer, {
    rank: run.rank,
    updateProjGap: run.galoreGap,
    scale: run.galoreScale,
  }) as Optimizer;
}

/**
 * The optimizer of a run over the whole params tree: AdamW, with GaLore on the block weights for
 * `galore`, behind global-norm clipping when `clip > 0`.
 */
export function buildOptimizer(run: RunConfig, params: LlamaParams): Optimizer {
  let opt = leafOptimizer(run, false);
  if (run.method === "galore") {
    const targets = new Set(
      paramPaths(params).filter((e) => isGaloreTarget(run, e)).map((e) => e.path),
    );
    opt = partition((path) => (targets.has(path) ? "galore" : "adam"), {
      galore: leafOptimizer(run, true),
      adam: leafOptimizer(run, false),
    }) as Optimizer;
  }
  return run.clip > 0 ? chain(clipByGlobalNorm(run.clip), opt) as Optimizer : opt;
}
