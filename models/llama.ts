/**
 * The LLaMA decoder of the reference code: token embedding, pre-norm blocks (RMSNorm, causal
 * multi-head attention with rotate-half RoPE, SwiGLU MLP, residuals), a final RMSNorm and an untied
 * lm_head, no biases. The seven block linears are parameterized by a {@link LinearMethod}.
 * @module
 */
import { Rng } from "../core/rng.ts";
import { recompute } from "../core/tape.ts";
import { ones, randomNormal, scope, type Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { addRmsNorm } from "../ops/add_rms_norm.ts";
import { add } from "../ops/elementwise.ts";
import { embedding } from "../ops/embedding.ts";
import { flashAttention } from "../ops/flash_attention.ts";
import { lmHeadCrossEntropy, lmHeadLossSums, type LossSums } from "../ops/lm_head.ts";
import { matmul } from "../ops/matmul.ts";
import { rmsNorm } from "../ops/rmsnorm.ts";
import { reshape } from "../ops/shape.ts";
import { swiglu } from "../ops/swiglu.ts";
import { headDim, type LlamaConfig, validateConfig } from "./config.ts";
import { ConfigError } from "./errors.ts";
import {
  applyLinear,
  initLinear,
  linearBuffer,
  type LinearParams,
  type WeightDType,
} from "./linear.ts";
import {
  BLOCK_LINEARS,
  type BlockLinearName,
  blockLinearShapes,
  type LinearMethod,
  validateMethod,
} from "./method.ts";

/**
 * Trainable tensors of one decoder block. A type alias (not an interface) so that it is
 * assignable to `TensorTree` for `valueAndGrad`.
 */
export type LayerParams = {
  /** RMSNorm gain before attention [D]. */
  readonly attnNorm: Tensor;
  /** Query projection. */
  readonly q: LinearParams;
  /** Key projection. */
  readonly k: LinearParams;
  /** Value projection. */
  readonly v: LinearParams;
  /** Attention output projection. */
  readonly o: LinearParams;
  /** RMSNorm gain before the MLP [D]. */
  readonly mlpNorm: Tensor;
  /** SwiGLU gate projection [F, D]. */
  readonly gate: LinearParams;
  /** SwiGLU up projection [F, D]. */
  readonly up: LinearParams;
  /** SwiGLU down projection [D, F]. */
  readonly down: LinearParams;
};

/** Every trainable tensor of the model: the tree `valueAndGrad` differentiates. */
export type LlamaParams = {
  /** Token embedding [V, D], N(0, initStd). */
  readonly embed: Tensor;
  /** Decoder blocks, in order. */
  readonly layers: readonly LayerParams[];
  /** Final RMSNorm gain [D]. */
  readonly finalNorm: Tensor;
  /** Untied output head [V, D], N(0, initStd). */
  readonly lmHead: Tensor;
};

/**
 * Non-trainable tensors of one block by linear name: the SLTrain supports (u32 [nnz]) or ReLoRA's
 * frozen weights (f32 [out, in], replaced by `mergeRelora`); empty for dense and lowrank.
 */
export type LayerBuffers = { readonly [name in BlockLinearName]?: Tensor };

/** Non-trainable tensors of the model, keyed like the params (e.g. `layers[i].q`). */
export type LlamaBuffers = { readonly layers: readonly LayerBuffers[] };

/** What the forward needs besides the trainable params. */
export interface LlamaModel {
  /** Shapes and constants. */
  readonly config: LlamaConfig;
  /** Parameterization of the block linears. */
  readonly method: LinearMethod;
  /** Non-trainable tensors (SLTrain supports, ReLoRA frozen weights). */
  readonly buffers: LlamaBuffers;
}

/** An initialized model: a {@link LlamaModel} plus its trainable params. */
export interface Llama extends LlamaModel {
  /** Trainable tensors; pass these (or an optimizer's updated copy) to {@link forward}. */
  readonly params: LlamaParams;
}

/** A language-modelling batch: `targets` are the next tokens, -100 where nothing is predicted. */
export interface Batch {
  /** Token ids, i32 [B, T]. */
  readonly inputs: Tensor;
  /** Target ids, i32 [B, T]; -100 (the ignore index) for padding. */
  readonly targets: Tensor;
}

/** Target value that contributes no loss (padding), as in PyTorch and the reference code. */
export const IGNORE_INDEX: number = -100;

/** Options of {@link initLlama}. */
export interface InitLlamaOptions {
  /**
   * Storage of the weights (default f32). Under `bf16`, every 2-D weight (embedding, lm_head,
   * dense block weights, low-rank factors A and B, ReLoRA's frozen W) and SLTrain's values V are
   * bf16; the norm gains stay f32. A gain is a vector of numbers near 1, where bf16's spacing is
   * 2^-7 ≈ 0.008: an AdamW step of lr ≈ 1e-4 (late in a cosine schedule) moves a gain by about lr,
   * less than half that spacing, so round-to-nearest would drop every such update and the gains
   * would stop training; they are tiny (hidden-sized), so f32 costs nothing.
   */
  readonly dtype?: WeightDType;
}

/**
 * Builds a model with weights drawn from `seed`. Norms start at one; embedding and lm_head are
 * N(0, initStd); block linears follow `initLinear` (see `models/linear.ts`). Under
 * `dtype: "bf16"` the same seed draws the same values, rounded to bf16.
 *
 * Determinism: every tensor draws from its own generator, seeded in a fixed order from `seed`
 * (embed, lm_head, then each block's q, k, v, o, gate, up, down), so the same seed gives the same
 * weights on every machine and the embedding and lm_head do not change with the method. SLTrain
 * supports are seeded the same way from `method.seed` alone, so two weight seeds share a support.
 * A ReLoRA model's frozen W equals the dense model's w under the same seed.
 */
export function initLlama(
  config: LlamaConfig,
  method: LinearMethod,
  seed: number,
  opts: InitLlamaOptions = {},
): Llama {
  const dtype = opts.dtype ?? "f32";
  if (dtype !== "f32" && dtype !== "bf16") {
    throw new ConfigError(`initLlama: dtype must be "f32" or "bf16", got ${JSON.stringify(dtype)}`);
  }
  const cfg = validateConfig(config);
  validateMethod(cfg, method);
  const root = new Rng(seed);
  const supportRng = method.kind === "sltrain" ? new Rng(method.seed) : null;
  const { vocabSize: vocab, hidden: d, initStd: std } = cfg;
  const shapes = blockLinearShapes(cfg);
  // scope: a throw midway (e.g. a tensor over the device's limits) frees what was built so far.
  return scope(() => {
    const embed = randomNormal([vocab, d], 0, std, { seed: root.nextU32(), dtype });
    const lmHead = randomNormal([vocab, d], 0, std, { seed: root.nextU32(), dtype });
    const layers: LayerParams[] = [];
    const layerBuffers: LayerBuffers[] = [];
    for (let i = 0; i < cfg.layers; i++) {
      const lin: Record<string, LinearParams> = {};
      const sup: Record<string, Tensor> = {};
      for (const { name, shape: [out, inF] } of shapes) {
        const init = initLinear(method, out, inF, root.nextU32(), {
          std,
          supportSeed: supportRng?.nextU32(),
          dtype,
        });
        lin[name] = init.params;
        const buffer = linearBuffer(init);
        if (buffer) sup[name] = buffer;
      }
      layers.push({
        attnNorm: ones([d]),
        q: lin.q,
        k: lin.k,
        v: lin.v,
        o: lin.o,
        mlpNorm: ones([d]),
        gate: lin.gate,
        up: lin.up,
        down: lin.down,
      });
      layerBuffers.push(sup);
    }
    const params: LlamaParams = { embed, layers, finalNorm: ones([d]), lmHead };
    return { config: cfg, method, params, buffers: { layers: layerBuffers } };
  });
}

function checkTokens(what: string, t: Tensor): [number, number] {
  if (t.dtype !== "i32" && t.dtype !== "u32") {
    throw new DTypeError(`${what} must be i32 or u32 [B, T], got ${t.dtype} ${fmtShape(t.shape)}`);
  }
  if (t.rank !== 2) throw new ShapeError(`${what} must be [B, T], got ${fmtShape(t.shape)}`);
  return [t.shape[0], t.shape[1]];
}

/** Options of {@link hiddenStates}. */
export interface HiddenStatesOptions {
  /**
   * Recompute each decoder block in backward instead of keeping its activations on the tape
   * (`recompute` per block): the tape then holds the blocks' inputs and outputs, and backward
   * holds one block's activations at a time, for one extra forward of every block. Gradients are
   * bit-identical. No effect without a running tape.
   */
  readonly recompute?: boolean;
}

/**
 * The final-norm output [B, T, D] for token ids `tokens` (i32 [B, T]): everything of the model but
 * the lm_head. Issues kernels only, no GPU sync. Token ids outside [0, V) give zero embeddings (the
 * GPU cannot throw); validate them on the CPU beforehand if that matters.
 */
export function hiddenStates(
  model: LlamaModel,
  params: LlamaParams,
  tokens: Tensor,
  opts: HiddenStatesOptions = {},
): Tensor {
  const { config, method, buffers } = model;
  const [b, t] = checkTokens("hiddenStates: tokens", tokens);
  if (params.layers.length !== config.layers || buffers.layers.length !== config.layers) {
    throw new ConfigError(
      `hiddenStates: config has ${config.layers} layers, params ${params.layers.length}, buffers ` +
        `${buffers.layers.length}`,
    );
  }
  const { heads: h, hidden: d, rmsNormEps: eps, ropeBase: base } = config;
  const dh = headDim(config);
  // Views, no copies: attention reads the projections' [B, T, D] as [B, T, H, Dh] and writes back.
  const heads = (y: Tensor) => reshape(y, [b, t, h, dh]);
  const block = (x: Tensor, p: LayerParams, sup: LayerBuffers) => {
    const lin = (name: BlockLinearName, y: Tensor) => applyLinear(method, p[name], sup[name], y);
    const n1 = rmsNorm(x, p.attnNorm, eps);
    const [q, k, v] = (["q", "k", "v"] as const).map((name) => heads(lin(name, n1)));
    const attn = reshape(flashAttention(q, k, v, { ropeBase: base }), [b, t, d]);
    const { sum: hAttn, normed: n2 } = addRmsNorm(x, lin("o", attn), p.mlpNorm, eps);
    return add(hAttn, lin("down", swiglu(lin("gate", n2), lin("up", n2))));
  };
  return scope(() => {
    let x = embedding(params.embed, tokens);
    params.layers.forEach((p, i) => {
      const sup = buffers.layers[i];
      // One scope per block: without a tape its activations die here, not at the end.
      x = opts.recompute
        ? recompute(
          ([h, ...leaves]) => block(h, tree.unflatten(p, leaves), sup),
          [x, ...tree.flatten(p)],
        )
        : scope(() => block(x, p, sup));
    });
    return rmsNorm(x, params.finalNorm, eps);
  });
}

/**
 * Logits [B, T, V] for token ids `tokens` (i32 [B, T]) under `params`. Issues kernels only: no GPU
 * sync, so it can sit inside a training step. At B·T·V beyond a storage binding (e.g. 2048 tokens
 * at V = 32000) use {@link loss} or {@link evalLossSums}, which never form all logits.
 */
export function forward(model: LlamaModel, params: LlamaParams, tokens: Tensor): Tensor {
  return scope(() => matmul(hiddenStates(model, params, tokens), params.lmHead, { transB: true }));
}

/** Options of {@link loss} and {@link evalLossSums}. */
export interface LossOptions extends HiddenStatesOptions {
  /** Bytes of one block of logits in the fused head (default `LM_HEAD_CHUNK_BYTES`, 32 MiB). */
  readonly chunkBytes?: number;
}

function checkBatch(what: string, batch: Batch): void {
  const [b, t] = checkTokens(`${what}: batch.inputs`, batch.inputs);
  const [tb, tt] = checkTokens(`${what}: batch.targets`, batch.targets);
  if (tb !== b || tt !== t) {
    throw new ShapeError(
      `${what}: targets ${fmtShape(batch.targets.shape)} must match inputs ${
        fmtShape(batch.inputs.shape)
      }`,
    );
  }
}

/**
 * Mean cross-entropy (a scalar) of the next-token predictions over the targets that are not -100.
 * `batch.targets` are already aligned with `batch.inputs` (position t predicts `targets[t]`). The
 * head and the loss are one chunked op (`lmHeadCrossEntropy`): neither forward nor backward holds
 * more than one chunk of logits, and the count of targets stays on the device.
 */
export function loss(
  model: LlamaModel,
  params: LlamaParams,
  batch: Batch,
  opts: LossOptions = {},
): Tensor {
  checkBatch("loss", batch);
  return scope(() =>
    lmHeadCrossEntropy(
      hiddenStates(model, params, batch.inputs, opts),
      params.lmHead,
      batch.targets,
      {
        ignoreIndex: IGNORE_INDEX,
        chunkBytes: opts.chunkBytes,
      },
    )
  );
}

/**
 * The summed cross-entropy over the non-ignored targets and their count, both device scalars, for
 * token-weighted evaluation: accumulate both over batches with `add` and divide once at the end,
 * one readback in all. Not recorded on a tape; chunked like {@link loss}.
 */
export function evalLossSums(
  model: LlamaModel,
  params: LlamaParams,
  batch: Batch,
  opts: LossOptions = {},
): LossSums {
  checkBatch("evalLossSums", batch);
  return scope(() =>
    lmHeadLossSums(hiddenStates(model, params, batch.inputs), params.lmHead, batch.targets, {
      ignoreIndex: IGNORE_INDEX,
      chunkBytes: opts.chunkBytes,
    })
  );
}

/** How an optimizer should treat a parameter. */
export type ParamRole = "embed" | "lmHead" | "norm" | "block";

/** One trainable tensor with its path in the params tree. */
export interface ParamEntry {
  /** Dotted path, e.g. `embed`, `layers.0.attnNorm`, `layers.1.q.A`, `layers.1.up.w`. */
  readonly path: string;
  /** The tensor. */
  readonly tensor: Tensor;
  /** `block` for the tensors of the seven block linears; norms of blocks are `norm`. */
  readonly role: ParamRole;
  /** Block index, for block tensors and block norms. */
  readonly layer?: number;
  /** Which block linear, for `block` tensors. */
  readonly linear?: BlockLinearName;
  /**
   * Which tensor of the linear: `w` (dense, a 2-D weight GaLore may project), `A`/`B` (low-rank
   * factors, which refactorization re-balances; under `relora` the adapter that `mergeRelora`
   * folds into the frozen W) or `V` (SLTrain sparse values).
   */
  readonly factor?: "w" | "A" | "B" | "V";
}

const LINEARS = new Set<string>(BLOCK_LINEARS);

/**
 * Every trainable tensor with its path and role, in leaf order (see `core/tree.ts`), so entry i
 * matches the i-th gradient of `valueAndGrad` and the i-th `onGrad` index of a tape.
 */
export function paramPaths(params: LlamaParams): ParamEntry[] {
  const tensors = tree.flatten(params);
  return tree.paths(params).map((p, i) => classify(p.split("."), tensors[i]));
}

/** One block linear of a model: where it is and its trainable tensors. */
export interface BlockLinear {
  /** Block index. */
  readonly layer: number;
  /** Which of the seven linears. */
  readonly name: BlockLinearName;
  /** Its trainable tensors (`w`, or `A`/`B`, plus `V` under SLTrain). */
  readonly params: LinearParams;
}

/** The block linears of `params`, layer by layer in {@link BLOCK_LINEARS} order. */
export function blockLinears(params: LlamaParams): BlockLinear[] {
  return params.layers.flatMap((layer, i) =>
    BLOCK_LINEARS.map((name) => ({ layer: i, name, params: layer[name] }))
  );
}

/**
 * Params with every block linear replaced by `fn(linear, name, layer)`, called in
 * {@link blockLinears} order. Norms, embedding and head are shared with `params`, not copied, and
 * nothing is disposed: `fn` decides what happens to the old tensors.
 */
export function mapLinears(
  params: LlamaParams,
  fn: (linear: LinearParams, name: BlockLinearName, layer: number) => LinearParams,
): LlamaParams {
  const layers = params.layers.map((layer, i) => {
    const next: Record<string, unknown> = { ...layer };
    for (const name of BLOCK_LINEARS) next[name] = fn(layer[name], name, i);
    return next as LayerParams;
  });
  return { ...params, layers };
}

function classify(path: string[], tensor: Tensor): ParamEntry {
  const p = path.join(".");
  if (path.length === 1 && (path[0] === "embed" || path[0] === "lmHead")) {
    return { path: p, tensor, role: path[0] };
  }
  if (p === "finalNorm") return { path: p, tensor, role: "norm" };
  if (path[0] === "layers" && path.length >= 3) {
    const layer = Number(path[1]);
    if (path.length === 3 && (path[2] === "attnNorm" || path[2] === "mlpNorm")) {
      return { path: p, tensor, role: "norm", layer };
    }
    const f = path[3];
    if (
      path.length === 4 && LINEARS.has(path[2]) &&
      (f === "w" || f === "A" || f === "B" || f === "V")
    ) {
      return {
        path: p,
        tensor,
        role: "block",
        layer,
        linear: path[2] as BlockLinearName,
        factor: f,
      };
    }
  }
  throw new ConfigError(`paramPaths: unexpected parameter path "${p}"`);
}

/** Disposes every tensor of a model (params and buffers). Idempotent. */
export function disposeModel(
  model: { readonly params?: LlamaParams; readonly buffers: LlamaBuffers },
): void {
  tree.dispose([model.params, model.buffers]);
}
