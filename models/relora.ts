/**
 * ReLoRA's periodic merge, for one linear and over a whole model: the frozen W absorbs its adapter
 * and the adapter restarts (B = 0, A re-drawn), so training continues in a new low-rank direction
 * with the function unchanged.
 * @module
 */
import { convert } from "../core/convert.ts";
import { ShapeError } from "../core/errors.ts";
import { Rng } from "../core/rng.ts";
import { fmtShape } from "../core/shape.ts";
import { randomUniform, type Tensor, zeros } from "../core/tensor.ts";
import { mapN } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { ConfigError } from "./errors.ts";
import { linearScale, type ReLoRALinearParams } from "./linear.ts";
import { type LlamaModel, type LlamaParams, mapLinears } from "./llama.ts";

/** Result of {@link reloraMerge}. */
export interface Merged {
  /** W + scale·B·A. */
  w: Tensor;
  /** Fresh B: zeros, so the merged model computes the same function. */
  b: Tensor;
  /** Fresh A: Kaiming-uniform like `nn.Linear` (bound 1/√in). */
  a: Tensor;
}

/**
 * ReLoRA's merge: W ← W + scale·B·A, then B ← 0 and A re-drawn, so the function is unchanged and
 * the adapter starts a new low-rank direction. Reset the adapter's optimizer state afterwards
 * (a fresh `init`). On the GPU, no readback. With `donate` (default true) disposes W, B and A.
 */
export function reloraMerge(
  w: Tensor,
  b: Tensor,
  a: Tensor,
  scale: number,
  opts: { seed?: number; donate?: boolean } = {},
): Merged {
  const [out, inp] = w.shape;
  if (w.rank !== 2 || b.shape[0] !== out || a.shape[1] !== inp || b.shape[1] !== a.shape[0]) {
    throw new ShapeError(
      `reloraMerge: W ${fmtShape(w.shape)}, B ${fmtShape(b.shape)}, A ${fmtShape(a.shape)} ` +
        `do not fit W + B·A`,
    );
  }
  const ba = matmul(b, a);
  const sum = mapN("relora_merge", [w, ba], "v0 + c0 * v1", undefined, [scale]);
  ba.dispose();
  // Each tensor keeps its storage dtype (a bf16 W is rounded once, after the f32 sum).
  const merged = convert(sum, w.dtype as "f32" | "bf16");
  sum.dispose();
  const bound = 1 / Math.sqrt(inp);
  const fresh = {
    w: merged,
    b: zeros(b.shape, b.dtype),
    a: randomUniform(a.shape, -bound, bound, {
      seed: opts.seed ?? 0,
      dtype: a.dtype as "f32" | "bf16",
    }),
  };
  if (opts.donate ?? true) {
    w.dispose();
    b.dispose();
    a.dispose();
  }
  return fresh;
}

/** Options of {@link mergeRelora}. */
export interface MergeReloraOptions {
  /** Dispose the old adapter tensors (default true); the old frozen W is always disposed. */
  readonly donate?: boolean;
}

/**
 * Merges every block linear of a `relora` model: W ← W + s·B·A in `model.buffers` (replaced in
 * place: the model object stays valid for `forward`), and returns new params whose adapters are
 * B = 0 and A ~ U(±1/√in) drawn from `seed` (one generator per linear, in layer then q, k, v, o,
 * gate, up, down order). Non-block params are shared with `params`, not copied. The caller resets
 * the adapters' optimizer state and re-warms the learning rate. On the device, no readback.
 * Throws {@link ConfigError} for another method.
 */
export function mergeRelora(
  model: LlamaModel,
  params: LlamaParams,
  seed: number,
  opts: MergeReloraOptions = {},
): LlamaParams {
  const { method } = model;
  if (method.kind !== "relora") {
    throw new ConfigError(`mergeRelora needs a relora model, got method ${method.kind}`);
  }
  const s = linearScale(method);
  const rng = new Rng(seed);
  return mapLinears(params, (lin, name, i) => {
    // Buffers are plain objects built by initLlama; the merge is their only writer.
    const buffers = model.buffers.layers[i] as Record<string, Tensor>;
    const { A, B } = lin as ReLoRALinearParams;
    const W = buffers[name];
    if (W === undefined) throw new ConfigError(`mergeRelora: layer ${i} has no frozen ${name}`);
    const m = reloraMerge(W, B, A, s, { seed: rng.nextU32(), donate: false });
    W.dispose();
    buffers[name] = m.w;
    if (opts.donate ?? true) {
      A.dispose();
      B.dispose();
    }
    return { A: m.a, B: m.b };
  });
}
