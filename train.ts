/**
 * `deno run -A train.ts`: pretrain a LLaMA-style model with SLTrain or a baseline on the Brown
 * corpus or your own text, on whatever WebGPU adapter Deno finds. `--help` lists every flag.
 * @module
 */
import { deviceLostError } from "./core/device.ts";
import { type DenoDeviceInfo, initGpu } from "./cli/gpu.ts";
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
  choiceFlag,
  type DefaultContext,
  defaultText,
  FlagError,
  FLAGS,
  helpText,
  methodName,
  numberFlag,
  packingFlag,
  parseFlags,
  portFlag,
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
  linearMethod,
  type MethodName,
  type OptimizerName,
  optimizerSpec,
  type RunConfig,
} from "./cli/run_config.ts";
import { estimateMemory } from "./models/estimate.ts";
import type { Granularity } from "./optim/apollo.ts";
import type { ProjectorMethod } from "./optim/galore.ts";
import { type RunData, type RunResult, trainRun } from "./cli/trainer.ts";
import { fmtCount } from "./cli/format.ts";
import { CHECKPOINT_FILE } from "./cli/checkpoint.ts";
import { derivedFromSteps } from "./cli/resume.ts";
import { deviceMemory } from "./cli/memory_budget.ts";
import { armFault, parseFault } from "./cli/faults.ts";
import { acquireRunLock, assertUnlocked, type RunLock } from "./cli/run_lock.ts";
import type { NonFinitePolicy } from "./cli/guard.ts";
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
  const modelName = init ? `hf:${init.dir}` : modelFlag(flags);
  const model = init?.hf.config ?? withVocab(await loadConfig(modelName), tok.vocabSize);
  if (model.vocabSize !== tok.vocabSize) {
    throw new FlagError(
      `--tokenizer ${tok.name} has ${tok.vocabSize} ids but ${modelName} has ${model.vocabSize}`,
    );
  }
  const steps = numberFlag(flags, "steps");
  const rank = numberFlag(flags, "rank", { method, hidden: model.hidden, steps });
  const at: DefaultContext = { method, hidden: model.hidden, steps, rank };
  const n = (name: string) => numberFlag(flags, name, at);
  const run: RunConfig = {
    model,
    modelName,
    method,
    optimizer: choiceFlag<OptimizerName>(flags, "optimizer"),
    rank,
    delta: n("delta"),
    alpha: n("alpha"),
    lr: n("lr"),
    warmup: n("warmup"),
    steps,
    minLrRatio: n("min-lr-ratio"),
    batch: n("batch"),
    seq: n("seq"),
    gradAccum: n("grad-accum"),
    clip: n("clip"),
    weightDecay: n("weight-decay"),
    perLayer: flags["per-layer"] === true,
    galoreGap: n("galore-gap"),
    galoreScale: n("galore-scale"),
    refactorEvery: n("refactor-every"),
    reloraEvery: n("relora-every"),
    recoverySteps: n("recovery-steps"),
    evalEvery: n("eval-every"),
    evalTokens: n("eval-tokens"),
    seed: n("seed"),
    logEvery: n("log-every"),
    onNonfinite: choiceFlag<NonFinitePolicy>(flags, "on-nonfinite"),
    dtype: choiceFlag<WeightDType>(flags, "dtype"),
    recompute: flags.recompute === true,
    keepWeight: flags["keep-weight"] === true,
  };
  Object.assign(run, scalingSettings(flags, at), benchmarkSettings(flags, at));
  if (run.keepWeight && method !== "sltrain") run.keepWeight = false;
  refuseConflicts(run);
  return run;
}

/** Refuses settings that contradict each other or the model, naming the flags involved. */
function refuseConflicts(run: RunConfig): void {
  const { method, model, rank } = run;
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
}

/** GaLore's, Fira's and APOLLO's settings, present only in the runs of those methods. */
function scalingSettings(flags: RawFlags, at: DefaultContext): Partial<RunConfig> {
  const granularity = choiceFlag<Granularity>(flags, "apollo-granularity");
  const limiter = numberFlag(flags, "limiter", at);
  const apolloScale = numberFlag(flags, "apollo-scale", at);
  const galoreProjector = choiceFlag<ProjectorMethod>(flags, "galore-svd");
  const method = at.method;
  if (method === "galore") return { galoreProjector };
  if (method === "fira") return { limiter, galoreProjector };
  if (method === "apollo" || method === "apollo-mini") {
    return {
      limiter,
      apolloScale,
      apolloGranularity: method === "apollo-mini" ? "tensor" : granularity,
    };
  }
  return {};
}

/** The settings of GoLore, LoRO, SPAM and Stable-SPAM, present only in their runs. */
function benchmarkSettings(flags: RawFlags, at: DefaultContext): Partial<RunConfig> {
  const n = (name: string) => numberFlag(flags, name, at);
  switch (at.method) {
    case "golore":
      return { goloreRandomFrom: Math.ceil(n("golore-rand-ratio") * at.steps) };
    case "loro":
      return { loroExactEvery: n("loro-exact-every") };
    case "spam":
      return {
        spamThreshold: n("spam-threshold"),
        spamWarmup: n("spam-warmup"),
        momentumResetEvery: n("momentum-reset-every"),
      };
    case "stable-spam":
      return {
        momentumResetEvery: n("momentum-reset-every"),
        stableSpamGammas: stableSpamGammas(flags),
        stableSpamSchedule: { totalT: n("stable-spam-total"), etaMin: n("stable-spam-eta") },
      };
    default:
      return {};
  }
}

