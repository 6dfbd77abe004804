/**
 * Incremental decoding with a key/value cache: a prefill runs the prompt once and keeps every
 * layer's keys (after RoPE) and values; each later step runs one new token through the blocks,
 * attending to the cached keys and values, so a step costs O(context) instead of a full forward
 * over the context. A step multiplies dense weights with `matvecT` (one row; the tiled matmul would
 * compute 16). The block is the one of `hiddenStates` (models/llama.ts); a test holds the
 * prefill to the full forward's logits.
 * @module
 */
import { scope, type Tensor, tensor } from "../core/tensor.ts";
import { ShapeError } from "../core/errors.ts";
import { causalSelfAttention } from "../ops/attention.ts";
import { add, mul, mulScalar, silu } from "../ops/elementwise.ts";
import { embedding } from "../ops/embedding.ts";
import { matmul } from "../ops/matmul.ts";
import { matvecFits, matvecT } from "../ops/matvec.ts";
import { rmsNorm } from "../ops/rmsnorm.ts";
import { rope } from "../ops/rope.ts";
import { concat, reshape, slice, transpose } from "../ops/shape.ts";
import { softmax } from "../ops/softmax.ts";
import { headDim } from "./config.ts";
import { applyLinear } from "./linear.ts";
import type { LlamaModel, LlamaParams } from "./llama.ts";
import type { BlockLinearName } from "./method.ts";

/** Keys and values of every layer for the tokens seen so far (one sequence). */
export interface KVCache {
  /** Per layer, keys after RoPE [1, H, length, Dh]. */
  readonly keys: readonly Tensor[];
  /** Per layer, values [1, H, length, Dh]. */
  readonly values: readonly Tensor[];
  /** Tokens cached (the position of the next token). */
  readonly length: number;
}

/** What {@link extend} returns: the next-token logits and the grown cache. */
export interface Extended {
  /** Logits of the last new token [V] (f32). */
  readonly logits: Tensor;
  /** The cache including the new tokens (the input cache is disposed). */
  readonly cache: KVCache;
}

/** Frees a cache's tensors. */
export function disposeCache(cache: KVCache): void {
  for (const t of [...cache.keys, ...cache.values]) t.dispose();
}

/**
 * Runs `ids` through the model after the tokens in `cache` (null: none yet) and returns the last
 * new token's logits and the cache grown by `ids`, disposing the old cache. Either a prefill (no
 * cache, any number of ids; causal attention among them) or one step (a cache and exactly one id).
 * Issues kernels only; read the logits back to sample.
 */
export function extend(
  model: LlamaModel,
  params: LlamaParams,
  cache: KVCache | null,
  ids: readonly number[],
): Extended {
  const { config, method, buffers } = model;
  const t = ids.length;
  if (t === 0 || (cache !== null && t !== 1)) {
    throw new ShapeError(
      `extend: a prefill takes one or more ids, a cached step exactly one; got ${t} ids with ${
        cache ? `a cache of ${cache.length}` : "no cache"
      }`,
    );
  }
  const offset = cache?.length ?? 0;
  const { heads: h, hidden: d, rmsNormEps: eps, ropeBase: base } = config;
  const dh = headDim(config);
  // [1, T, D] <-> [1, H, T, Dh]; for one token both layouts are the same memory (no copy).
  const split = (y: Tensor) =>
    t === 1 ? reshape(y, [1, h, 1, dh]) : transpose(reshape(y, [1, t, h, dh]), [0, 2, 1, 3]);
  const merge = (y: Tensor) =>
    t === 1 ? reshape(y, [1, 1, d]) : reshape(transpose(y, [0, 2, 1, 3]), [1, t, d]);
  const { logits, keys, values } = scope(() => {
    const keys: Tensor[] = [];
    const values: Tensor[] = [];
    let x = embedding(params.embed, tensor(Int32Array.from(ids), [1, t], "i32"));
    params.layers.forEach((p, i) => {
      const sup = buffers.layers[i];
      const lin = (name: BlockLinearName, y: Tensor) => {
        const w = (p[name] as { w?: Tensor }).w;
        return w && t === 1 && matvecFits(w)
          ? matvecT(y, w)
          : applyLinear(method, p[name], sup[name], y);
      };
      const out = scope(() => {
        const n1 = rmsNorm(x, p.attnNorm, eps);
        const q = rope(split(lin("q", n1)), { base, offset });
        const kNew = rope(split(lin("k", n1)), { base, offset });
        const vNew = split(lin("v", n1));
        let k = kNew, v = vNew, attn: Tensor;
        if (cache === null) attn = causalSelfAttention(q, k, v);
        else {
          // One query sees every cached key: no mask needed.
          k = concat([cache.keys[i], kNew], 2);
          v = concat([cache.values[i], vNew], 2);
          const scores = mulScalar(matmul(q, k, { transB: true }), 1 / Math.sqrt(dh));
          attn = matmul(softmax(scores), v);
        }
        const hAttn = add(x, lin("o", merge(attn)));
        const n2 = rmsNorm(hAttn, p.mlpNorm, eps);
        return { x: add(hAttn, lin("down", mul(silu(lin("gate", n2)), lin("up", n2)))), k, v };
      });
      x = out.x;
      keys.push(out.k);
      values.push(out.v);
    });
    const last = slice(rmsNorm(x, params.finalNorm, eps), [0, t - 1, 0], [1, 1, d]);
    const head = matvecFits(params.lmHead)
      ? matvecT(last, params.lmHead)
      : matmul(last, params.lmHead, { transB: true });
    const logits = reshape(head, [config.vocabSize]);
    return { logits, keys, values };
  });
  if (cache) disposeCache(cache);
  return { logits, cache: { keys, values, length: offset + t } };
}
