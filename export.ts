/**
 * `deno run -A export.ts --checkpoint runs/x --out hf/x`: write a train.ts checkpoint as a Hugging
 * Face `LlamaForCausalLM` folder (config.json, model.safetensors, tokenizer files), every SLTrain,
 * low-rank or ReLoRA linear merged into its dense weight; or, with `--format sltrain`, keep
 * SLTrain's factors. `--help` lists every flag; cli/hf_export.ts does the work.
 * @module
 */
import { initGpu } from "./cli/gpu.ts";
import { tokenizerFiles } from "./data/tokenizer_export.ts";
import { FlagError, type FlagSpec, parseFlagsWith, renderHelp, runCli } from "./cli/flags.ts";
import { exists } from "./cli/exists.ts";
import { fmtBytes } from "./cli/format.ts";
import { exportHf } from "./cli/hf_export.ts";
import { disposeAny, loadAnyModel, modelTokenizer } from "./cli/load_any.ts";

/** Flags of export.ts, in --help order. */
export const EXPORT_FLAGS: Record<string, FlagSpec> = {
  checkpoint: {
    type: "string",
    help:
      "a train.ts --out folder, its checkpoint.safetensors, or a Hugging Face folder (required)",
  },
  out: { type: "string", help: "the folder to create; must not exist (required)" },
  dtype: { type: "string", default: "f32", help: "weights in the file: f32 or bf16" },
  format: {
    type: "string",
    default: "hf",
    help: "hf (dense LlamaForCausalLM) or sltrain (B, A, V and support of every linear)",
  },
  tokenizer: {
    type: "string",
    default: "the model folder's tokenizer.json, else by vocab size: 256 bytes, 32000 llama",
    help: "bytes, llama, or a tokenizer.json (or a folder holding one)",
  },
  help: { type: "boolean", help: "show this help" },
};

/** The help text of export.ts. */
export function exportHelp(): string {
  return renderHelp(
    [
      "Export a train.ts checkpoint as a Hugging Face LLaMA folder.",
      "",
      "usage: deno run -A export.ts --checkpoint RUN_DIR --out HF_DIR [--dtype f32|bf16] [--format hf|sltrain]",
    ],
    EXPORT_FLAGS,
  );
}

function choice<T extends string>(flag: string, v: unknown, options: readonly T[]): T {
  if (v === undefined) return options[0];
  if (!options.includes(v as T)) {
    throw new FlagError(`--${flag} ${v}: expected ${options.join(" or ")}`);
  }
  return v as T;
}

async function main(argv: string[]): Promise<number> {
  const flags = parseFlagsWith(EXPORT_FLAGS, argv);
  if (flags.help) {
    console.log(exportHelp());
    return 0;
  }
  const { checkpoint, out } = flags;
  if (typeof checkpoint !== "string" || checkpoint === "") {
    throw new FlagError("--checkpoint is required (a train.ts --out folder or checkpoint file)");
  }
  if (typeof out !== "string" || out === "") throw new FlagError("--out is required");
  const dtype = choice("dtype", flags.dtype, ["f32", "bf16"] as const);
  const format = choice("format", flags.format, ["hf", "sltrain"] as const);
  if (await exists(out)) {
    throw new FlagError(
      `--out ${out} already exists; choose a new folder (nothing is overwritten)`,
    );
  }
  await initGpu();
  const loaded = await loadAnyModel(checkpoint);
  try {
    const tok = await modelTokenizer(flags.tokenizer, loaded);
    const files = await tokenizerFiles(tok);
    const t0 = performance.now();
    const r = await exportHf(loaded.model, loaded.params, out, {
      dtype,
      format,
      maxPositions: loaded.maxSeq,
      tokenizer: files,
    });
    console.error(`${loaded.label}; tokenizer: ${files.description}`);
    console.log(
      `wrote ${out} (${format}, ${dtype}): ${r.files.join(", ")}; model.safetensors ${
        fmtBytes(r.weightBytes)
      } in ${((performance.now() - t0) / 1000).toFixed(1)}s`,
    );
  } finally {
    disposeAny(loaded);
  }
  return 0;
}

if (import.meta.main) await runCli(main);
