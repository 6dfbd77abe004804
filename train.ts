/**
 * `deno run -A train.ts`: pretrain a LLaMA-style model with SLTrain or a baseline on the Brown
 * corpus or your own text, on whatever WebGPU adapter Deno finds. `--help` lists every flag.
 * @module
 */
import { deviceLostError } from "./core/device.ts";
import { initGpu } from "./cli/gpu.ts";
import { loadBrown, splitEvery } from "./data/brown.ts";
import { tokenizeCached } from "./data/cache.ts";
import { holdOut, loadCorpus } from "./data/corpus.ts";
import { documentSequences, packedSequences } from "./data/batches.ts";
import type { Tokenizer } from "./data/tokenizer.ts";
import { withVocab } from "./models/config.ts";
import { loadConfig } from "./cli/load_config.ts";
import type { WeightDType } from "./models/linear.ts";
import { checkRank, validateMethod } from "./models/method.ts";
import {
  FlagError,
  helpText,
  methodName,
  natInt,
  num,
  oneOf,
  optimizerName,
  packingFlag,
  parseFlags,
  portFlag,
  posInt,
  type RawFlags,
  refuseInapplicable,
  runCli,
} from "./cli/flags.ts";
import { exists } from "./cli/exists.ts";
import { LOG_FILE } from "./cli/runlog.ts";
import { Progress } from "./cli/progress.ts";
import { checkDeviceBudget, fitReport, parseByteSize } from "./cli/plan.ts";
import { type PlotRun, summaryTable, writeLossPlot } from "./cli/report.ts";
import { type DashboardThread, startDashboardThread } from "./cli/dashboard_server.ts";
import { writeStandaloneDashboard } from "./cli/dashboard_page.ts";
import {
  isProjected,
  linearMethod,
  type MethodName,
  optimizerSpec,
  type RunConfig,
} from "./cli/run_config.ts";
import { estimateMemory } from "./models/estimate.ts";
import { GRANULARITIES, type Granularity } from "./optim/apollo.ts";
import { PROJECTOR_METHODS } from "./optim/galore.ts";
import { type RunData, type RunResult, trainRun } from "./cli/trainer.ts";
import { fmtCount } from "./cli/format.ts";
import { CHECKPOINT_FILE } from "./cli/checkpoint.ts";
import { derivedFromSteps } from "./cli/resume.ts";
import { deviceMemory } from "./cli/memory_budget.ts";
import { armFault, parseFault } from "./cli/faults.ts";
import { acquireRunLock, assertUnlocked, type RunLock } from "./cli/run_lock.ts";
import { NONFINITE_POLICIES } from "./cli/guard.ts";
import {
  dataSource,
  shardFlag,
  shardRunData,
  shardTokenizer,
  tokenizerFlag,
} from "./cli/data_source.ts";
import { type HfInit, hfInitFlag } from "./cli/hf_import.ts";

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
  init: HfInit | null,
): Promise<RunConfig> {
  const modelName = init ? `hf:${init.dir}` : String(flags.model ?? "tiny");
  const model = init?.hf.config ?? withVocab(await loadConfig(modelName), tok.vocabSize);
  if (model.vocabSize !== tok.vocabSize) {
    throw new FlagError(
      `--tokenizer ${tok.name} has ${tok.vocabSize} ids but ${modelName} has ${model.vocabSize}`,
    );
  }
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
    optimizer: optimizerName(String(flags.optimizer ?? "adamw")),
    rank,
    delta: num(flags, "delta", 0.03, (v) => v > 0 && v < 1, "in (0, 1)"),
    alpha: num(flags, "alpha", rank / 4, (v) => v > 0, "positive"),
    lr: num(flags, "lr", isProjected(method) ? 1e-2 : 3e-3, (v) => v > 0, "positive"),
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
    onNonfinite: oneOf(flags, "on-nonfinite", NONFINITE_POLICIES),
    dtype: weightDType(flags.dtype),
    recompute: flags.recompute === true,
    keepWeight: flags["keep-weight"] === true,
  };
  Object.assign(run, scalingSettings(flags, method), benchmarkSettings(flags, method, steps));
  if (run.keepWeight && method !== "sltrain") run.keepWeight = false;
  if ((method === "spam" || method === "stable-spam") && run.optimizer !== "adamw") {
    throw new FlagError(
      `--optimizer ${run.optimizer}: ${method} keeps f32 moments (its spike test reads v entrywise)`,
    );
  }
  if (method === "loro" && run.perLayer) {
    throw new FlagError(
      "--per-layer: loro steps each linear's B and A together, never one parameter alone",
    );
  }
  if (method === "golore") {
    try {
      checkRank(model, rank, "golore");
    } catch (e) {
      throw new FlagError(
        `--rank ${rank}: ${
          (e as Error).message
        } (a random subspace of full rank projects nothing away)`,
      );
    }
  }
  if (run.perLayer && run.onNonfinite === "skip") {
    throw new FlagError(
      "--on-nonfinite skip: --per-layer applies each weight's update during backward, before the " +
        "whole gradient is known to be finite, so it can only stop",
    );
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
    // Checks the optimizer's rank too (Fira and APOLLO need rank < min(out, in) of every linear).
    estimateMemory(model, { method: linearMethod(run), optimizer: optimizerSpec(run) }, "ours");
  } catch (e) {
    throw new FlagError(`--method ${method}: ${(e as Error).message}`);
  }
  return run;
}

