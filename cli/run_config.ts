/**
 * One training run's settings, and how they turn into a model parameterization, a learning-rate
 * schedule and an optimizer.
 * @module
 */
import type { NonFinitePolicy } from "./guard.ts";
import type { LlamaConfig } from "../models/config.ts";
import type { WeightDType } from "../models/linear.ts";
import type { LinearMethod } from "../models/method.ts";
import type { OptimizerSpec } from "../models/estimate.ts";
import { type LlamaParams, type ParamEntry, paramPaths } from "../models/llama.ts";
import {
  adamw,
  adamw8bit,
  type AdamWOptions,
  addDecayedWeights,
  apollo,
  chain,
  clipByGlobalNorm,
  fira,
  galore,
  golore,
  type GradientTransformation,
  type Granularity,
  loro,
  multiSteps,
  partition,
  type ProjectorMethod,
  type ProjectorRefresh,
  quickRecovery,
  scaleByAdam,
  scaleByAdam8bit,
  scaleByLearningRate,
  scaleBySpam,
  scaleByStableSpam,
  warmupCosine,
} from "../optim/mod.ts";
import type { TensorTree } from "../core/tree.ts";

/** The methods the trainer compares. */
export const METHODS = [
  "full",
  "lowrank",
  "sltrain",
  "relora",
  "galore",
  "fira",
  "apollo",
  "apollo-mini",
  "golore",
  "loro",
  "spam",
  "stable-spam",
] as const;

/** A training method: how block linears are parameterized and optimized. */
export type MethodName = (typeof METHODS)[number];

/**
 * The optimizers a run can use: AdamW with f32 moments, or with 8-bit block-quantized moments
 * (also inside GaLore: GaLore8bit).
 */
export const OPTIMIZERS = ["adamw", "adamw8bit"] as const;

/** An optimizer of {@link OPTIMIZERS}. */
export type OptimizerName = (typeof OPTIMIZERS)[number];

/**
 * What each optimizer builds a run from: the fused AdamW over parameters, and the Adam direction
 * GaLore wraps (in the projected shape).
 */
const ADAM_FAMILY: Record<OptimizerName, {
  fused: (opts: AdamWOptions) => GradientTransformation;
  direction: () => GradientTransformation;
}> = {
  adamw: { fused: adamw, direction: () => scaleByAdam() },
  adamw8bit: { fused: adamw8bit, direction: () => scaleByAdam8bit() },
};

/** Everything one run needs besides data. */
export interface RunConfig {
  /** Model shapes (vocab already matched to the tokenizer). */
  model: LlamaConfig;
  /** Preset name or config path, for reports. */
  modelName: string;
  /** Method. */
  method: MethodName;
  /** Optimizer (GaLore runs it on the projected gradients of the block weights). */
  optimizer: OptimizerName;
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
  /** How GaLore and Fira refresh projectors; set only for those methods (see `ProjectorMethod`). */
  galoreProjector?: ProjectorMethod;
  /** Fira / APOLLO norm-growth limiter γ (0 = off); set only for those methods. */
  limiter?: number;
  /** APOLLO scale s (the update is multiplied by √s); set only for apollo and apollo-mini. */
  apolloScale?: number;
  /** APOLLO scaling granularity; set only for apollo and apollo-mini (always "tensor"). */
  apolloGranularity?: Granularity;
  /** SLTrain, low-rank, LoRO: refactorize B, A and reset momentum every k steps (0 = never). */
  refactorEvery: number;
  /** GoLore: first update whose projector refresh is random (see `golore`); set only for golore. */
  goloreRandomFrom?: number;
  /** LoRO: every k-th update is an exact Riemannian step; set only for loro. */
  loroExactEvery?: number;
  /** SPAM: spike threshold θ (0 = no clipping); set only for spam. */
  spamThreshold?: number;
  /** SPAM: steps of the update's cosine ramp after a momentum reset; set only for spam. */
  spamWarmup?: number;
  /** SPAM, Stable-SPAM: steps between momentum resets; set only for those. */
  momentumResetEvery?: number;
  /** Stable-SPAM: γ1, γ2, γ3 (norm, squared norm and max-magnitude decays); set only for it. */
  stableSpamGammas?: [number, number, number];
  /** Stable-SPAM: length T of the β1 cosine schedule (0 = constant) and its floor η. */
  stableSpamSchedule?: { totalT: number; etaMin: number };
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
  /** What a step with a non-finite loss or gradient does (see `guard.ts`); default stop. */
  onNonfinite?: NonFinitePolicy;
  /** Weight storage: f32, or bf16 for every 2-D weight and SLTrain's V (norm gains stay f32). */
  dtype: WeightDType;
  /** Recompute each block's activations in backward instead of keeping them (same gradients). */
  recompute: boolean;
  /** SLTrain: keep each built W from forward to backward instead of rebuilding it (same gradients). */
  keepWeight?: boolean;
}

