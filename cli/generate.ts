/**
 * Text generation from a training checkpoint: rebuild the model from the checkpoint's run config,
 * then sample token by token (greedy, or temperature + top-k with a seeded generator).
 *
 * By default a KV cache (models/kv_cache.ts) runs the prompt once and then one token per step,
 * with every block linear merged into its dense weight first (models/merge.ts); `cache: false`
 * runs a full forward over the last `window` tokens for every new token instead (O(window²)
 * attention per step), the reference the cached path is tested against. Either way a step costs
 * one GPU sync to read the logits back.
 * @module
 */
import { Rng } from "../core/rng.ts";
import { scope, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { LlamaConfig } from "../models/config.ts";
import {
  disposeModel,
  hiddenStates,
  type LlamaBuffers,
  type LlamaModel,
  type LlamaParams,
} from "../models/llama.ts";
import { matmul } from "../ops/matmul.ts";
import { slice } from "../ops/shape.ts";
import { disposeCache, extend, type KVCache } from "../models/kv_cache.ts";
import { denseModel } from "../models/merge.ts";
import { loadCheckpoint } from "./checkpoint.ts";
import { linearMethod, type RunConfig } from "./run_config.ts";

/** How the next token is chosen. */
export interface SamplingOptions {
  /** Pick the most likely token (ignores temperature, topK and the generator). */
  greedy?: boolean;
  /** Softmax temperature; values at or below 1e-6 behave as greedy. Default 1. */
  temperature?: number;
  /** Sample only among the k most likely tokens (0 or undefined = all). */
  topK?: number;
}

/** The index of the largest value (the first one on ties, so results are reproducible). */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/**
 * Chooses a token id from one position's logits on the CPU. Deterministic for a given generator
 * state: ties in top-k are broken by the lower id, and exactly one `nextFloat` is drawn per call
 * (none when greedy).
 */
export function sampleToken(logits: ArrayLike<number>, opts: SamplingOptions, rng: Rng): number {
  const temperature = opts.temperature ?? 1;
  if (opts.greedy || temperature <= 1e-6) return argmax(logits);
  const n = logits.length;
  const k = opts.topK && opts.topK > 0 ? Math.min(opts.topK, n) : n;
  let ids = Array.from({ length: n }, (_, i) => i);
  if (k < n) ids = ids.sort((a, b) => logits[b] - logits[a] || a - b).slice(0, k);
  // Subtracting the max keeps exp() finite at small temperatures.
  let max = -Infinity;
  for (const i of ids) max = Math.max(max, logits[i]);
  const w = ids.map((i) => Math.exp((logits[i] - max) / temperature));
  const total = w.reduce((a, b) => a + b, 0);
  let u = rng.nextFloat() * total;
  for (let j = 0; j < ids.length; j++) {
    u -= w[j];
    if (u < 0) return ids[j];
  }
  // Rounding can leave u a hair above zero after the last weight.
  return ids[ids.length - 1];
}

/** A model rebuilt from a checkpoint, ready for {@link generate}. */
export interface LoadedModel {
  /** Shapes, method and fixed buffers. */
  model: LlamaModel;
  /** Trained weights. */
  params: LlamaParams;
  /** The checkpoint's run settings. */
  run: RunConfig;
  /** Optimizer steps the checkpoint was trained for. */
  step: number;
}

/**
 * Loads `path` (a checkpoint file, or a run folder holding `checkpoint.safetensors`); the
 * optimizer state is not loaded. Errors name the file and what is wrong with it.
 */
export async function loadModel(path: string): Promise<LoadedModel> {
  // A folder is a run's --out; the file inside has a fixed name.
  let file = path;
  try {
    if ((await Deno.stat(path)).isDirectory) file = `${path}/checkpoint.safetensors`;
  } catch {
    throw new Error(`checkpoint ${path} does not exist`);
  }
  if (file !== path && !(await Deno.stat(file).catch(() => null))) {
    throw new Error(`${path} holds no checkpoint.safetensors`);
  }
  const ck = await loadCheckpoint(file, { optState: false });
  const run = ck.meta.run as RunConfig | undefined;
  const cfg = run?.model as LlamaConfig | undefined;
  if (!run || !cfg || typeof cfg.vocabSize !== "number" || typeof run.method !== "string") {
    tree.dispose([ck.params, ck.buffers]);
    throw new Error(`${file}: checkpoint metadata has no run config (corrupt checkpoint?)`);
  }
  return {
    model: { config: cfg, method: linearMethod(run), buffers: ck.buffers as LlamaBuffers },
    params: ck.params as LlamaParams,
    run,
    step: ck.step,
  };
}

/** Frees a loaded model's tensors. */
export function disposeLoaded(m: LoadedModel): void {
  disposeModel({ params: m.params, buffers: m.model.buffers });
}

/**
 * Logits of the last position for `ids` (one GPU sync). Only that position goes through the
 * lm_head, so a long window at a 32000-word vocabulary never forms [T, V] logits.
 */
export async function nextLogits(
  model: LlamaModel,
  params: LlamaParams,
  ids: readonly number[],
): Promise<Float32Array> {
  const t = ids.length;
  const last = scope(() => {
    const tokens = tensor(Int32Array.from(ids), [1, t], "i32");
    const h = hiddenStates(model, params, tokens);
    const row = slice(h, [0, t - 1, 0], [1, 1, model.config.hidden]);
    return matmul(row, params.lmHead, { transB: true });
  });
  try {
    return (await last.data()) as Float32Array;
  } finally {
    last.dispose();
  }
}

/** Options of {@link generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate. */
  tokens: number;
  /** Most tokens the forward sees (the context is cut to the last `window`). */
  window: number;
  /** Seed of the sampling generator. */
  seed: number;
  /** Called with each new token id as soon as it is chosen (e.g. to stream text). */
  onToken?: (id: number) => void | Promise<void>;
  /** Stop when this id is chosen (the tokenizer's end of text); it is neither returned nor streamed. */
  stopAt?: number;
  /**
   * Use the KV cache (default true). The cached path sees the same context as the full recompute
   * while prompt + generated tokens fit the window; past it, it restarts from the last half window
   * (one prefill) rather than sliding by one token, so its tokens may differ from there on.
   */
  cache?: boolean;
}

