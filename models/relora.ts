/**
 * ReLoRA's periodic merge over a whole model: every block's frozen W absorbs its adapter, and the
 * adapter restarts (B = 0, A re-drawn), so training continues in a new low-rank direction with the
 * function unchanged.
 * @module
 */
import { Rng } from "../core/rng.ts";
import type { Tensor } from "../core/tensor.ts";
import { reloraMerge } from "../optim/refactor.ts";
import { ConfigError } from "./errors.ts";
import { linearScale, type ReLoRALinearParams } from "./linear.ts";
import type { LayerParams, LlamaModel, LlamaParams } from "./llama.ts";
import { blockLinearShapes } from "./method.ts";

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
  const names = blockLinearShapes(model.config).map((l) => l.name);
  const layers = params.layers.map((p, i) => {
    // Buffers are plain objects built by initLlama; the merge is their only writer.
    const buffers = model.buffers.layers[i] as Record<string, Tensor>;
    const next: Record<string, unknown> = { ...p };
    for (const name of names) {
      const { A, B } = p[name] as ReLoRALinearParams;
      const W = buffers[name];
      if (W === undefined) throw new ConfigError(`mergeRelora: layer ${i} has no frozen ${name}`);
      const m = reloraMerge(W, B, A, s, { seed: rng.nextU32(), donate: false });
      W.dispose();
      buffers[name] = m.w;
      if (opts.donate ?? true) {
        A.dispose();
        B.dispose();
      }
      next[name] = { A: m.a, B: m.b };
    }
    return next as LayerParams;
  });
  return { ...params, layers };
}
