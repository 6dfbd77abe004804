/**
 * `deno run -A train.ts`: pretrain a LLaMA-style model with SLTrain or a baseline on the Brown
 * corpus or your own text, on whatever WebGPU adapter Deno finds. `--help` lists every flag.
 * @module
 */
import { init } from "./core/device.ts";
import { loadBrown, splitEvery } from "./data/brown.ts";
import { tokenizeCached } from "./data/cache.ts";
import { holdOut, loadCorpus } from "./data/corpus.ts";
import { documentSequences, packedSequences } from "./data/batches.ts";
import type { Tokenizer } from "./data/tokenizer.ts";
import { loadConfig, withVocab } from "./models/config.ts";
import { validateMethod } from "./models/method.ts";
import {
  FlagError,
  helpText,
  methodName,
  natInt,
  num,
  packingFlag,
  parseFlags,
  posInt,
  type RawFlags,
  runCli,
} from "./cli/flags.ts";
import { Progress } from "./cli/progress.ts";
import { lossPlot, summaryTable } from "./cli/report.ts";
import { linearMethod, type MethodName, type RunConfig } from "./cli/run_config.ts";
import { type RunData, type RunResult, trainRun } from "./cli/trainer.ts";
import { fmtCount } from "./cli/format.ts";
import { shardFlag, shardRunData, shardTokenizer, tokenizerFlag } from "./cli/data_source.ts";

/** Presets of the papers' shapes, which train with LLaMA's tokenizer by default (others: bytes). */
export const PAPER_PRESETS: ReadonlySet<string> = new Set(["60m", "130m", "350m", "1b", "7b"]);

/**
 * The run settings train.ts uses for `method` under `flags` (every default resolved), so that
 * tools such as bench/parity.ts replay exactly what the CLI would train.
 */
export async function buildRun(
  flags: RawFlags,
  method: MethodName,
  tok: Tokenizer,
): Promise<RunConfig> {
  const modelName = String(flags.model ?? "tiny");
  const model = withVocab(await loadConfig(modelName), tok.vocabSize);
  const steps = num(flags, "steps", 300, posInt, "a positive integer");
  const rank = num(
    flags,
    "rank",
    Math.max(1, Math.floor(model.hidden / 4)),
    posInt,
    "a positive integer",
  );
  const warmupDefault = Math.min(Math.floor(steps / 2), Math.max(Math.round(steps / 10), 60));
  const run: RunConfig = {
    model,
    modelName,
    method,
    rank,
    delta: num(flags, "delta", 0.03, (v) => v > 0 && v < 1, "in (0, 1)"),
    alpha: num(flags, "alpha", rank / 4, (v) => v > 0, "positive"),
    lr: num(flags, "lr", method === "galore" ? 1e-2 : 3e-3, (v) => v > 0, "positive"),
    warmup: num(flags, "warmup", warmupDefault, natInt, "a non-negative integer"),
    steps,
    minLrRatio: num(flags, "min-lr-ratio", 0.1, (v) => v >= 0 && v <= 1, "in [0, 1]"),
    batch: num(flags, "batch", 8, posInt, "a positive integer"),
    seq: num(flags, "seq", 128, posInt, "a positive integer"),
    gradAccum: num(flags, "grad-accum", 1, posInt, "a positive integer"),
    clip: num(flags, "clip", 0, (v) => v >= 0, "non-negative"),
    weightDecay: num(flags, "weight-decay", 0, (v) => v >= 0, "non-negative"),
    perLayer: flags["per-layer"] === true,
    galoreGap: num(flags, "galore-gap", 200, posInt, "a positive integer"),
    galoreScale: num(flags, "galore-scale", 0.25, (v) => v > 0, "positive"),
    refactorEvery: num(flags, "refactor-every", 0, natInt, "a non-negative integer"),
    reloraEvery: num(
      flags,
      "relora-every",
      Math.max(1, Math.floor(steps / 4)),
      posInt,
      "a positive integer",
    ),
    recoverySteps: num(flags, "recovery-steps", 10, posInt, "a positive integer"),
    evalEvery: num(
      flags,
      "eval-every",
      Math.max(1, Math.floor(steps / 5)),
      natInt,
      "a non-negative integer",
    ),
    evalTokens: num(flags, "eval-tokens", 16384, posInt, "a positive integer"),
    seed: num(flags, "seed", 42, natInt, "a non-negative integer"),
    logEvery: num(flags, "log-every", 10, posInt, "a positive integer"),
  };
  if ((flags.optimizer ?? "adamw") !== "adamw") {
    throw new FlagError(`--optimizer ${flags.optimizer}: unknown optimizer (expected adamw)`);
  }
  if (run.perLayer && (run.clip > 0 || run.gradAccum > 1)) {
    throw new FlagError(
      "--per-layer updates each weight during backward, so it cannot be combined with --clip or --grad-accum > 1",
    );
  }
  if (run.seq > (model.maxSeqLen ?? Infinity)) {
    throw new FlagError(
      `--seq ${run.seq}: longer than the model's maximum sequence length ${model.maxSeqLen}`,
    );
  }
  try {
    validateMethod(model, linearMethod(run));
  } catch (e) {
    throw new FlagError(`--method ${method}: ${(e as Error).message}`);
  }
  return run;
}

