/**
 * Every block linear folded into its dense weight W [out, in], on the device: what an exported
 * Hugging Face model stores and what cached generation multiplies by (one matmul per linear and
 * token instead of rebuilding s·B·A ⊕_I V for every token).
 * @module
 */
import { convert } from "../core/convert.ts";
import { scope, type Tensor } from "../core/tensor.ts";
import { mapN } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { scatterAdd } from "../ops/sparse.ts";
import { ConfigError } from "./errors.ts";
import {
  type DenseLinearParams,
  type LinearParams,
  linearScale,
  type LowRankLinearParams,
  type SLTrainLinearParams,
} from "./linear.ts";
import { type LlamaModel, type LlamaParams, mapLinears } from "./llama.ts";
import type { LinearMethod } from "./method.ts";

// Kernels compute in f32; a bf16 weight is widened first (exact).
const f32 = (t: Tensor) => t.dtype === "f32" ? t.view(t.shape) : convert(t, "f32");

/**
 * The dense weight W [out, in] (f32, a new tensor the caller owns) of one block linear: `w` for
 * dense, s·B·A for lowrank, s·B·A ⊕_I V for sltrain (the expression its forward builds: the scale
 * on B, then the product, then V added at the support), W + s·B·A for relora (`buffer` = the
 * frozen W). Not recorded on a tape.
 */
export function denseWeight(
  method: LinearMethod,
  params: LinearParams,
  buffer: Tensor | undefined,
): Tensor {
  return scope(() => {
    if (method.kind === "dense") return f32((params as DenseLinearParams).w);
    const { A, B } = params as LowRankLinearParams;
    const s = linearScale(method);
    if (method.kind === "relora") {
      if (!buffer) throw new ConfigError("denseWeight: a relora linear needs its frozen W");
      return mapN(
        "relora_merge",
        [f32(buffer), matmul(f32(B), f32(A))],
        "v0 + c0 * v1",
        undefined,
        [
          s,
        ],
      );
    }
    const sBA = matmul(mapN("merge_scale", [f32(B)], "v0 * c0", undefined, [s]), f32(A));
    if (method.kind === "lowrank") return sBA;
    if (!buffer) throw new ConfigError("denseWeight: an sltrain linear needs its support");
    return scatterAdd(sBA, buffer, f32((params as SLTrainLinearParams).V));
  });
}

/** A model whose block linears are all dense, and how to free what was made for it. */
export interface DenseCopy {
  /** The same config with `method: dense` and no buffers. */
  readonly model: LlamaModel;
  /** Merged weights; embedding, norms and head are the original tensors (shared, not copied). */
  readonly params: LlamaParams;
  /** Frees the merged weights only (a no-op for a model that was dense already). */
  dispose(): void;
}

/**
 * `model` with every block linear merged into its dense weight ({@link denseWeight}), on the device.
 * Computes the same function as `model` up to f32 rounding. A dense model is returned as it is.
 */
export function denseModel(model: LlamaModel, params: LlamaParams): DenseCopy {
  if (model.method.kind === "dense") return { model, params, dispose: () => {} };
  const made: Tensor[] = [];
  let merged: LlamaParams;
  try {
    merged = mapLinears(params, (lin, name, i) => {
      const w = denseWeight(model.method, lin, model.buffers.layers[i][name]);
      made.push(w);
      return { w };
    });
  } catch (e) {
    made.forEach((t) => t.dispose());
    throw e;
  }
  return {
    model: {
      config: model.config,
      method: { kind: "dense" },
      buffers: { layers: model.buffers.layers.map(() => ({})) },
    },
    params: merged,
    dispose: () => made.forEach((t) => t.dispose()),
  };
}