/** The block-linear parameterization of a run. */
export function linearMethod(run: RunConfig): LinearMethod {
  switch (run.method) {
    case "full":
    case "galore":
    case "fira":
    case "apollo":
    case "apollo-mini":
    case "golore":
    case "spam":
    case "stable-spam":
      return { kind: "dense" };
    case "lowrank":
    case "loro":
      return { kind: "lowrank", rank: run.rank, alpha: run.alpha };
    case "sltrain":
      return {
        kind: "sltrain",
        rank: run.rank,
        delta: run.delta,
        alpha: run.alpha,
        seed: run.seed,
        keepWeight: run.keepWeight,
      };
    case "relora":
      return { kind: "relora", rank: run.rank, alpha: run.alpha };
  }
}

/** The optimizer as the memory estimate sees it. */
export function optimizerSpec(run: RunConfig): OptimizerSpec {
  const limiter = (run.limiter ?? 1.01) > 0;
  const states = run.optimizer === "adamw8bit" ? "8bit" : "f32";
  switch (run.method) {
    case "galore":
    case "golore":
      return { kind: "galore", rank: run.rank, states };
    case "stable-spam":
      return { kind: "adam", states, scalarsPerTensor: 3 };
    case "fira":
      return { kind: "fira", rank: run.rank, limiter, states };
    case "apollo":
    case "apollo-mini":
      return { kind: "apollo", rank: projectionRank(run), limiter, states };
    default:
      return { kind: "adam", states };
  }
}

const PROJECTED: ReadonlySet<MethodName> = new Set([
  "galore",
  "fira",
  "apollo",
  "apollo-mini",
  "golore",
]);

/**
 * True for the methods that train dense block weights through a projected optimizer (GaLore,
 * Fira, APOLLO, APOLLO-Mini, GoLore); their reference scripts use a peak learning rate of 1e-2.
 */
export function isProjected(method: MethodName): boolean {
  return PROJECTED.has(method);
}

/** Rank of the projection of a projected method: `rank`, or 1 for APOLLO-Mini. */
export function projectionRank(run: RunConfig): number {
  return run.method === "apollo-mini" ? 1 : run.rank;
}

/**
 * The transform of a projected method's block weights, before weight decay and the learning rate:
 * GaLore or Fira around `inner` (Adam unless given, e.g. with 8-bit states; `onRefresh` sees each
 * projector refresh), or APOLLO / APOLLO-Mini with `inner` as the moments of its projection; null
 * for the other methods.
 */
export function blockTransform(
  run: RunConfig,
  inner: GradientTransformation = scaleByAdam(),
  onRefresh?: (refresh: ProjectorRefresh) => void,
): GradientTransformation | null {
  const shared = { rank: projectionRank(run), updateProjGap: run.galoreGap };
  const projected = { scale: run.galoreScale, projector: run.galoreProjector, onRefresh };
  switch (run.method) {
    case "galore":
      return galore(inner, { ...shared, ...projected });
    case "golore":
      return golore(inner, {
        ...shared,
        scale: run.galoreScale,
        projector: run.galoreProjector,
        onRefresh,
        randomFrom: run.goloreRandomFrom,
      });
    case "fira":
      return fira(inner, { ...shared, ...projected, limiter: run.limiter });
    case "apollo":
    case "apollo-mini":
      return apollo({
        ...shared,
        scale: run.apolloScale ?? (run.method === "apollo-mini" ? 128 : 1),
        granularity: run.method === "apollo-mini" ? "tensor" : run.apolloGranularity,
        seed: run.seed,
        limiter: run.limiter,
        inner,
      });
    default:
      return null;
  }
}

/** The methods whose factors refactorization re-balances (`--refactor-every`). */
export const REFACTORABLE: readonly MethodName[] = ["sltrain", "lowrank", "loro"];

/**
 * Steps at which momentum is reset (refactorization of SLTrain, low-rank and LoRO factors) or
 * adapters merge (ReLoRA); 0 = never.
 */
