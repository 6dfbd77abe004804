/**
 * Analytic parameter counts and memory estimates (weights + optimizer states + sparse indices +
 * GaLore projectors), in the paper's accounting (bf16 values, int64 indices, as in SLTrain's and
 * GaLore's Table 2) or ours (f32 values, u32 indices). Activations and workspace are not counted.
 * @module
 */
import type { LlamaConfig } from "./config.ts";
import { ConfigError, show } from "./errors.ts";
import {
  blockLinearShapes,
  checkRank,
  type LinearMethod,
  sparseNnz,
  validateMethod,
} from "./method.ts";

/** Parameter counts of a model under a method. */
export interface ParamCount {
  /**
   * Every stored value: dense weights, low-rank factors, sparse values and ReLoRA's frozen
   * weights (not sparse indices).
   */
  readonly total: number;
  /** Values the optimizer updates: all of `total` except ReLoRA's frozen block weights. */
  readonly trainable: number;
  /** Sparse values over all layers (SLTrain only, else 0); each also has one stored index. */
  readonly nnz: number;
  /** `total` split by part. */
  readonly byPart: {
    /** Token embedding, vocab·hidden. */
    readonly embedding: number;
    /** Untied output head, vocab·hidden. */
    readonly lmHead: number;
    /** RMSNorm gains: two per block plus the final one, hidden each. */
    readonly norms: number;
    /** The seven linears of every block, as parameterized by the method. */
    readonly blocks: number;
  };
}

// [stored, trainable] values of one block linear.
function linearParams(method: LinearMethod, out: number, inF: number): [number, number] {
  if (method.kind === "dense") return [out * inF, out * inF];
  const factors = method.rank * (out + inF);
  if (method.kind === "lowrank") return [factors, factors];
  if (method.kind === "relora") return [out * inF + factors, factors];
  const n = factors + sparseNnz(method.delta, out, inF);
  return [n, n];
}

/** Counts parameters; the method is validated against the config first. */
export function countParams(config: LlamaConfig, method: LinearMethod): ParamCount {
  validateMethod(config, method);
  const { vocabSize, hidden, layers } = config;
  let perLayer = 0;
  let frozenPerLayer = 0;
  let nnzPerLayer = 0;
  for (const { shape: [out, inF] } of blockLinearShapes(config)) {
    const [stored, trainable] = linearParams(method, out, inF);
    perLayer += stored;
    frozenPerLayer += stored - trainable;
    if (method.kind === "sltrain") nnzPerLayer += sparseNnz(method.delta, out, inF);
  }
  const byPart = {
    embedding: vocabSize * hidden,
    lmHead: vocabSize * hidden,
    norms: (2 * layers + 1) * hidden,
    blocks: layers * perLayer,
  };
  const total = byPart.embedding + byPart.lmHead + byPart.norms + byPart.blocks;
  return { total, trainable: total - layers * frozenPerLayer, nnz: layers * nnzPerLayer, byPart };
}

/** Bytes per stored element, by role. */
export interface ByteSizes {
  /** Per weight value (dense weights, factors, sparse values) and per GaLore projector entry. */
  readonly weight: number;
  /** Per optimizer-state entry (each Adam moment). */
  readonly state: number;
  /** Per sparse index. */
  readonly index: number;
}

/**
 * `paper`: bf16 weights and states, int64 indices, the accounting of SLTrain's and GaLore's
 * Table 2. `ours`: f32 weights and states, u32 indices, what this library allocates. Or explicit
 * sizes.
 */
export type Accounting = "paper" | "ours" | ByteSizes;

/** Byte sizes of the two named accountings. */
export const ACCOUNTING: Readonly<Record<"paper" | "ours", ByteSizes>> = Object.freeze({
  paper: Object.freeze({ weight: 2, state: 2, index: 8 }),
  ours: Object.freeze({ weight: 4, state: 4, index: 4 }),
});

/**
 * The optimizer whose states are counted. `adam`: two moments per trainable value. `galore`: for
 * each block linear [m, n] a projector min(m, n)·rank and two moments rank·max(m, n); every other
 * parameter gets plain Adam. `bytesPerState` overrides the accounting's state size (e.g. 1 plus the
 * per-block scale overhead for 8-bit block-quantized states); projectors stay at weight size.
 * `fira` and `apollo`: see {@link ScalingOptimizerSpec}.
 */
export type OptimizerSpec =
  | { readonly kind: "adam"; readonly bytesPerState?: number }
  | { readonly kind: "galore"; readonly rank: number; readonly bytesPerState?: number }
  | ScalingOptimizerSpec;

/**
 * Fira: GaLore's states, plus the norm-growth limiter's stored norm (one value per block linear,
 * at weight size, unless `limiter` is false). APOLLO: two moments rank·max(m, n) and the limiter's
 * norm per block linear, no projector (it is regenerated from a seed); APOLLO-Mini is rank 1.
 * Both need rank < min(m, n) of every block linear.
 */
export interface ScalingOptimizerSpec {
  /** Which of the two. */
  readonly kind: "fira" | "apollo";
  /** Rank of the projection. */
  readonly rank: number;
  /** Whether the norm-growth limiter (and its stored norm) is on; default true. */
  readonly limiter?: boolean;
  /** Bytes per moment entry, as for the other kinds. */
  readonly bytesPerState?: number;
}

