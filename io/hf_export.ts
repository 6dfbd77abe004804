/**
 * A model as the files of a Hugging Face folder: `config.json`, `generation_config.json`,
 * `model.safetensors` and the tokenizer's files. Format `hf` is a plain `LlamaForCausalLM`, every
 * block linear merged into its dense weight on the device; format `sltrain` keeps SLTrain's
 * factors (B, A, V and the support I of every linear) so training can continue as SLTrain.
 * Tensors stream from the device to the sink one at a time (one merged weight alive at once).
 * Any sinks will do (memory in a browser); `cli/hf_export.ts` writes a folder atomically on Deno.
 * @module
 */
import { convert } from "../core/convert.ts";
import { scope, streamBytes, type Tensor } from "../core/tensor.ts";
import type { LlamaModel, LlamaParams } from "../models/llama.ts";
import type { SLTrainLinearParams } from "../models/linear.ts";
import { denseWeight } from "../models/merge.ts";
import { blockLinearShapes } from "../models/method.ts";
import type { TokenizerFiles } from "../data/tokenizer_export.ts";
import type { ByteSink } from "./bytes.ts";
import { HF_NAMES, hfConfigJson, type SLTrainSection } from "./hf_format.ts";
import { type SafetensorsDType, type TensorSource, writeSafetensors } from "./safetensors.ts";

/** The export cannot be done as asked (output exists, wrong format for the method). */
export class ExportError extends Error {
  /** Error class name. */
  override name = "ExportError";
}

/** Options of {@link writeHfFiles}. */
export interface ExportOptions {
  /** Dtype of the floating-point weights in the file. */
  readonly dtype: "f32" | "bf16";
  /** `hf`: dense LlamaForCausalLM; `sltrain`: SLTrain factors (an SLTrain model only). */
  readonly format: "hf" | "sltrain";
  /** Context length for config.json when the model config has none (e.g. the run's --seq). */
  readonly maxPositions: number;
  /** Tokenizer files to put beside the weights (and the ids config.json names). */
  readonly tokenizer?: TokenizerFiles;
}

/** A file source that makes its tensor only when the writer reaches it, and frees it after. */
function source(
  name: string,
  shape: readonly number[],
  dtype: SafetensorsDType,
  make: () => Tensor,
): TensorSource {
  const bytes = shape.reduce((a, b) => a * b, 1) * (dtype === "BF16" ? 2 : 4);
  return {
    name,
    dtype,
    shape: [...shape],
    write: async (sink) => {
      const t = scope(() => (dtype === "BF16" ? convert(make(), "bf16") : make()));
      try {
        // A bf16 tensor of odd size ends in a padding half-word the file does not keep.
        await streamBytes(t, (b, off) => sink(b.subarray(0, Math.min(b.byteLength, bytes - off))));
      } finally {
        t.dispose();
      }
    },
  };
}

/** The tensors of model.safetensors, in model order, each made on demand. */
export function exportSources(
  model: LlamaModel,
  params: LlamaParams,
  opts: Pick<ExportOptions, "dtype" | "format">,
): TensorSource[] {
  const { config, method, buffers } = model;
  const float: SafetensorsDType = opts.dtype === "bf16" ? "BF16" : "F32";
  const keep = (t: Tensor) => () => t.view(t.shape);
  const { vocabSize: v, hidden: d } = config;
  const out: TensorSource[] = [source(HF_NAMES.embed, [v, d], float, keep(params.embed))];
  const shapes = blockLinearShapes(config);
  params.layers.forEach((layer, i) => {
    out.push(source(HF_NAMES.attnNorm(i), [d], float, keep(layer.attnNorm)));
    out.push(source(HF_NAMES.mlpNorm(i), [d], float, keep(layer.mlpNorm)));
    for (const { name, shape } of shapes) {
      const prefix = HF_NAMES.linear(i, name);
      const lin = layer[name];
      const buffer = buffers.layers[i][name];
      if (opts.format === "hf") {
        out.push(source(`${prefix}.weight`, shape, float, () => denseWeight(method, lin, buffer)));
        continue;
      }
      const { A, B, V } = lin as SLTrainLinearParams;
      out.push(source(`${prefix}.B`, B.shape, float, keep(B)));
      out.push(source(`${prefix}.A`, A.shape, float, keep(A)));
      out.push(source(`${prefix}.V`, V.shape, float, keep(V)));
      out.push(source(`${prefix}.I`, buffer!.shape, "U32", keep(buffer!)));
    }
  });
  out.push(source(HF_NAMES.finalNorm, [d], float, keep(params.finalNorm)));
  out.push(source(HF_NAMES.lmHead, [v, d], float, keep(params.lmHead)));
  return out;
}

/** Throws {@link ExportError} when `format` cannot be written for `model` (sltrain needs SLTrain). */
export function checkExportFormat(model: LlamaModel, format: ExportOptions["format"]): void {
  if (format === "sltrain" && model.method.kind !== "sltrain") {
    throw new ExportError(
      `--format sltrain needs an SLTrain model, this one is ${model.method.kind}; use --format hf`,
    );
  }
}

/**
 * Writes the files of a Hugging Face folder for `model` with `params`: `open(name)` gives the sink
 * of each file (called once per file, in order; `model.safetensors` last). Throws
 * {@link ExportError} for `format: "sltrain"` on a model of another method, before any file.
 */
export async function writeHfFiles(
  model: LlamaModel,
  params: LlamaParams,
  opts: ExportOptions,
  open: (name: string) => Promise<ByteSink & { close?(): Promise<void> | void }>,
): Promise<void> {
  const { method } = model;
  checkExportFormat(model, opts.format);
  const sltrain: SLTrainSection | undefined = method.kind === "sltrain" && opts.format === "sltrain"
    ? {
      rank: method.rank,
      delta: method.delta,
      alpha: method.alpha,
      scale: method.alpha / method.rank,
      seed: method.seed,
      index: "row * in_features + col, u32, sorted ascending, unique",
    }
    : undefined;
  const tok = opts.tokenizer;
  const config = hfConfigJson(model.config, {
    dtype: opts.dtype,
    maxPositions: opts.maxPositions,
    bos: tok?.bos,
    eos: tok?.eos,
    sltrain,
  });
  const generation = {
    _from_model_config: true,
    ...(tok?.bos === undefined ? {} : { bos_token_id: tok.bos }),
    ...(tok ? { eos_token_id: tok.eos } : {}),
  };
  const text = (v: unknown) => new TextEncoder().encode(JSON.stringify(v, null, 2) + "\n");
  const files: [string, (sink: ByteSink) => Promise<void>][] = [
    ["config.json", (s) => s.write(text(config))],
    ["generation_config.json", (s) => s.write(text(generation))],
    ...[...(tok?.files ?? [])].map(([name, bytes]) =>
      [name, (s: ByteSink) => s.write(bytes)] as [string, (sink: ByteSink) => Promise<void>]
    ),
    [
      "model.safetensors",
      (s) => writeSafetensors(s, exportSources(model, params, opts), { format: "pt" }),
    ],
  ];
  for (const [name, write] of files) {
    const sink = await open(name);
    await write(sink);
    await sink.close?.();
  }
}