/** GaLore's, Fira's and APOLLO's settings, present only in the runs of those methods. */
function scalingSettings(flags: RawFlags, method: MethodName): Partial<RunConfig> {
  const granularity = String(flags["apollo-granularity"] ?? "channel");
  if (!(GRANULARITIES as readonly string[]).includes(granularity)) {
    throw new FlagError(
      `--apollo-granularity ${granularity}: unknown granularity (expected ${
        GRANULARITIES.join(" or ")
      })`,
    );
  }
  const limiter = num(flags, "limiter", 1.01, (v) => v === 0 || v >= 1, "0 (off) or >= 1");
  const apolloScale = num(
    flags,
    "apollo-scale",
    method === "apollo-mini" ? 128 : 1,
    (v) => v > 0,
    "positive",
  );
  const galoreProjector = oneOf(flags, "galore-svd", PROJECTOR_METHODS);
  if (method === "galore") return { galoreProjector };
  if (method === "fira") return { limiter, galoreProjector };
  if (method === "apollo" || method === "apollo-mini") {
    return {
      limiter,
      apolloScale,
      apolloGranularity: method === "apollo-mini" ? "tensor" : granularity as Granularity,
    };
  }
  return {};
}

/** The settings of GoLore, LoRO, SPAM and Stable-SPAM, present only in their runs. */
function benchmarkSettings(flags: RawFlags, method: MethodName, steps: number): Partial<RunConfig> {
  const unit = (v: number) => v >= 0 && v < 1;
  switch (method) {
    case "golore": {
      const ratio = num(flags, "golore-rand-ratio", 0, (v) => v >= 0 && v <= 1, "in [0, 1]");
      return { goloreRandomFrom: Math.ceil(ratio * steps) };
    }
    case "loro":
      return { loroExactEvery: num(flags, "loro-exact-every", 5, posInt, "a positive integer") };
    case "spam":
      return {
        spamThreshold: num(flags, "spam-threshold", 5000, (v) => v >= 0, "non-negative"),
        spamWarmup: num(flags, "spam-warmup", 150, natInt, "a non-negative integer"),
        momentumResetEvery: num(flags, "momentum-reset-every", 500, posInt, "a positive integer"),
      };
    case "stable-spam": {
      const raw = String(flags["stable-spam-gammas"] ?? "0.85,0.999,0.999");
      const gammas = raw.split(",").map(Number);
      if (gammas.length !== 3 || !gammas.every(unit)) {
        throw new FlagError(`--stable-spam-gammas ${raw}: must be three numbers in [0, 1)`);
      }
      return {
        momentumResetEvery: num(flags, "momentum-reset-every", 500, posInt, "a positive integer"),
        stableSpamGammas: gammas as [number, number, number],
        stableSpamSchedule: {
          totalT: num(flags, "stable-spam-total", steps, natInt, "a non-negative integer"),
          etaMin: num(flags, "stable-spam-eta", 0.5, (v) => v >= 0 && v <= 1, "in [0, 1]"),
        },
      };
    }
    default:
      return {};
  }
}

const CKPT = CHECKPOINT_FILE;
const LOG = LOG_FILE;
const DASHBOARD_HTML = "dashboard.html";

