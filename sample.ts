/**
 * `deno run -A sample.ts --checkpoint runs/x --prompt "The jury"`: generate text from a checkpoint
 * written by train.ts or a Hugging Face LLaMA folder, streaming it to stdout until the tokenizer's
 * end of text or `--tokens`. `--help` lists every flag. See cli/generate.ts (a KV cache, or a full
 * forward per token with `--no-cache`).
 * @module
 */
import { initGpu } from "./cli/gpu.ts";
import {
  FlagError,
  type FlagSpec,
  NON_NEGATIVE,
  NON_NEGATIVE_INT,
  num,
  numberFlag,
  parseFlagsWith,
  POSITIVE_INT,
  renderHelp,
  runCli,
} from "./cli/flags.ts";
import { generate, textStream } from "./cli/generate.ts";
import { disposeAny, loadAnyModel, modelTokenizer } from "./cli/load_any.ts";

/** Flags of sample.ts, in --help order. */
export const SAMPLE_FLAGS: Record<string, FlagSpec> = {
  checkpoint: {
    type: "string",
    help:
      "checkpoint.safetensors, a train.ts --out folder holding one, or a Hugging Face LLaMA folder (required)",
  },
  prompt: { type: "string", help: "text to continue (required, non-empty)" },
  tokens: { type: "string", default: 200, number: POSITIVE_INT, help: "tokens to generate" },
  temperature: {
    type: "string",
    default: 0.8,
    number: NON_NEGATIVE,
    help: "softmax temperature (0 = greedy)",
  },
  "top-k": {
    type: "string",
    default: 40,
    number: NON_NEGATIVE_INT,
    help: "sample among the k likeliest tokens (0 = all)",
  },
  greedy: { type: "boolean", help: "always take the likeliest token" },
  seed: {
    type: "string",
    default: 1,
    number: NON_NEGATIVE_INT,
    help: "seed of the sampler (same seed, same text)",
  },
  seq: {
    type: "string",
    default: "the model's max sequence length",
    help: "context window: the forward sees the last X tokens",
  },
  tokenizer: {
    type: "string",
    default: "the model folder's tokenizer.json, else by vocab size: 256 bytes, 32000 llama",
    help: "bytes, llama, or a tokenizer.json (or a folder holding one)",
  },
  "no-cache": {
    type: "boolean",
    help: "recompute the whole window for every token instead of using the KV cache (slower)",
  },
  help: { type: "boolean", help: "show this help" },
};

/** The help text of sample.ts. */
export function sampleHelp(): string {
  return renderHelp(
    [
      "Generate text from a train.ts checkpoint.",
      "",
      'usage: deno run -A sample.ts --checkpoint DIR_OR_FILE --prompt "The jury" [flags]',
    ],
    SAMPLE_FLAGS,
  );
}

async function main(argv: string[]): Promise<number> {
  const flags = parseFlagsWith(SAMPLE_FLAGS, argv);
  if (flags.help) {
    console.log(sampleHelp());
    return 0;
  }
  if (typeof flags.checkpoint !== "string" || flags.checkpoint === "") {
    throw new FlagError(
      "--checkpoint is required (a checkpoint file, a train.ts --out folder or a Hugging Face folder)",
    );
  }
  const prompt = flags.prompt;
  if (typeof prompt !== "string" || prompt === "") {
    throw new FlagError("--prompt is required and must not be empty");
  }
  // Every number is checked before the device starts and the checkpoint loads.
  const n = (name: string) => numberFlag(flags, name, undefined, SAMPLE_FLAGS);
  const [tokens, temperature, topK, seed] = ["tokens", "temperature", "top-k", "seed"].map(n);
  // Its default (the model's length) is known once the model loads: 0 stands for it here.
  const seqFlag = num(flags, "seq", 0, POSITIVE_INT);

  await initGpu();
  const loaded = await loadAnyModel(flags.checkpoint);
  try {
    const tok = await modelTokenizer(flags.tokenizer, loaded);
    const ids = tok.encode(prompt);
    if (ids.length === 0) throw new FlagError("--prompt encodes to no tokens");
    const window = seqFlag || loaded.maxSeq;
    const cache = flags["no-cache"] !== true;
    console.error(
      `${loaded.label}; ${tok.name}; window ${window}; ${cache ? "KV cache" : "no cache"}; ${
        flags.greedy || temperature === 0
          ? "greedy"
          : `temperature ${temperature}, top-k ${topK || "all"}, seed ${seed}`
      }`,
    );
    const enc = new TextEncoder();
    const write = (s: string) => Deno.stdout.writeSync(enc.encode(s));
    write(prompt);
    const stream = textStream(tok.decode);
    await generate(loaded, ids, {
      tokens,
      window,
      seed,
      greedy: flags.greedy === true,
      temperature,
      topK,
      cache,
      stopAt: tok.eos,
      onToken: (id) => {
        const piece = stream.push(id);
        if (piece) write(piece);
      },
    });
    write(`${stream.flush()}\n`);
  } finally {
    disposeAny(loaded);
  }
  return 0;
}

if (import.meta.main) await runCli(main);