/** Generates `opts.tokens` ids after `prompt` (ids, non-empty) and returns them. */
export async function generate(
  loaded: { model: LlamaModel; params: LlamaParams },
  prompt: readonly number[],
  opts: GenerateOptions,
): Promise<number[]> {
  if (prompt.length === 0) throw new Error("generate: the prompt has no tokens");
  const vocab = loaded.model.config.vocabSize;
  const bad = prompt.find((id) => !(Number.isInteger(id) && id >= 0 && id < vocab));
  // The GPU embedding would silently read zeros for an out-of-range id.
  if (bad !== undefined) throw new Error(`generate: token id ${bad} is outside [0, ${vocab})`);
  const rng = new Rng(opts.seed);
  const ids = [...prompt];
  const out: number[] = [];
  const next = opts.cache === false
    ? { logits: () => nextLogits(loaded.model, loaded.params, ids.slice(-opts.window)), done() {} }
    : cachedLogits(loaded, ids, opts.window);
  try {
    for (let i = 0; i < opts.tokens; i++) {
      const id = sampleToken(await next.logits(), opts, rng);
      if (id === opts.stopAt) break;
      ids.push(id);
      out.push(id);
      await opts.onToken?.(id);
    }
  } finally {
    next.done();
  }
  return out;
}

/**
 * Next-token logits for the growing list `ids` (appended to by the caller between calls), from a
 * KV cache over a dense copy of the model: the first call prefills the last `window` ids, each
 * later call runs the one id added since; a cache that reaches `window` restarts from the last
 * half window. `done` frees the cache and the dense copy.
 */
function cachedLogits(
  loaded: { model: LlamaModel; params: LlamaParams },
  ids: readonly number[],
  window: number,
): { logits(): Promise<Float32Array>; done(): void } {
  const dense = denseModel(loaded.model, loaded.params);
  let cache: KVCache | null = null;
  return {
    async logits() {
      const full = cache !== null && cache.length >= window;
      if (full) disposeCache(cache!);
      const step = cache && !full
        ? extend(dense.model, dense.params, cache, ids.slice(-1))
        : extend(
          dense.model,
          dense.params,
          null,
          ids.slice(full ? -Math.ceil(window / 2) : -window),
        );
      cache = step.cache;
      try {
        return (await step.logits.data()) as Float32Array;
      } finally {
        step.logits.dispose();
      }
    },
    done() {
      if (cache) disposeCache(cache);
      dense.dispose();
    },
  };
}

/** Incremental decoding for streaming output; see {@link textStream}. */
export interface TextStream {
  /** Adds an id; returns the text that became printable (possibly ""). */
  push(id: number): string;
  /** Returns whatever is still held back (call once at the end). */
  flush(): string;
}

/**
 * Turns a stream of ids into printable text pieces. Decodes everything so far and returns only
 * the new suffix, holding it back while it ends in U+FFFD (possibly a multi-byte character whose
 * remaining bytes are still to come), so the printed pieces add up to the decoded whole.
 */
export function textStream(decode: (ids: readonly number[]) => string): TextStream {
  const ids: number[] = [];
  let printed = "";
  const take = (final: boolean): string => {
    const text = decode(ids);
    if (!final && text.endsWith("\uFFFD")) return "";
    // A tokenizer that rewrites earlier text is not streamable; the whole text wins at the end.
    if (!text.startsWith(printed)) return final ? `\n${text}` : "";
    const piece = text.slice(printed.length);
    printed = text;
    return piece;
  };
  return {
    push(id) {
      ids.push(id);
      return take(false);
    },
    flush: () => take(true),
  };
}
