/**
 * Measured device memory of a model, read from the allocator's live-byte counter, to set beside
 * the analytic `estimateMemory` figures.
 * @module
 */
import { convert } from "../core/convert.ts";
import { memoryStats } from "../core/memory.ts";
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { LlamaConfig } from "./config.ts";
import { initLlama, type Llama, paramPaths } from "./llama.ts";
import type { LinearMethod } from "./method.ts";

/** Live device bytes by kind, each a difference of `memoryStats().liveBytes`. */
export interface MeasuredMemory {
  /**
   * Trainable tensors (weights, factors, sparse values): the estimate's `params.trainable` at the
   * weight size (all of its `weights` except for ReLoRA).
   */
  readonly params: number;
  /**
   * Non-trainable tensors: SLTrain's u32 supports (the estimate's `indices`) or ReLoRA's frozen
   * weights (the estimate's `weights` less the trainable part).
   */
  readonly buffers: number;
  /** What `opts.extra` kept alive (e.g. optimizer state); 0 without it. */
  readonly extra: number;
  /** Sum of the above. */
  readonly total: number;
}

/** Options of {@link measureMemory}. */
export interface MeasureMemoryOptions {
  /** Weight seed (default 0); sizes do not depend on it. */
  readonly seed?: number;
  /**
   * Storage of the weights (default f32). `bf16` stores every 2-D weight (embedding, lm_head,
   * block weights and factors, ReLoRA's frozen W) and SLTrain's values in bf16, norm gains in f32:
   * what `estimateMemory`'s `weights: "bf16"` counts.
   */
  readonly weights?: "f32" | "bf16";
  /**
   * Called on the built model; the tensors it returns are counted as `extra`, then disposed. The
   * hook for optimizer state: `extra: (m) => adamw.init(m.params)`.
   */
  readonly extra?: (model: Llama) => unknown;
}

/**
 * `model` with its weights in `dtype` (the built f32 tensors converted and freed): every parameter
 * but the norm gains, and the float buffers (ReLoRA's frozen W); u32 supports stay.
 */
function withWeights(model: Llama, dtype: "f32" | "bf16"): Llama {
  if (dtype === "f32") return model;
  const to = (t: Tensor) => {
    const c = convert(t, dtype);
    t.dispose();
    return c;
  };
  const params = tree.unflatten(
    model.params,
    paramPaths(model.params).map((e) => e.role === "norm" ? e.tensor : to(e.tensor)),
  );
  const buffers = tree.map(model.buffers, (t) => (t.dtype === "f32" ? to(t) : t));
  return { ...model, params, buffers };
}

/**
 * Builds `config` under `method` on the device, measures what it keeps alive, and frees it all
 * again. Each figure is the drop in live bytes when that part is disposed, and the parts must add
 * up to the growth during construction, so a transient tensor leaked by init would be caught
 * (thrown as an Error) rather than silently counted. Needs `init()`; issues no GPU sync.
 */
export function measureMemory(
  config: LlamaConfig,
  method: LinearMethod,
  opts: MeasureMemoryOptions = {},
): MeasuredMemory {
  const live = () => memoryStats().liveBytes;
  // Bytes freed by disposing `tensors` (a view shares its source's storage, so counting the
  // drop is exact where summing sizes could double count).
  const freed = (tensors: readonly Tensor[]) => {
    const before = live();
    for (const t of tensors) t.dispose();
    return before - live();
  };
  const start = live();
  const model = withWeights(initLlama(config, method, opts.seed ?? 0), opts.weights ?? "f32");
  const built = live() - start;
  let extra = 0;
  let extraGrowth = 0;
  let buffers = 0;
  let params = 0;
  try {
    if (opts.extra) {
      const before = live();
      const kept = tree.flatten(opts.extra(model));
      extraGrowth = live() - before;
      extra = freed(kept);
    }
  } finally {
    // Buffers first, so each drop is attributable even if extra() disposed nothing of its own.
    buffers = freed(tree.flatten(model.buffers));
    params = freed(tree.flatten(model.params));
  }
  if (params + buffers !== built) {
    throw new Error(
      `measureMemory: building the model grew live memory by ${built} bytes, but its params and ` +
        `buffers hold ${params + buffers}: init leaked a temporary`,
    );
  }
  if (extra !== extraGrowth) {
    throw new Error(
      `measureMemory: extra() grew live memory by ${extraGrowth} bytes, but its result holds ` +
        `${extra}: it leaked a temporary or returned tensors it did not create`,
    );
  }
  return { params, buffers, extra, total: params + buffers + extra };
}