const CKPT = "checkpoint.safetensors";

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The output folder, checked before anything is written; `created` when this process made it. */
interface OutDir {
  out: string;
  created: boolean;
  /** Run folders that hold a checkpoint to resume from. */
  resumable: Set<string>;
}

async function prepareOut(
  flags: RawFlags,
  label: string,
  dirs: (out: string) => string[],
): Promise<OutDir> {
  const out = typeof flags.out === "string"
    ? flags.out
    : `runs/${label}-${new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19)}`;
  let info: Deno.FileInfo | null = null;
  try {
    info = await Deno.stat(out);
  } catch { /* does not exist yet */ }
  if (info && !info.isDirectory) throw new FlagError(`--out ${out}: is a file, not a folder`);
  if (info && !flags.resume) {
    for await (const e of Deno.readDir(out)) {
      if (e.name === CKPT || e.name === "log.jsonl" || e.isDirectory) {
        throw new FlagError(
          `--out ${out}: already holds a run; pass --resume to continue it, or choose another --out`,
        );
      }
    }
  }
  if (!info && flags.resume) throw new FlagError(`--resume: ${out} does not exist`);
  const resumable = new Set<string>();
  if (flags.resume) {
    for (const d of dirs(out)) if (await exists(`${d}/${CKPT}`)) resumable.add(d);
    // A compare whose later runs never started (Ctrl-C) resumes the rest from scratch.
    if (resumable.size === 0) {
      throw new FlagError(`--resume: ${out} holds no ${CKPT} to resume from`);
    }
  }
  await Deno.mkdir(out, { recursive: true });
  return { out, created: !info, resumable };
}

/**
 * Removes what a fresh run wrote when it failed before its first checkpoint, so that the same
 * --out can simply be run again (a log without a checkpoint would block it). Synchronous because
 * it also runs on a second Ctrl-C right before exiting.
 */
function discardFresh(dir: string, outDir: OutDir): void {
  try {
    Deno.statSync(`${dir}/${CKPT}`);
    return;
  } catch { /* no checkpoint: nothing worth keeping */ }
  for (const f of ["log.jsonl", "summary.json", "loss.svg"]) {
    try {
      Deno.removeSync(`${dir}/${f}`);
    } catch { /* not written */ }
  }
  // Non-recursive removes: only empty folders go, and only ones this process made.
  const folders = dir === outDir.out ? [] : [dir];
  if (outDir.created) folders.push(outDir.out);
  for (const d of folders) {
    try {
      Deno.removeSync(d);
    } catch { /* not empty */ }
  }
}

/** The training and validation sequences train.ts builds from `--data` (or Brown) and `--packing`. */
export async function loadData(
  flags: RawFlags,
  tok: Tokenizer,
  seq: number,
): Promise<{ data: RunData; desc: string }> {
  let train, val, desc;
  if (typeof flags.data === "string") {
    const docs = await loadCorpus(flags.data);
    const frac = num(flags, "val-fraction", 0.1, (v) => v > 0 && v < 1, "in (0, 1)");
    if (typeof flags["val-data"] === "string") {
      train = docs;
      val = await loadCorpus(flags["val-data"]);
    } else ({ train, val } = holdOut(docs, frac));
    desc = flags.data;
  } else {
    ({ train, val } = splitEvery(await loadBrown()));
    desc = "Brown corpus (every 10th document held out)";
  }
  const t0 = performance.now();
  const tr = await tokenizeCached(train, tok);
  const va = await tokenizeCached(val, tok);
  const make = packingFlag(flags) === "packed" ? packedSequences : documentSequences;
  const ntr = tr.docs.reduce((n, d) => n + d.length, 0);
  const nva = va.docs.reduce((n, d) => n + d.length, 0);
  if (ntr === 0) throw new FlagError("the training data has no tokens");
  if (nva === 0) throw new FlagError("the validation data has no tokens");
  const cached = tr.cached && va.cached
    ? "cached"
    : `tokenized in ${((performance.now() - t0) / 1000).toFixed(1)}s`;
  return {
    data: {
      train: make(tr.docs, seq, tok.eos, tok.pad),
      val: make(va.docs, seq, tok.eos, tok.pad),
    },
    desc: `${desc}: ${train.length} train docs (${fmtCount(ntr)} tokens), ${val.length} val docs (${
      fmtCount(nva)
    } tokens), ${tok.name}, ${cached}`,
  };
}

