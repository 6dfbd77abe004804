/**
 * `deno run -A prepare.ts --data CORPUS --tokenizer T --out SHARD_DIR`: tokenize a corpus of any
 * size into token shards (layout in data/shards.ts) that `train.ts --data SHARD_DIR` streams.
 * `--help` lists every flag.
 * @module
 */
import { DEFAULT_SHARD_TOKENS, prepareShards } from "./data/prepare.ts";
import { tokenizerByName } from "./data/tokenizer.ts";
import {
  FlagError,
  type FlagSpec,
  inRange,
  numberFlag,
  parseFlagsWith,
  renderHelp,
  runCli,
} from "./cli/flags.ts";
import { fmtBytes, fmtCount, fmtDuration } from "./cli/format.ts";
import { Progress } from "./cli/progress.ts";

/** Flags of prepare.ts, in --help order. */
export const PREPARE_FLAGS: Record<string, FlagSpec> = {
  data: {
    type: "string",
    help: "corpus: a text file, a folder of text files, or .jsonl with a text field (required)",
  },
  tokenizer: {
    type: "string",
    default: "bytes",
    help: "bytes, llama, or a tokenizer.json (or a folder holding one)",
  },
  out: { type: "string", help: "shard folder to create; must not exist or be empty (required)" },
  "val-data": { type: "string", help: "validation corpus (default: a held-out part of --data)" },
  "val-fraction": {
    type: "string",
    default: 0.1,
    number: inRange(0, 1, "()"),
    help: "held-out fraction of --data documents (every k-th, as train.ts)",
  },
  "shard-tokens": {
    type: "string",
    default: DEFAULT_SHARD_TOKENS,
    number: {
      ok: (v) => Number.isInteger(v) && v > 0 && v <= 2 ** 31,
      what: "an integer in [1, 2^31]",
    },
    help: "ids per shard",
  },
  help: { type: "boolean", help: "show this help" },
};

async function main(argv: string[]): Promise<number> {
  const flags = parseFlagsWith(PREPARE_FLAGS, argv);
  if (flags.help) {
    console.log(renderHelp(
      [
        "Tokenize a corpus into token shards for train.ts --data SHARD_DIR.",
        "",
        "usage: deno run -A prepare.ts --data CORPUS --tokenizer T --out SHARD_DIR [flags]",
      ],
      PREPARE_FLAGS,
    ));
    return 0;
  }
  for (const f of ["data", "out"]) {
    if (typeof flags[f] !== "string" || flags[f] === "") throw new FlagError(`--${f} is required`);
  }
  if (flags["val-data"] !== undefined && flags["val-fraction"] !== undefined) {
    throw new FlagError("--val-data and --val-fraction exclude each other");
  }
  const valFraction = numberFlag(flags, "val-fraction", undefined, PREPARE_FLAGS);
  const shardTokens = numberFlag(flags, "shard-tokens", undefined, PREPARE_FLAGS);
  const tokName = String(flags.tokenizer ?? "bytes");
  const tok = await tokenizerByName(tokName).catch((e) => {
    throw new FlagError(`--tokenizer: ${(e as Error).message}`);
  });
  const out = String(flags.out);
  let progress = null as Progress | null; // made once the corpus size is known
  const controller = new AbortController();
  const onSigint = () => controller.abort(new Error("interrupted; nothing was written"));
  Deno.addSignalListener("SIGINT", onSigint);
  const t0 = performance.now();
  let shown = 0;
  try {
    const manifest = await prepareShards({
      data: String(flags.data),
      valData: typeof flags["val-data"] === "string" ? flags["val-data"] : undefined,
      valFraction,
      tokenizer: tok,
      preset: tok.files ? undefined : tokName,
      out,
      shardTokens,
      signal: controller.signal,
      onProgress: (bytes, total, tokens) => {
        const now = performance.now();
        if (now - shown < 250) return; // a redraw per piece would flood stderr
        shown = now;
        const s = (now - t0) / 1000;
        // Off a terminal, about 50 lines over the whole run.
        progress ??= new Progress("prepare", Math.ceil(total / 50));
        progress.show(
          bytes,
          total,
          `${fmtBytes(bytes)}/${fmtBytes(total)}  ${fmtCount(tokens)} tokens  ${
            fmtCount(tokens / s)
          } tok/s  ETA ${fmtDuration(bytes > 0 ? (s / bytes) * (total - bytes) : NaN)}`,
        );
      },
    });
    progress?.done();
    const s = (performance.now() - t0) / 1000;
    const { train, val } = manifest.splits;
    console.log(
      `${out}: ${train.shards.length + val.shards.length} ${manifest.dtype} shards; train ${
        fmtCount(train.tokens)
      } tokens in ${train.docs} docs, val ${
        fmtCount(val.tokens)
      } tokens in ${val.docs} docs; ${tok.name}; ${fmtDuration(s)} (${
        fmtCount((train.tokens + val.tokens) / s)
      } tokens/s)`,
    );
  } catch (e) {
    if (!controller.signal.aborted) throw e;
    console.error(`\n${(e as Error).message}`);
    return 130;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
  return 0;
}

if (import.meta.main) await runCli(main);
