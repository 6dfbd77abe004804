/**
 * Writes a model as a Hugging Face folder: `config.json`, `generation_config.json`,
 * `model.safetensors` and the tokenizer's files. Format `hf` is a plain `LlamaForCausalLM`, every
 * block linear merged into its dense weight on the device; format `sltrain` keeps SLTrain's
 * factors (B, A, V and the support I of every linear) so training can continue as SLTrain.
 * Tensors stream from the device to the file one at a time (one merged weight alive at once), and
 * the folder appears atomically: everything is written into a temporary sibling that is renamed
 * into place only when complete.
 * @module
 */
import { convert } from "../core/convert.ts";
import { scope, streamBytes, type Tensor } from "../core/tensor.ts";
import type { LlamaModel, LlamaParams } from "../models/llama.ts";
import type { SLTrainLinearParams } from "../models/linear.ts";
import { denseWeight } from "../models/merge.ts";
import { blockLinearShapes } from "../models/method.ts";
import type { TokenizerFiles } from "../data/tokenizer_export.ts";
import { HF_NAMES, hfConfigJson, type SLTrainSection } from "./hf_format.ts";
import type { SafetensorsDType, TensorSource } from "./safetensors.ts";
import { writeSafetensorsStream } from "./safetensors.ts";

/** The export cannot be done as asked (output exists, wrong format for the method). */
export class ExportError extends Error {
  /** Error class name. */
  override name = "ExportError";
}

/** Options of {@link exportHf}. */
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

/** What {@link exportHf} wrote. */
export interface ExportResult {
  /** Files in the folder. */
  readonly files: readonly string[];
  /** Bytes of model.safetensors. */
  readonly weightBytes: number;
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

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/**
 * Writes `model` with `params` to the new folder `out` (which must not exist). Nothing appears at
 * `out` unless everything was written: a failure removes the temporary folder.
 */
export async function exportHf(
  model: LlamaModel,
  params: LlamaParams,
  out: string,
  opts: ExportOptions,
): Promise<ExportResult> {
  const { method } = model;
  if (opts.format === "sltrain" && method.kind !== "sltrain") {
    throw new ExportError(
      `--format sltrain needs an SLTrain model, this one is ${method.kind}; use --format hf`,
    );
  }
  if (await exists(out)) {
    throw new ExportError(`${out} already exists; choose a new folder (nothing is overwritten)`);
  }
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
  const sources = exportSources(model, params, opts);
  const tmp = `${out.replace(/\/+$/, "")}.tmp-${crypto.randomUUID()}`;
  await Deno.mkdir(tmp);
  try {
    const text = (v: unknown) => JSON.stringify(v, null, 2) + "\n";
    await Deno.writeTextFile(`${tmp}/config.json`, text(config));
    await Deno.writeTextFile(
      `${tmp}/generation_config.json`,
      text({
        _from_model_config: true,
        ...(tok?.bos === undefined ? {} : { bos_token_id: tok.bos }),
        ...(tok ? { eos_token_id: tok.eos } : {}),
      }),
    );
    for (const [name, bytes] of tok?.files ?? []) await Deno.writeFile(`${tmp}/${name}`, bytes);
    await writeSafetensorsStream(`${tmp}/model.safetensors`, sources, { format: "pt" });
    const files: string[] = [];
    for await (const e of Deno.readDir(tmp)) files.push(e.name);
    const weightBytes = (await Deno.stat(`${tmp}/model.safetensors`)).size;
    // Checked again: another process may have created it meanwhile (rename would replace a file).
    if (await exists(out)) throw new ExportError(`${out} appeared while exporting; not replaced`);
    await Deno.rename(tmp, out);
    return { files: files.sort(), weightBytes };
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