async function main(argv: string[]): Promise<number> {
  const flags = parseFlags(argv);
  if (flags.help) {
    console.log(helpText());
    return 0;
  }
  const methods = typeof flags.compare === "string"
    ? flags.compare.split(",").map((m) => methodName(m.trim(), "compare"))
    : [methodName(String(flags.method ?? "sltrain"))];
  if (methods.length === 0) throw new FlagError("--compare needs at least one method");
  const modelName = String(flags.model ?? "tiny");
  const tokName = typeof flags.tokenizer === "string"
    ? flags.tokenizer
    : PAPER_PRESETS.has(modelName)
    ? "llama"
    : "bytes";
  const shards = await shardFlag(flags);
  const tok = shards ? await shardTokenizer(shards, flags.tokenizer) : await tokenizerFlag(tokName);
  const runs: RunConfig[] = [];
  for (const m of methods) runs.push(await buildRun(flags, m, tok));
  // Data errors (missing or empty files) come before anything is created on disk.
  const { data, desc } = shards
    ? shardRunData(shards, tok, flags, runs[0].seq)
    : await loadData(flags, tok, runs[0].seq);
  const runDir = (out: string, m: MethodName) => methods.length > 1 ? `${out}/${m}` : out;
  const outDir = await prepareOut(
    flags,
    methods.length > 1 ? "compare" : methods[0],
    (out) => methods.map((m) => runDir(out, m)),
  );
  const out = outDir.out;
  const info = await init();
  console.error(`${info.summary}\ndata: ${desc}\nout: ${out}`);

  let stop = false;
  let current: string | null = null;
  const onSigint = () => {
    if (stop) {
      if (current) discardFresh(current, outDir);
      Deno.exit(130);
    }
    stop = true;
    console.error(
      "\nstopping after this step and writing a checkpoint (Ctrl-C again to quit at once)",
    );
  };
  Deno.addSignalListener("SIGINT", onSigint);
  const results: RunResult[] = [];
  try {
    for (const run of runs) {
      const dir = runDir(out, run.method);
      const resume = outDir.resumable.has(dir);
      await Deno.mkdir(dir, { recursive: true });
      current = resume ? null : dir;
      const logFile = await Deno.open(`${dir}/log.jsonl`, { append: true, create: true });
      const enc = new TextEncoder();
      console.error(
        `\n${run.method} on ${run.modelName}: ${run.steps} steps × ${
          run.batch * run.gradAccum
        }×${run.seq} tokens, lr ${run.lr}, warmup ${run.warmup}`,
      );
      try {
        const result = await trainRun(run, data, {
          out: dir,
          resume,
          progress: new Progress(run.method, run.logEvery),
          log: (rec) =>
            logFile.writeSync(
              enc.encode(JSON.stringify({ time: new Date().toISOString(), ...rec }) + "\n"),
            ),
          shouldStop: () => stop,
        });
        results.push(result);
        await Deno.writeTextFile(
          `${dir}/summary.json`,
          JSON.stringify({ ...result, run: { ...run } }, null, 1),
        );
        await Deno.writeTextFile(
          `${dir}/loss.svg`,
          lossPlot([result], `${run.method} on ${run.modelName}`),
        );
      } catch (e) {
        logFile.close();
        if (!resume) discardFresh(dir, outDir);
        if (!resume && await exists(`${dir}/${CKPT}`)) {
          (e as Error).message += ` (the last checkpoint is in ${dir}; --resume continues from it)`;
        }
        throw e;
      }
      logFile.close();
      current = null;
      if (stop) break;
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
  console.log(`\n${summaryTable(results)}\n`);
  if (results.length > 1) {
    await Deno.writeTextFile(
      `${out}/loss.svg`,
      lossPlot(results, `${runs[0].modelName}: ${methods.join(" vs ")}`),
    );
    console.log(`loss curves of all runs: ${out}/loss.svg`);
  }
  for (const r of results) {
    const dir = runDir(out, r.run.method);
    console.log(
      `${
        results.length > 1 ? `${r.run.method}: ` : ""
      }loss curve: ${dir}/loss.svg; log: ${dir}/log.jsonl; checkpoint: ${dir}/${CKPT}`,
    );
  }
  return stop ? 130 : 0;
}

if (import.meta.main) await runCli(main);