/** What to estimate: the block parameterization and the optimizer (Adam when omitted). */
export interface TrainingSetup {
  /** Parameterization of the block linears. */
  readonly method: LinearMethod;
  /** Optimizer whose states are counted; defaults to `{ kind: "adam" }`. */
  readonly optimizer?: OptimizerSpec;
}

/** Estimated bytes by kind; values can be fractional only with a fractional `bytesPerState`. */
export interface MemoryEstimate {
  /** All stored values (`params.total`, frozen ones included) at the weight size. */
  readonly weights: number;
  /**
   * Adam moments of the trainable values (in the projected shapes for GaLore, Fira and APOLLO
   * matrices), plus Fira's and APOLLO's limiter norms.
   */
  readonly optimizerStates: number;
  /** Sparse indices, one per sparse value. */
  readonly indices: number;
  /** GaLore and Fira projectors (0 for Adam and APOLLO). */
  readonly projector: number;
  /** Sum of the above. */
  readonly total: number;
  /** The parameter counts the estimate is built on. */
  readonly params: ParamCount;
}

/**
 * Estimates training memory for weights, optimizer states, sparse indices and GaLore projectors.
 * GaLore projects dense block gradients, so it requires the `dense` method. Throws
 * {@link ConfigError} for an invalid method, GaLore rank or byte size.
 */
export function estimateMemory(
  config: LlamaConfig,
  setup: TrainingSetup,
  accounting: Accounting,
): MemoryEstimate {
  const sizes = typeof accounting === "string" ? ACCOUNTING[accounting] : accounting;
  if (sizes === undefined) {
    throw new ConfigError(
      `accounting must be "paper", "ours" or byte sizes, got ${show(accounting)}`,
    );
  }
  for (const [k, v] of Object.entries(sizes)) {
    if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v)) {
      throw new ConfigError(`accounting.${k} must be a non-negative byte count, got ${show(v)}`);
    }
  }
  const optimizer: OptimizerSpec = setup.optimizer ?? { kind: "adam" };
  const stateBytes = optimizer.bytesPerState ?? sizes.state;
  if (typeof stateBytes !== "number" || !(stateBytes > 0) || !Number.isFinite(stateBytes)) {
    throw new ConfigError(
      `optimizer.bytesPerState must be a positive byte count, got ${show(stateBytes)}`,
    );
  }
  const params = countParams(config, setup.method);
  let stateEntries: number;
  let projectorEntries = 0;
  let limiterEntries = 0;
  if (optimizer.kind === "adam") {
    stateEntries = 2 * params.trainable;
  } else if (optimizer.kind === "galore") {
    if (setup.method.kind !== "dense") {
      throw new ConfigError(
        `optimizer galore needs method "dense" (it projects full gradients), got ` +
          `${show(setup.method.kind)}`,
      );
    }
    const r = checkRank(config, optimizer.rank, "galore", true);
    let blockStates = 0;
    for (const { shape: [m, n] } of blockLinearShapes(config)) {
      projectorEntries += config.layers * Math.min(m, n) * r;
      blockStates += config.layers * 2 * r * Math.max(m, n);
    }
    stateEntries = 2 * (params.trainable - params.byPart.blocks) + blockStates;
  } else if (optimizer.kind === "fira" || optimizer.kind === "apollo") {
    const e = scalingEntries(config, setup.method, optimizer);
    stateEntries = 2 * (params.trainable - params.byPart.blocks) + e.blockStates;
    projectorEntries = e.projector;
    limiterEntries = e.limiter;
  } else {
    throw new ConfigError(
      `optimizer.kind must be "adam", "galore", "fira" or "apollo", got ${
        show((optimizer as { kind?: unknown }).kind)
      }`,
    );
  }
  const weights = params.total * sizes.weight;
  const optimizerStates = stateEntries * stateBytes + limiterEntries * sizes.weight;
  const indices = params.nnz * sizes.index;
  const projector = projectorEntries * sizes.weight;
  return {
    weights,
    optimizerStates,
    indices,
    projector,
    total: weights + optimizerStates + indices + projector,
    params,
  };
}

// Block-linear entries of Fira and APOLLO: moments, projectors (Fira only) and limiter norms.
function scalingEntries(
  config: LlamaConfig,
  method: LinearMethod,
  spec: ScalingOptimizerSpec,
): { blockStates: number; projector: number; limiter: number } {
  if (method.kind !== "dense") {
    throw new ConfigError(
      `optimizer ${spec.kind} needs method "dense" (it projects full gradients), got ` +
        `${show(method.kind)}`,
    );
  }
  const r = checkRank(config, spec.rank, spec.kind);
  const out = { blockStates: 0, projector: 0, limiter: 0 };
  for (const { shape: [m, n] } of blockLinearShapes(config)) {
    out.blockStates += config.layers * 2 * r * Math.max(m, n);
    if (spec.kind === "fira") out.projector += config.layers * Math.min(m, n) * r;
    if (spec.limiter !== false) out.limiter += config.layers;
  }
  return out;
}