export function cycleLength(run: RunConfig): number {
  if (REFACTORABLE.includes(run.method)) return run.refactorEvery;
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

/**
 * True for the tensors a projected method (GaLore, Fira, APOLLO) trains under this run: the dense
 * 2-D weights of block linears.
 */
export function isGaloreTarget(run: RunConfig, entry: ParamEntry): boolean {
  return isProjected(run.method) && entry.role === "block" && entry.factor === "w";
}

/**
 * The direction of SPAM or Stable-SPAM, which replace Adam on every parameter (as the benchmark
 * runs them); null for the other methods.
 */
function wholeModelTransform(run: RunConfig): GradientTransformation | null {
  if (run.method === "spam") {
    return scaleBySpam({
      threshold: run.spamThreshold,
      resetGap: run.momentumResetEvery,
      warmup: run.spamWarmup,
    });
  }
  if (run.method === "stable-spam") {
    const [gamma1, gamma2, gamma3] = run.stableSpamGammas ?? [0.85, 0.999, 0.999];
    return scaleByStableSpam({
      gamma1,
      gamma2,
      gamma3,
      resetGap: run.momentumResetEvery,
      ...run.stableSpamSchedule,
    });
  }
  return null;
}

/** What a run's optimizer reports as it goes, for the log (see {@link buildOptimizer}). */
export interface OptimizerHooks {
  /**
   * Sees the gradients before clipping, before the optimizer consumes them: the accumulated mean
   * under `gradAccum`, and under per-layer updates one gradient (or one block of rows) at a time.
   * It may record dispatches that read them, nothing else.
   */
  onGradients?: (grads: TensorTree) => void;
  /** Called after each GaLore or Fira projector refresh. */
  onRefresh?: (refresh: ProjectorRefresh) => void;
}

/**
 * `inner`, with `seen` shown each update it is given (each block of rows too) before `inner`
 * consumes it. Its state is `inner`'s own, so checkpoints do not change.
 */
function observed(
  inner: GradientTransformation,
  seen: (updates: TensorTree) => void,
): GradientTransformation {
  const rows = inner.updateRows?.bind(inner);
  return {
    init: (params) => inner.init(params),
    update(updates, state, params) {
      seen(updates);
      return inner.update(updates, state, params);
    },
    updateRows: rows && ((params, state) => {
      const r = rows(params, state);
      return r && {
        multiple: r.multiple,
        take: (grad, r0) => {
          seen(grad);
          r.take(grad, r0);
        },
        finish: () => r.finish(),
      };
    }),
  };
}

/**
 * The optimizer of a run: fused AdamW (f32 or 8-bit moments, as `run.optimizer` says), with
 * {@link blockTransform} around the same Adam on the block weights for the projected methods
 * (GaLore, Fira, APOLLO, APOLLO-Mini, GoLore), LoRO on the block factors for `loro`, SPAM or
 * Stable-SPAM instead of Adam on every tensor for those, behind
 * global-norm clipping when `clip > 0`, accumulating `gradAccum` micro-batches. Every schedule
 * clock and moment lives in its state, so a momentum reset is a fresh optimizer: `from` is the
 * step at which this one starts, so that its learning rate continues the run's schedule. Per-layer
 * runs wrap it in `perLayer`, which cannot clip by a global norm (refused here). `hooks`
 * observe it without changing its state.
 */
export function buildOptimizer(
  run: RunConfig,
  params: LlamaParams,
  from = 0,
  hooks: OptimizerHooks = {},
): GradientTransformation {
  const family = ADAM_FAMILY[run.optimizer];
  if (family === undefined) {
    throw new RangeError(
      `optimizer ${run.optimizer}: unknown (expected one of ${OPTIMIZERS.join(", ")})`,
    );
  }
  const schedule = lrSchedule(run);
  const lr = (count: number) => schedule(from + count);
  let opt: GradientTransformation = family.fused({ lr, weightDecay: run.weightDecay });
  const whole = wholeModelTransform(run);
  if (whole) {
    opt = chain(whole, addDecayedWeights(run.weightDecay), scaleByLearningRate(lr));
  }
  if (run.method === "loro") {
    // LoRO takes each linear's B and A together; the other tensors get the run's AdamW.
    const factors = new Set(
      paramPaths(params).filter((e) => e.role === "block" && (e.factor === "A" || e.factor === "B"))
        .map((e) => e.path),
    );
    const block = chain(
      addDecayedWeights(run.weightDecay),
      loro(family.direction(), { lr, exactEvery: run.loroExactEvery }),
    );
    opt = partition((path) => (factors.has(path) ? "loro" : "adam"), { loro: block, adam: opt });
  }
  const block = blockTransform(run, family.direction(), hooks.onRefresh);
  if (block) {
    const targets = new Set(
      paramPaths(params).filter((e) => isGaloreTarget(run, e)).map((e) => e.path),
    );
    // The group is named after the method (checkpoints of GaLore runs keep their state names).
    opt = partition((path) => (targets.has(path) ? run.method : "adam"), {
      [run.method]: chain(block, addDecayedWeights(run.weightDecay), scaleByLearningRate(lr)),
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
  if (hooks.onGradients) opt = observed(opt, hooks.onGradients);
  return run.gradAccum > 1 ? multiSteps(opt, run.gradAccum) : opt;
}