/**
 * Redraws a run folder's `loss.svg` and standalone `dashboard.html` (of the runs at or under
 * `dir`), each replaced atomically.
 */
async function writePlots(dir: string, runs: PlotRun[], title: string): Promise<void> {
  await writeLossPlot(`${dir}/loss.svg`, runs, title);
  await writeStandaloneDashboard(`${dir}/${DASHBOARD_HTML}`, [dir], title);
}

/** `--dashboard [PORT]` and `--dashboard-host`, checked; null without `--dashboard`. */
function dashboardFlags(flags: RawFlags): { port: number; hostname?: string } | null {
  const host = flags["dashboard-host"];
  if (flags.dashboard === undefined) {
    if (host !== undefined) throw new FlagError("--dashboard-host: only with --dashboard");
    return null;
  }
  if (host === "") throw new FlagError("--dashboard-host needs an address");
  return {
    port: portFlag(flags, "dashboard"),
    hostname: typeof host === "string" ? host : undefined,
  };
}

/** The live page of `out`, served from a worker as `where` says. */
async function startDashboard(
  where: { port: number; hostname?: string },
  out: string,
): Promise<DashboardThread> {
  const dashboard = await startDashboardThread({
    roots: [out],
    ...where,
    title: `sltrain: ${out}`,
    portHint: "--dashboard PORT",
    reportEmpty: false,
  });
  console.error(
    `dashboard: ${dashboard.url} (while this runs; afterwards: deno task dashboard ${out})`,
  );
  return dashboard;
}

function weightDType(raw: string | boolean | undefined): WeightDType {
  const v = raw ?? "f32";
  if (v !== "f32" && v !== "bf16") {
    throw new FlagError(`--dtype ${v}: unknown dtype (expected f32 or bf16)`);
  }
  return v;
}

/** The output folder, checked before anything is written; `created` when this process made it. */
interface OutDir {
  out: string;
  created: boolean;
  /** Run folders that hold a run (a checkpoint, or a log of one killed before its first). */
  resumable: Set<string>;
  /** This process's lock of the folder (see `cli/run_lock.ts`). */
  lock: RunLock;
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
  // A folder another run is training in is refused first, naming that run.
  if (info) assertUnlocked(out);
  if (info && !flags.resume) {
    for await (const e of Deno.readDir(out)) {
      if (e.name === CKPT || e.name === LOG || e.isDirectory) {
        throw new FlagError(
          `--out ${out}: already holds a run; pass --resume to continue it, or choose another --out`,
        );
      }
    }
  }
  if (!info && flags.resume) throw new FlagError(`--resume: ${out} does not exist`);
  const resumable = new Set<string>();
  if (flags.resume) {
    for (const d of dirs(out)) {
      if (await exists(`${d}/${CKPT}`) || await exists(`${d}/${LOG}`)) resumable.add(d);
    }
    // A compare whose later runs never started (Ctrl-C) resumes the rest from scratch.
    if (resumable.size === 0) {
      throw new FlagError(`--resume: ${out} holds no ${CKPT} or ${LOG} to resume from`);
    }
  }
  await Deno.mkdir(out, { recursive: true });
  return { out, created: !info, resumable, lock: acquireRunLock(out) };
}

/**
 * Removes what a fresh run wrote when it ended before its first optimizer step (a model over the
 * device's limits, a failed first evaluation, a second Ctrl-C at once): nothing in it is worth
 * keeping, and the same command can then simply be run again. Any run that took a step keeps its
 * log and checkpoints. Synchronous because it also runs right before a forced exit.
 */
