/**
 * The per-method parameterization of a block linear (y = x·Wᵀ, W of shape `[out, in]`): its
 * trainable tensors, its fixed buffer (SLTrain support or ReLoRA's frozen W), their
 * initialization, and the forward dispatch.
 * @module
 */
import { Rng } from "../core/rng.ts";
import { randomNormal, randomUniform, type Tensor, tensor, zeros } from "../core/tensor.ts";
import { matmul } from "../ops/matmul.ts";
import { reloraLinear } from "../ops/relora_linear.ts";
import { lowRankLinear, sltrainLinear } from "../ops/sltrain_linear.ts";
import { sampleSupport } from "../ops/support.ts";
import { ConfigError } from "./errors.ts";
import { checkKind, type LinearMethod } from "./method.ts";

/** Trainable tensors of a dense linear: the weight `w` [out, in]. */
export type DenseLinearParams = { readonly w: Tensor };

/** Trainable tensors of a low-rank linear, W = s·B·A: `A` [rank, in], `B` [out, rank]. */
export type LowRankLinearParams = { readonly A: Tensor; readonly B: Tensor };

/**
 * Trainable tensors of an SLTrain linear, W = s·B·A ⊕_I V: `A` [rank, in], `B` [out, rank], and
 * `V` [nnz], one value per index of the (non-trainable) support I.
 */
export type SLTrainLinearParams = { readonly A: Tensor; readonly B: Tensor; readonly V: Tensor };

/**
 * Trainable tensors of a ReLoRA linear, W_eff = W + s·B·A with W frozen (a model buffer): the
 * adapter `A` [rank, in] and `B` [out, rank].
 */
export type ReLoRALinearParams = { readonly A: Tensor; readonly B: Tensor };

/** Trainable tensors of a block linear under any method. */
export type LinearParams =
  | DenseLinearParams
  | LowRankLinearParams
  | SLTrainLinearParams
  | ReLoRALinearParams;

/** What {@link initLinear} creates. */
export interface LinearInit {
  /** Trainable tensors (what an optimizer updates and `valueAndGrad` differentiates). */
  readonly params: LinearParams;
  /** SLTrain's fixed support I as sorted flat u32 indices `row·in + col` [nnz]; absent otherwise. */
  readonly support?: Tensor;
  /** ReLoRA's frozen dense W [out, in], changed only by merges; absent otherwise. */
  readonly frozen?: Tensor;
}

/** The linear's non-trainable tensor, as a model keeps it in its buffers (if it has one). */
export function linearBuffer(init: LinearInit): Tensor | undefined {
  return init.support ?? init.frozen;
}

/** Storage dtype of model weights: `f32`, or `bf16` (two per 32-bit word, f32 arithmetic). */
export type WeightDType = "f32" | "bf16";

/** Options of {@link initLinear}. */
export interface InitLinearOptions {
  /** Std of the dense N(0, std) init (default 0.02, the reference `initializer_range`). */
  readonly std?: number;
  /**
   * Storage of every tensor of the linear but SLTrain's u32 support (default f32). bf16 values
   * are the f32 draws rounded to nearest even (the same draws under the same seed).
   */
  readonly dtype?: WeightDType;
  /**
   * Seed of the SLTrain support (default: `method.seed`). A model passes one per linear so that
   * supports differ between linears but depend on `method.seed` alone, not on the weight seed.
   */
  readonly supportSeed?: number;
}

/** The low-rank scale s = alpha / rank (1 for dense, which has no factors). */
export function linearScale(method: LinearMethod): number {
  return method.kind === "dense" ? 1 : method.alpha / method.rank;
}

/**
 * Creates the trainable tensors (and SLTrain support) of one `[out, in]` linear, drawing values
 * from `rng` (advanced) or a fresh generator seeded with it:
 * - dense: `w` ~ N(0, std);
 * - lowrank: `A` ~ U(±1/√in), `B` ~ U(±1/√rank), both Kaiming-uniform(a=√5) as in the reference
 *   low-rank baseline. B is not zero: with every block linear a pure product B·A, B = 0 makes all
 *   block gradients exactly zero (a saddle that training never leaves);
 * - sltrain: `A` ~ U(±1/√in), `B` = 0, `V` ~ U(±1/√in), support of ⌊delta·out·in⌋ sorted distinct
 *   indices (B = 0 is safe here: W = V on the support is already nonzero);
 * - relora: frozen `W` ~ N(0, std) drawn first (the same W as `dense` under the same seed), then
 *   `A` ~ U(±1/√in) and `B` = 0, as in ReLoRA/LoRA (B = 0 is safe: W carries the function).
 */
