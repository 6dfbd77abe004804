/**
 * Analytic parameter counts and memory estimates (weights + optimizer states + sparse indices +
 * GaLore projectors), in the paper's accounting (bf16 values, int64 indices, as in SLTrain's and
 * GaLore's Table 2) or ours: the bytes this library allocates, tensor by tensor (f32 or bf16
 * weights, f32 or 8-bit block-quantized Adam states, u32 indices), equal to the measured bytes.
 * Activations and workspace are not counted.
 * @module
 */
import { storageBytes } from "../core/dtype.ts";
import { MIN_8BIT_SIZE, QUANT_BLOCK } from "../ops/quant_maps.ts";
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
 * Table 2. `ours`: what this library allocates, tensor by tensor: weights in the setup's
 * `weights` dtype (norm gains f32), states as the optimizer keeps them, u32 indices, f32 GaLore
 * projectors, every tensor a whole number of 32-bit words. Or explicit sizes per element.
 */
export type Accounting = "paper" | "ours" | ByteSizes;

/** Byte sizes of the two named accountings (`ours` with f32 weights and states). */
export const ACCOUNTING: Readonly<Record<"paper" | "ours", ByteSizes>> = Object.freeze({
  paper: Object.freeze({ weight: 2, state: 2, index: 8 }),
  ours: Object.freeze({ weight: 4, state: 4, index: 4 }),
});

/**
 * The optimizer whose states are counted. `adam`: two moments per trainable value. `galore`: for
 * each block linear [m, n] a projector min(m, n)·rank and two moments rank·max(m, n); every other
 * parameter gets plain Adam. `states: "8bit"` (8-bit Adam, GaLore8bit): a tensor's moments of at
 * least 4096 elements are one byte each plus an f32 absmax per 256 (smaller ones keep the
 * accounting's state size). `bytesPerState` instead counts every state entry at that size (e.g. a
 * fractional average); projectors stay at weight size. `fira` and `apollo`: see
 * {@link ScalingOptimizerSpec}.
 */
export type OptimizerSpec =
  | {
    readonly kind: "adam";
    readonly states?: "f32" | "8bit";
    readonly bytesPerState?: number;
    /**
     * f32 values kept per trainable tensor besides its moments (Stable-SPAM's 3 running
     * statistics); default 0.
     */
    readonly scalarsPerTensor?: number;
  }
  | {
    readonly kind: "galore";
    readonly rank: number;
    readonly states?: "f32" | "8bit";
    readonly bytesPerState?: number;
  }
  | ScalingOptimizerSpec;

/**
 * Fira: GaLore's states, plus the norm-growth limiter's stored norm (one f32 value per block
 * linear, unless `limiter` is false). APOLLO: two moments rank·max(m, n) and the limiter's norm per
 * block linear, no projector (it is regenerated from a seed); APOLLO-Mini is rank 1. Both need
 * rank < min(m, n) of every block linear.
 */
export interface ScalingOptimizerSpec {
  /** Which of the two. */
  readonly kind: "fira" | "apollo";
  /** Rank of the projection. */
  readonly rank: number;
  /** Whether the norm-growth limiter (and its stored norm) is on; default true. */
  readonly limiter?: boolean;
  /** Storage of the moments, as for the other kinds. */
  readonly states?: "f32" | "8bit";
  /** Bytes per moment entry, as for the other kinds. */
  readonly bytesPerState?: number;
}

/** What to estimate: the block parameterization, the optimizer and the weights' storage. */
export interface TrainingSetup {
  /** Parameterization of the block linears. */
  readonly method: LinearMethod;
  /** Optimizer whose states are counted; defaults to `{ kind: "adam" }`. */
  readonly optimizer?: OptimizerSpec;
  /**
   * Storage of the weights under the `ours` accounting (default f32): with `bf16`, every 2-D
   * weight (embedding, lm_head, block weights and factors, ReLoRA's frozen W) and SLTrain's
   * values V; norm gains stay f32. The other accountings have their own sizes.
   */
  readonly weights?: "f32" | "bf16";
}