function discardUnstarted(dir: string, outDir: OutDir): void {
  // The lock goes too: the process ends right after this.
  outDir.lock.release();
  for (const f of [LOG, "summary.json", "loss.svg", DASHBOARD_HTML]) {
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
  const packing = packingFlag(flags);
  const make = packing === "packed" ? packedSequences : documentSequences;
  const ntr = tr.docs.reduce((n, d) => n + d.length, 0);
  const nva = va.docs.reduce((n, d) => n + d.length, 0);
  if (ntr === 0) throw new FlagError("the training data has no tokens");
  if (nva === 0) throw new FlagError("the validation data has no tokens");
  const cached = tr.cached && va.cached
    ? "cached"
    : `tokenized in ${((performance.now() - t0) / 1000).toFixed(1)}s`;
  const sequences = make(tr.docs, seq, tok.eos, tok.pad);
  return {
    data: {
      train: sequences,
      val: make(va.docs, seq, tok.eos, tok.pad),
      source: dataSource(tok, packing, sequences),
    },
    desc: `${desc}: ${train.length} train docs (${fmtCount(ntr)} tokens), ${val.length} val docs (${
      fmtCount(nva)
    } tokens), ${tok.name}, ${cached}`,
  };
}

/** Test hooks of {@link main}; the command line passes none. */
export interface MainHooks {
  /** Called after each completed optimizer step (e.g. to inject a fault). */
  onStep?: (step: number) => void;
}

/**
 * The command: parses `argv`, trains, reports; returns the exit status (0, or 130/143 when
 * stopped by SIGINT/SIGTERM). Errors are thrown for {@link runCli} to print.
 */
export async function main(argv: string[], hooks: MainHooks = {}): Promise<number> {
  const flags = parseFlags(argv);
  if (flags.help) {
    console.log(helpText());
    return 0;
  }
  const methods = typeof flags.compare === "string"
    ? flags.compare.split(",").map((m) => methodName(m.trim(), "compare"))
    : [methodName(String(flags.method ?? "sltrain"))];
  if (methods.length === 0) throw new FlagError("--compare needs at least one method");
  refuseInapplicable(flags, methods);
  const dashboardAt = dashboardFlags(flags);
  // A test hook (see cli/faults.ts), never a flag.
  const fault = Deno.env.get("SLTRAIN_FAULT");
  if (fault) armFault(parseFault(fault));
  const hfInit = await hfInitFlag(flags);
  const modelName = String(flags.model ?? "tiny");
  const initVocab = hfInit?.hf.config.vocabSize;
  const tokName = typeof flags.tokenizer === "string"
    ? flags.tokenizer
    : hfInit
    ? hfInit.tokenizer ?? (initVocab === 256 ? "bytes" : "llama")
    : PAPER_PRESETS.has(modelName)
    ? "llama"
    : "bytes";
  const shards = await shardFlag(flags);
  const tok = shards ? await shardTokenizer(shards, flags.tokenizer) : await tokenizerFlag(tokName);
  const runs: RunConfig[] = [];
  for (const m of methods) runs.push(await buildRun(flags, m, tok, hfInit));
  if (typeof flags.fit === "string") {
    console.log(fitReport(runs[0], parseByteSize(flags.fit, "fit")));
    return 0;
  }
  if (typeof flags["max-device-bytes"] === "string") {
    const budget = parseByteSize(flags["max-device-bytes"], "max-device-bytes");
    for (const r of runs) checkDeviceBudget(r, budget);
  }
  const keep = num(flags, "keep", 1, posInt, "a positive integer");
  // Data errors (missing or empty files) come before anything is created on disk.
  const { data, desc } = shards
    ? shardRunData(shards, tok, flags, runs[0].seq)
    : await loadData(flags, tok, runs[0].seq);
  const runDir = (out: string, m: MethodName) => methods.length > 1 ? `${out}/${m}` : out;
  const info = await initGpu();
  // Without --max-device-bytes, a software adapter's budget is the host's memory.
  const hostBudget = flags["max-device-bytes"] === undefined ? deviceMemory(info) : null;
  if (hostBudget) { for (const r of runs) checkDeviceBudget(r, hostBudget.bytes, hostBudget.from); }
  const outDir = await prepareOut(
    flags,
    methods.length > 1 ? "compare" : methods[0],
    (out) => methods.map((m) => runDir(out, m)),
  );
  const out = outDir.out;
  console.error(`${info.summary}\ndata: ${desc}\nout: ${out}`);
  let dashboard: DashboardThread | null = null;
  try {
    if (dashboardAt) dashboard = await startDashboard(dashboardAt, out);
  } catch (e) {
    // Nothing is written yet: only a folder this process made goes.
    outDir.lock.release();
    if (outDir.created) discardUnstarted(out, outDir);
    throw new FlagError(`--dashboard: ${errorText(e)}`);
  }

  // Ctrl-C or SIGTERM: stop after this step with a checkpoint; the second one quits at once.
  let stop: Deno.Signal | null = null;
  // The fresh run in progress that has not completed a step yet (it leaves nothing if it ends).
  let unstarted: string | null = null;
  const onSignal = (signal: Deno.Signal) => () => {
    if (stop) {
      if (unstarted) discardUnstarted(unstarted, outDir);
      outDir.lock.release();
      Deno.exit(exitCode(signal));
    }
    stop = signal;
    console.error(
      `\n${signal}: stopping after this step and writing a checkpoint (Ctrl-C or SIGTERM again ` +
        "to quit at once)",
    );
  };
  const handlers = SIGNALS.map((s) => [s, onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  const results: RunResult[] = [];
  try {
    for (const run of runs) {
      const dir = runDir(out, run.method);
      const resume = outDir.resumable.has(dir);
      await Deno.mkdir(dir, { recursive: true });
      unstarted = resume ? null : dir;
      console.error(
        `\n${run.method} on ${run.modelName}: ${run.steps} steps × ${
          run.batch * run.gradAccum
        }×${run.seq} tokens, lr ${run.lr}${
          // A resumed run's warmup may be the checkpoint's (the trainer says so).
          resume ? "" : `, warmup ${run.warmup}`}`,
      );
      try {
        const result = await trainRun(run, data, {
          out: dir,
          resume,
          keep,
          progress: new Progress(run.method, run.logEvery),
          log: () => {},
          shouldStop: () => stop !== null,
          onStep: (step) => {
            unstarted = null;
            hooks.onStep?.(step);
          },
          onEval: (history) =>
            writePlots(dir, [{ run, history }], `${run.method} on ${run.modelName}`),
          initModel: hfInit?.initModel,
          derived: derivedFromSteps(flags),
        });
        results.push(result);
        await Deno.writeTextFile(
          `${dir}/summary.json`,
          JSON.stringify({ ...result, run: { ...result.run } }, null, 1),
        );
        await writePlots(dir, [result], `${run.method} on ${run.modelName}`);
      } catch (e) {
        // A lost device makes later calls fail in odd ways: its loss is the error to report
        // (the trainer reports it with the phase it hit, when it saw it).
        const lostSeen = e instanceof Error && e.message.includes("the GPU device was lost");
        const cause = (lostSeen ? null : await deviceLostError()) ?? e;
        if (unstarted) discardUnstarted(dir, outDir);
        else {throw new Error(`${errorText(cause)}${await whatIsKept(dir, errorText(cause))}`, {
            cause,
          });}
        throw cause;
      }
      unstarted = null;
      if (stop) break;
    }
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
    await dashboard?.close();
    outDir.lock.release();
  }
  console.log(`\n${summaryTable(results)}\n`);
  if (results.length > 1) {
    await writePlots(out, results, `${runs[0].modelName}: ${methods.join(" vs ")}`);
    console.log(`loss curves of all runs: ${out}/loss.svg; dashboard: ${out}/${DASHBOARD_HTML}`);
  }
  for (const r of results) {
    const dir = runDir(out, r.run.method);
    console.log(
      `${
        results.length > 1 ? `${r.run.method}: ` : ""
      }loss curve: ${dir}/loss.svg; dashboard: ${dir}/${DASHBOARD_HTML}; log: ${dir}/${LOG}; checkpoint: ${dir}/${CKPT}`,
    );
  }
  return stop ? exitCode(stop) : 0;
}

const SIGNALS: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];

/** The shell's exit status for a run stopped by `signal`: 128 + its number. */
function exitCode(signal: Deno.Signal): number {
  return signal === "SIGTERM" ? 143 : 130;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** What a failed run leaves for the user, appended to its error (unless `said` says it). */
async function whatIsKept(dir: string, said: string): Promise<string> {
  const ckpt = await exists(`${dir}/${CKPT}`);
  // An error about the checkpoint itself (a damaged one) already says what to do with it.
  const next = said.includes(`${dir}/${CKPT}`) && !said.startsWith("writing the checkpoint")
    ? ""
    : ckpt
    ? `; the last checkpoint is ${dir}/${CKPT}, and --resume continues from it`
    : "; it has no checkpoint yet, so --resume starts it again from step 0";
  return `\n(the run's log is kept in ${dir}/${LOG}${next})`;
}

if (import.meta.main) await runCli(main);