/** `--stable-spam-gammas`: three decays in [0, 1). */
function stableSpamGammas(flags: RawFlags): [number, number, number] {
  const raw = String(flags["stable-spam-gammas"] ?? defaultText(FLAGS["stable-spam-gammas"]));
  const gammas = raw.split(",").map(Number);
  if (gammas.length !== 3 || !gammas.every((v) => v >= 0 && v < 1)) {
    throw new FlagError(`--stable-spam-gammas ${raw}: must be three numbers in [0, 1)`);
  }
  return gammas as [number, number, number];
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

/**
 * The live page of the run folder, served from a worker as `where` says. If it cannot start,
 * nothing is written yet: the folder goes if this process made it.
 */
async function startDashboard(
  where: { port: number; hostname?: string },
  outDir: OutDir,
): Promise<DashboardThread> {
  const out = outDir.out;
  try {
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
  } catch (e) {
    outDir.lock.release();
    if (outDir.created) discardUnstarted(out, outDir);
    throw new FlagError(`--dashboard: ${errorText(e)}`);
  }
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
    const frac = numberFlag(flags, "val-fraction");
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
  const methods = runMethods(flags);
  const dashboardAt = dashboardFlags(flags);
  // A test hook (see cli/faults.ts), never a flag.
  const fault = Deno.env.get("SLTRAIN_FAULT");
  if (fault) armFault(parseFault(fault));
  const hfInit = await hfInitFlag(flags);
  const shards = await shardFlag(flags);
  const tok = shards
    ? await shardTokenizer(shards, flags.tokenizer)
    : await tokenizerFlag(tokenizerName(flags, hfInit));
  const runs: RunConfig[] = [];
  for (const m of methods) runs.push(await buildRun(flags, m, tok, hfInit));
  if (typeof flags.fit === "string") {
    console.log(fitReport(runs[0], parseByteSize(flags.fit, "fit")));
    return 0;
  }
  checkDeviceBudgetFlag(flags, runs);
  const keep = numberFlag(flags, "keep");
  // Data errors (missing or empty files) come before anything is created on disk.
  const { data, desc } = shards
    ? shardRunData(shards, tok, flags, runs[0].seq)
    : await loadData(flags, tok, runs[0].seq);
  const info = await initGpu();
  checkHostBudget(flags, runs, info);
  const outDir = await prepareOut(
    flags,
    methods.length > 1 ? "compare" : methods[0],
    (out) => methods.map((m) => runFolder(out, methods, m)),
  );
  console.error(`${info.summary}\ndata: ${desc}\nout: ${outDir.out}`);
  const dashboard = dashboardAt ? await startDashboard(dashboardAt, outDir) : null;
  const stop = listenForStop(outDir);
  const shared: SharedRunSettings = { data, keep, hooks, hfInit, flags, outDir, stop };
  const results: RunResult[] = [];
  try {
    for (const run of runs) {
      results.push(await trainOne(run, runFolder(outDir.out, methods, run.method), shared));
      if (stop.signal) break;
    }
  } finally {
    stop.remove();
    await dashboard?.close();
    outDir.lock.release();
  }
  await printSummary(results, outDir.out, methods);
  return stop.signal ? exitCode(stop.signal) : 0;
}

/** The methods to train (--compare's, else --method), refusing flags that apply to none of them. */
function runMethods(flags: RawFlags): MethodName[] {
  const methods = typeof flags.compare === "string"
    ? flags.compare.split(",").map((m) => methodName(m.trim(), "compare"))
    : [choiceFlag<MethodName>(flags, "method")];
  refuseInapplicable(flags, methods);
  return methods;
}

/** The model preset or config file of --model. */
function modelFlag(flags: RawFlags): string {
  return String(flags.model ?? defaultText(FLAGS.model));
}

/**
 * The tokenizer of a run without shards: --tokenizer; else --init's own (or by its vocabulary
 * size); else LLaMA's for the paper presets and bytes for the others.
 */
function tokenizerName(flags: RawFlags, hfInit: HfInit | null): string {
  if (typeof flags.tokenizer === "string") return flags.tokenizer;
  if (hfInit) return hfInit.tokenizer ?? (hfInit.hf.config.vocabSize === 256 ? "bytes" : "llama");
  return PAPER_PRESETS.has(modelFlag(flags)) ? "llama" : "bytes";
}

/** --max-device-bytes: refuses every run whose predicted device peak is over it. */
function checkDeviceBudgetFlag(flags: RawFlags, runs: RunConfig[]): void {
  if (typeof flags["max-device-bytes"] !== "string") return;
  const budget = parseByteSize(flags["max-device-bytes"], "max-device-bytes");
  for (const r of runs) checkDeviceBudget(r, budget);
}

/** Without --max-device-bytes, a software adapter's budget is the host's memory. */
function checkHostBudget(flags: RawFlags, runs: RunConfig[], info: DenoDeviceInfo): void {
  if (flags["max-device-bytes"] !== undefined) return;
  const host = deviceMemory(info);
  if (host) { for (const r of runs) checkDeviceBudget(r, host.bytes, host.from); }
}

/** The folder of method `m`'s run: `out` itself, or one per method under it for a --compare. */
function runFolder(out: string, methods: readonly MethodName[], m: MethodName): string {
  return methods.length > 1 ? `${out}/${m}` : out;
}

/**
 * Ctrl-C or SIGTERM while training: the first asks the runs to stop after this step with a
 * checkpoint; the second quits at once.
 */
interface StopListener {
  /** The first signal received, or null. */
  signal: Deno.Signal | null;
  /** The fresh run in progress that has not completed a step yet (it leaves nothing if it ends). */
  unstarted: string | null;
  /** Stops listening. */
  remove(): void;
}

function listenForStop(outDir: OutDir): StopListener {
  const onSignal = (signal: Deno.Signal) => () => {
    if (listener.signal) {
      if (listener.unstarted) discardUnstarted(listener.unstarted, outDir);
      outDir.lock.release();
      Deno.exit(exitCode(signal));
    }
    listener.signal = signal;
    console.error(
      `\n${signal}: stopping after this step and writing a checkpoint (Ctrl-C or SIGTERM again ` +
        "to quit at once)",
    );
  };
  const handlers = SIGNALS.map((s) => [s, onSignal(s)] as const);
  const listener: StopListener = {
    signal: null,
    unstarted: null,
    remove: () => handlers.forEach(([s, h]) => Deno.removeSignalListener(s, h)),
  };
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  return listener;
}

/** What every run of one command shares. */
interface SharedRunSettings {
  data: RunData;
  keep: number;
  hooks: MainHooks;
  hfInit: HfInit | null;
  flags: RawFlags;
  outDir: OutDir;
  stop: StopListener;
}

/**
 * Trains `run` in `dir` (resuming it when the folder holds one) and writes its summary and plots.
 * A failure names what is kept; a fresh run that failed before its first step leaves nothing.
 */
async function trainOne(run: RunConfig, dir: string, s: SharedRunSettings): Promise<RunResult> {
  const resume = s.outDir.resumable.has(dir);
  await Deno.mkdir(dir, { recursive: true });
  s.stop.unstarted = resume ? null : dir;
  console.error(
    `\n${run.method} on ${run.modelName}: ${run.steps} steps × ${
      run.batch * run.gradAccum
    }×${run.seq} tokens, lr ${run.lr}${
      // A resumed run's warmup may be the checkpoint's (the trainer says so).
      resume ? "" : `, warmup ${run.warmup}`}`,
  );
  const title = `${run.method} on ${run.modelName}`;
  try {
    const result = await trainRun(run, s.data, {
      out: dir,
      resume,
      keep: s.keep,
      progress: new Progress(run.method, run.logEvery),
      log: () => {},
      shouldStop: () => s.stop.signal !== null,
      onStep: (step) => {
        s.stop.unstarted = null;
        s.hooks.onStep?.(step);
      },
      onEval: (history) => writePlots(dir, [{ run, history }], title),
      initModel: s.hfInit?.initModel,
      derived: derivedFromSteps(s.flags),
    });
    await Deno.writeTextFile(
      `${dir}/summary.json`,
      JSON.stringify({ ...result, run: { ...result.run } }, null, 1),
    );
    await writePlots(dir, [result], title);
    s.stop.unstarted = null;
    return result;
  } catch (e) {
    // A lost device makes later calls fail in odd ways: its loss is the error to report
    // (the trainer reports it with the phase it hit, when it saw it).
    const lostSeen = e instanceof Error && e.message.includes("the GPU device was lost");
    const cause = (lostSeen ? null : await deviceLostError()) ?? e;
    if (s.stop.unstarted) {
      discardUnstarted(dir, s.outDir);
      throw cause;
    }
    throw new Error(`${errorText(cause)}${await whatIsKept(dir, errorText(cause))}`, { cause });
  }
}

/** Prints the summary table and where each run's curves, dashboard, log and checkpoint are. */
async function printSummary(
  results: RunResult[],
  out: string,
  methods: readonly MethodName[],
): Promise<void> {
  console.log(`\n${summaryTable(results)}\n`);
  if (results.length > 1) {
    await writePlots(out, results, `${results[0].run.modelName}: ${methods.join(" vs ")}`);
    console.log(`loss curves of all runs: ${out}/loss.svg; dashboard: ${out}/${DASHBOARD_HTML}`);
  }
  for (const r of results) {
    const dir = runFolder(out, methods, r.run.method);
    console.log(
      `${
        results.length > 1 ? `${r.run.method}: ` : ""
      }loss curve: ${dir}/loss.svg; dashboard: ${dir}/${DASHBOARD_HTML}; log: ${dir}/${LOG}; checkpoint: ${dir}/${CKPT}`,
    );
  }
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