export function initLinear(
  method: LinearMethod,
  out: number,
  inF: number,
  rng: Rng | number,
  opts: InitLinearOptions = {},
): LinearInit {
  const draw = { rng: typeof rng === "number" ? new Rng(rng) : rng, dtype: opts.dtype ?? "f32" };
  const kind = checkKind((method as { kind?: unknown }).kind);
  if (kind === "dense") {
    return { params: { w: randomNormal([out, inF], 0, opts.std ?? 0.02, draw) } };
  }
  const m = method as Exclude<LinearMethod, { kind: "dense" }>;
  const aBound = 1 / Math.sqrt(inF);
  if (m.kind === "relora") {
    const frozen = randomNormal([out, inF], 0, opts.std ?? 0.02, draw);
    const A = randomUniform([m.rank, inF], -aBound, aBound, draw);
    return { params: { A, B: zeros([out, m.rank], draw.dtype) }, frozen };
  }
  if (m.kind === "lowrank") {
    const A = randomUniform([m.rank, inF], -aBound, aBound, draw);
    const bBound = 1 / Math.sqrt(m.rank);
    const B = randomUniform([out, m.rank], -bBound, bBound, draw);
    return { params: { A, B } };
  }
  const indices = sampleSupport(out, inF, m.delta, opts.supportSeed ?? m.seed);
  const A = randomUniform([m.rank, inF], -aBound, aBound, draw);
  const B = zeros([out, m.rank], draw.dtype);
  const V = randomUniform([indices.length], -aBound, aBound, draw);
  return { params: { A, B, V }, support: tensor(indices, [indices.length], "u32") };
}

function need(params: LinearParams, keys: readonly string[], kind: string): void {
  for (const k of keys) {
    if (!((params as Record<string, unknown>)[k] !== undefined)) {
      throw new ConfigError(
        `${kind} linear needs params {${keys.join(", ")}}, got {${Object.keys(params).join(", ")}}`,
      );
    }
  }
}

/**
 * y = x·Wᵀ for x [..., in] -> [..., out], with W as `method` parameterizes it: a folded matmul for
 * dense, `lowRankLinear` (never forms B·A) for lowrank, `sltrainLinear` (W built transiently) for
 * sltrain, `reloraLinear` (W + s·B·A built transiently, W not differentiated) for relora. Scale
 * alpha/rank. `buffer` is the linear's non-trainable tensor: the support for sltrain, the frozen W
 * for relora. Throws {@link ConfigError} when `params` or `buffer` does not match the method.
 */
export function applyLinear(
  method: LinearMethod,
  params: LinearParams,
  buffer: Tensor | undefined,
  x: Tensor,
): Tensor {
  if (method.kind === "dense") {
    need(params, ["w"], "dense");
    return matmul(x, (params as DenseLinearParams).w, { transB: true });
  }
  const s = linearScale(method);
  if (method.kind === "lowrank") {
    need(params, ["A", "B"], "lowrank");
    const p = params as LowRankLinearParams;
    return lowRankLinear(x, p.B, p.A, s);
  }
  if (method.kind === "relora") {
    need(params, ["A", "B"], "relora");
    if (buffer === undefined) throw new ConfigError("relora linear needs its frozen weight W");
    const p = params as ReLoRALinearParams;
    return reloraLinear(x, buffer, p.B, p.A, s);
  }
  need(params, ["A", "B", "V"], "sltrain");
  if (buffer === undefined) throw new ConfigError("sltrain linear needs its support tensor");
  const p = params as SLTrainLinearParams;
  return sltrainLinear(x, p.B, p.A, p.V, buffer, s, { keepWeight: method.keepWeight });
}