/** Estimated bytes by kind; values can be fractional only with a fractional `bytesPerState`. */
export interface MemoryEstimate {
  /** All stored values (`params.total`, frozen ones included) at their storage size. */
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

/** One stored tensor of a model, as the estimate sees it. */
interface StoredTensor {
  /** Elements. */
  readonly size: number;
  /** `weight`: stored in the weight dtype; `norm`: a norm gain (f32 in ours); `index`: u32. */
  readonly kind: "weight" | "norm" | "index";
  /** Updated by the optimizer (has states). */
  readonly trainable: boolean;
  /** [m, n] of a dense block weight (what GaLore projects). */
  readonly dense?: readonly [number, number];
}

// Every tensor a model stores under `method`, in no particular order.
function storedTensors(config: LlamaConfig, method: LinearMethod): StoredTensor[] {
  const { vocabSize, hidden, layers } = config;
  const out: StoredTensor[] = [
    { size: vocabSize * hidden, kind: "weight", trainable: true },
    { size: vocabSize * hidden, kind: "weight", trainable: true },
  ];
  for (let i = 0; i < 2 * layers + 1; i++) {
    out.push({ size: hidden, kind: "norm", trainable: true });
  }
  const weight = (size: number, trainable = true): StoredTensor => ({
    size,
    kind: "weight",
    trainable,
  });
  for (let l = 0; l < layers; l++) {
    for (const { shape: [m, n] } of blockLinearShapes(config)) {
      if (method.kind === "dense") {
        out.push({ size: m * n, kind: "weight", trainable: true, dense: [m, n] });
        continue;
      }
      out.push(weight(method.rank * n), weight(m * method.rank));
      if (method.kind === "relora") out.push(weight(m * n, false));
      if (method.kind === "sltrain") {
        const nnz = sparseNnz(method.delta, m, n);
        out.push(weight(nnz), { size: nnz, kind: "index", trainable: false });
      }
    }
  }
  return out;
}

function checkSizes(sizes: ByteSizes | undefined, accounting: unknown): ByteSizes {
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
  return sizes;
}

const OPTIMIZER_KINDS = ["adam", "galore", "fira", "apollo"];

function checkOptimizer(optimizer: OptimizerSpec, setup: TrainingSetup, config: LlamaConfig) {
  if (!OPTIMIZER_KINDS.includes(optimizer.kind)) {
    throw new ConfigError(
      `optimizer.kind must be "adam", "galore", "fira" or "apollo", got ${
        show((optimizer as { kind?: unknown }).kind)
      }`,
    );
  }
  const { states, bytesPerState } = optimizer;
  if (states !== undefined && states !== "f32" && states !== "8bit") {
    throw new ConfigError(`optimizer.states must be "f32" or "8bit", got ${show(states)}`);
  }
  if (bytesPerState !== undefined) {
    if (
      typeof bytesPerState !== "number" || !(bytesPerState > 0) || !Number.isFinite(bytesPerState)
    ) {
      throw new ConfigError(
        `optimizer.bytesPerState must be a positive byte count, got ${show(bytesPerState)}`,
      );
    }
    if (states !== undefined) {
      throw new ConfigError("optimizer: give either states or bytesPerState, not both");
    }
  }
  if (setup.weights !== undefined && setup.weights !== "f32" && setup.weights !== "bf16") {
    throw new ConfigError(`weights must be "f32" or "bf16", got ${show(setup.weights)}`);
  }
  if (optimizer.kind !== "adam") {
    if (setup.method.kind !== "dense") {
      throw new ConfigError(
        `optimizer ${optimizer.kind} needs method "dense" (it projects full gradients), got ` +
          `${show(setup.method.kind)}`,
      );
    }
    // GaLore clamps its rank per matrix; Fira and APOLLO need rank < min(m, n) everywhere.
    checkRank(config, optimizer.rank, optimizer.kind, optimizer.kind === "galore");
  }
}

/**
 * Estimates training memory for weights, optimizer states, sparse indices and GaLore projectors,
 * tensor by tensor. Under `ours` it is what this library allocates, to the byte: every tensor
 * takes whole 32-bit words (a bf16 tensor of n values ceil(n/2)·4 bytes; 8-bit codes ceil(n/4)·4;
 * one f32 absmax per 256 codes). GaLore projects dense block gradients, so it requires the `dense`
 * method. `allocated` maps each tensor's bytes to what the device allocates for it (e.g. the
 * pool's `sizeClass`); by default the bytes themselves. Throws {@link ConfigError} for an invalid
 * method, GaLore rank, byte size or dtype.
 */
export function estimateMemory(
  config: LlamaConfig,
  setup: TrainingSetup,
  accounting: Accounting,
  allocated: (bytes: number) => number = (b) => b,
): MemoryEstimate {
  const ours = accounting === "ours";
  const sizes = checkSizes(
    typeof accounting === "string" ? ACCOUNTING[accounting] : accounting,
    accounting,
  );
  const optimizer: OptimizerSpec = setup.optimizer ?? { kind: "adam" };
  checkOptimizer(optimizer, setup, config);
  const params = countParams(config, setup.method);
  const weightDType = setup.weights ?? "f32";
  const stored = (kind: StoredTensor["kind"], n: number) =>
    allocated(
      !ours
        ? n * (kind === "index" ? sizes.index : sizes.weight)
        : storageBytes(kind === "index" ? "u32" : kind === "norm" ? "f32" : weightDType, n),
    );
  // Both moments of a tensor of n elements.
  const moments = (n: number) => {
    if (optimizer.bytesPerState !== undefined) return 2 * allocated(n * optimizer.bytesPerState);
    if (optimizer.states === "8bit" && n >= MIN_8BIT_SIZE) {
      const codes = ours ? storageBytes("u8", n) : n;
      return 2 * (allocated(codes) + allocated(4 * Math.ceil(n / QUANT_BLOCK)));
    }
    return 2 * allocated(n * sizes.state);
  };
  const r = optimizer.kind === "adam" ? 0 : optimizer.rank;
  // Projectors and limiter norms are f32 whatever the weights (ours), at weight size otherwise.
  const f32Bytes = ours ? 4 : sizes.weight;
  const hasProjector = optimizer.kind === "galore" || optimizer.kind === "fira";
  const hasLimiter = (optimizer.kind === "fira" || optimizer.kind === "apollo") &&
    optimizer.limiter !== false;
  const scalars = optimizer.kind === "adam" ? optimizer.scalarsPerTensor ?? 0 : 0;
  if (!(Number.isInteger(scalars) && scalars >= 0)) {
    throw new ConfigError(
      `optimizer.scalarsPerTensor must be a non-negative integer, got ${show(scalars)}`,
    );
  }
  let weights = 0, optimizerStates = 0, indices = 0, projector = 0;
  for (const t of storedTensors(config, setup.method)) {
    if (t.kind === "index") indices += stored("index", t.size);
    else weights += stored(t.kind, t.size);
    if (!t.trainable) continue;
    optimizerStates += scalars * f32Bytes;
    if (r > 0 && t.dense) {
      const [m, n] = t.dense;
      const rank = Math.min(r, m, n);
      if (hasProjector) projector += allocated(Math.min(m, n) * rank * f32Bytes);
      optimizerStates += moments(rank * Math.max(m, n)) + (hasLimiter ? allocated(f32Bytes) : 0);
    } else {
      optimizerStates += moments(t.size);
    }
  }
  return {
    weights,
    optimizerStates,
    indices,
    projector,
    total: weights + optimizerStates + indices + projector,
    params,
  };
}
