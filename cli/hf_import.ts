/**
 * `train.ts --init DIR`: a Hugging Face LLaMA folder (or an SLTrain-factor folder) as the start of a
 * run; the conversion itself (`loadHf`) lives in `io/hf_import.ts`.
 * @module
 */
import { convert } from "../core/convert.ts";
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { WeightDType } from "../models/linear.ts";
import { type LlamaModel, type LlamaParams, paramPaths } from "../models/llama.ts";
import type { LinearMethod } from "../models/method.ts";
import { type HfLoaded, loadHf as loadFolder, type LoadHfOptions } from "../io/hf_import.ts";
import { FlagError, type RawFlags } from "./flags.ts";
import { dirFolder, type HfConfig, readHfConfig } from "./hf_format.ts";

export type { HfLoaded, LoadHfOptions } from "../io/hf_import.ts";

/** Loads the Hugging Face folder `dir` under `method` (see `loadHf` in `io/hf_import.ts`). */
export function loadHf(
  dir: string,
  method?: LinearMethod,
  opts: LoadHfOptions = {},
): Promise<HfLoaded> {
  return loadFolder(dirFolder(dir), method, opts);
}

/** What `train.ts --init DIR` sets up before the run starts. */
export interface HfInit {
  /** The folder. */
  readonly dir: string;
  /** Its validated config.json. */
  readonly hf: HfConfig;
  /** The folder itself when it holds a tokenizer.json (the default --tokenizer). */
  readonly tokenizer?: string;
  /** Loads the weights for a fresh run (the trainer's `initModel`), printing what conversion did. */
  initModel(
    run: { seed: number; dtype?: WeightDType },
    method: LinearMethod,
  ): Promise<{ params: LlamaParams; buffers: LlamaModel["buffers"] }>;
}

/**
 * `--init DIR` of train.ts: validates the folder's config.json before anything else happens, and for
 * an SLTrain-factor folder makes its rank, alpha and delta the defaults of `--rank`, `--alpha`,
 * `--delta`. `--model` may not be given too (the folder's config.json is the model). `log` gets
 * one line per loaded model saying what the conversion did.
 */
export async function hfInitFlag(
  flags: RawFlags,
  log: (line: string) => void = console.error,
): Promise<HfInit | null> {
  const dir = flags.init;
  if (dir === undefined) return null;
  if (typeof dir !== "string" || dir === "") throw new FlagError("--init needs a folder");
  if (flags.model !== undefined) {
    throw new FlagError(
      `--model and --init: the model's shapes come from ${dir}/config.json; leave --model out`,
    );
  }
  const hf = await readHfConfig(dir);
  if (hf.sltrain) {
    for (const k of ["rank", "alpha", "delta"] as const) flags[k] ??= String(hf.sltrain[k]);
  }
  const hasTok = await Deno.stat(`${dir}/tokenizer.json`).then((s) => s.isFile, () => false);
  return {
    dir,
    hf,
    tokenizer: hasTok ? dir : undefined,
    async initModel(run, method) {
      const loaded = await loadHf(dir, method, { seed: run.seed });
      log(`initialized from ${dir}${loaded.notes.map((n) => `; ${n}`).join("")}`);
      if (run.dtype !== "bf16") return { params: loaded.params, buffers: loaded.model.buffers };
      return inBf16(loaded.params, loaded.model.buffers);
    },
  };
}

// `--dtype bf16` from f32 weights: every 2-D weight and SLTrain's values rounded to bf16 as
// `initLlama({ dtype: "bf16" })` stores them; norm gains and u32 supports stay as they are.
function inBf16(
  params: LlamaParams,
  buffers: LlamaModel["buffers"],
): { params: LlamaParams; buffers: LlamaModel["buffers"] } {
  const round = (t: Tensor) => {
    if (t.dtype !== "f32") return t;
    const c = convert(t, "bf16");
    t.dispose();
    return c;
  };
  const leaves = paramPaths(params).map((e) => e.role === "norm" ? e.tensor : round(e.tensor));
  return { params: tree.unflatten(params, leaves), buffers: tree.map(buffers, round) };
}
