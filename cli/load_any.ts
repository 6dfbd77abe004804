/**
 * One loader for what sample.ts and export.ts accept as `--checkpoint`: a train.ts run folder (or
 * its checkpoint file), or a Hugging Face LLaMA folder (or an SLTrain-factor folder).
 * @module
 */
import { type Tokenizer, tokenizerByName } from "../data/tokenizer.ts";
import { disposeModel, type LlamaModel, type LlamaParams } from "../models/llama.ts";
import { FlagError } from "./flags.ts";
import { loadModel } from "./generate.ts";
import { isHfFolder } from "./hf_format.ts";
import { loadHf } from "./hf_import.ts";

/** A model from a checkpoint or a Hugging Face folder, and what describes it. */
export interface AnyModel {
  /** Config, method and buffers. */
  readonly model: LlamaModel;
  /** Weights. */
  readonly params: LlamaParams;
  /** One line for the user, e.g. `sltrain on tiny after 20 steps`. */
  readonly label: string;
  /** The longest context the model was made for (config, else the run's --seq). */
  readonly maxSeq: number;
  /** A folder holding the model's tokenizer.json, when the model came with one. */
  readonly tokenizerDir?: string;
}

async function isFile(path: string): Promise<boolean> {
  return await Deno.stat(path).then((s) => s.isFile, () => false);
}

/** Loads a run folder, a checkpoint file, or a Hugging Face folder (detected by its config.json). */
export async function loadAnyModel(path: string): Promise<AnyModel> {
  if (await isHfFolder(path)) {
    const hf = await loadHf(path);
    return {
      model: hf.model,
      params: hf.params,
      label: `${hf.model.method.kind === "sltrain" ? "SLTrain factors" : "LlamaForCausalLM"} ` +
        `from ${path}`,
      maxSeq: hf.model.config.maxSeqLen ?? 2048,
      tokenizerDir: await isFile(`${path}/tokenizer.json`) ? path : undefined,
    };
  }
  const ck = await loadModel(path);
  return {
    model: ck.model,
    params: ck.params,
    label: `${ck.run.method} on ${ck.run.modelName} after ${ck.step} steps`,
    maxSeq: ck.model.config.maxSeqLen ?? ck.run.seq,
  };
}

/** Frees a loaded model's tensors. */
export function disposeAny(m: AnyModel): void {
  disposeModel({ params: m.params, buffers: m.model.buffers });
}

/**
 * The tokenizer of a model with `vocab` ids: `--tokenizer` when given, else the model folder's own
 * tokenizer.json, else the preset its vocabulary implies (256 bytes, 32000 llama). Its vocabulary
 * must be the model's; errors are {@link FlagError}s naming the flag.
 */
export async function modelTokenizer(
  flag: string | boolean | undefined,
  m: Pick<AnyModel, "model" | "tokenizerDir">,
): Promise<Tokenizer> {
  const vocab = m.model.config.vocabSize;
  const name = typeof flag === "string"
    ? flag
    : m.tokenizerDir ?? (vocab === 256 ? "bytes" : vocab === 32000 ? "llama" : null);
  if (name === null) {
    throw new FlagError(`the model's vocabulary has ${vocab} ids; pass --tokenizer`);
  }
  const tok = await tokenizerByName(name).catch((e) => {
    throw new FlagError(`--tokenizer: ${(e as Error).message}`);
  });
  if (tok.vocabSize !== vocab) {
    throw new FlagError(
      `--tokenizer ${name} has ${tok.vocabSize} ids but the model has ${vocab}`,
    );
  }
  return tok;
}
