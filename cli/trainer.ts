/**
 * The training loop of one run. A step reads like llm.c's: forward + backward, update (clipping
 * and accumulation are stages of the optimizer), log; setup and resume, evaluation, checkpoints
 * and the SLTrain refactorization / ReLoRA merge cycle are small functions of their own.
 *
 * What a run promises (see README, "A run never loses work"): losses and non-finite flags stay on
 * the device until they are read together every `logEvery` steps (see `guard.ts`); a checkpoint
 * is written only once every step it covers has been read, found finite and logged durably; the
 * log (`runlog.ts`) is cut back to the checkpoint a run resumes from, so each step is logged once
 * however often the run was killed and resumed.
 * @module
 */
import { deviceLostError } from "../core/device.ts";
import { DeviceError, NonFiniteError } from "../core/errors.ts";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { Tape, valueAndGrad } from "../core/tape.ts";
import { readAll, scope, type Tensor, tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import {
  BatchStream,
  type BatchStreamState,
  type Packing,
  type Sequences,
} from "../data/batches.ts";
import { countParams, estimateMemory } from "../models/estimate.ts";
import {
  type Batch,
  initLlama,
  type LlamaBuffers,
  type LlamaModel,
  type LlamaParams,
  loss,
} from "../models/llama.ts";
import type { LinearMethod } from "../models/method.ts";
import { refactorLlama } from "../models/refactor.ts";
import { mergeRelora } from "../models/relora.ts";
import { add, mulScalar } from "../ops/mod.ts";
import {
  addSumOfSquares,
  applyUpdates,
  type GradientTransformation,
  type PerLayer,
  perLayer,
  type ProjectorRefresh,
} from "../optim/mod.ts";
import { CHECKPOINT_FILE, loadCheckpoint, removeStaleTemps, saveCheckpoint } from "./checkpoint.ts";
import { evaluate } from "./evaluate.ts";
import {
  describeNonFinite,
  MAX_CONSECUTIVE_SKIPS,
  NonFiniteGuard,
  nonFiniteStop,
} from "./guard.ts";
import type { Progress } from "./progress.ts";
import { exists } from "./exists.ts";
import { describeExtension, reconcileResume } from "./resume.ts";
import { enterPhase } from "./faults.ts";
import { LOG_FILE, type LogRecord, readLog, RunLog } from "./runlog.ts";
import {
  buildOptimizer,
  cycleLength,
  linearMethod,
  lrSchedule,
  type OptimizerHooks,
  optimizerSpec,
  type RunConfig,
} from "./run_config.ts";

/** Train and validation sequences of a run. */
export interface RunData {
  /** Training sequences. */
  train: Sequences;
  /** Validation sequences. */
  val: Sequences;
  /** Where they come from, stored in checkpoints so that another reader can check its data. */
  source?: DataSource;
}

/**
 * What a run's sequences were made from (checkpoint `meta.data`): the tokenizer, the packing and
 * the number of training sequences, so that a continuation elsewhere (`torch/`) can refuse data
 * that would not give the same batches.
 */
export interface DataSource {
  /** The tokenizer's name (for a tokenizer.json, with the file's hash), size, end of text, pad. */
  tokenizer: { name: string; vocabSize: number; eos: number; pad: number };
  /** `packed` windows or one document per sequence (`none`). */
  packing: Packing;
  /** Training sequences (the batch order is a permutation of this many). */
  sequences: number;
}

/** Loss curves: (step, loss) pairs. */
export interface History {
  /** Training loss after each logged step. */
  train: [number, number][];
  /** Validation loss at each evaluation (step 0 = initialization). */
  val: [number, number][];
}

/** What a finished (or interrupted) run reports. */
export interface RunResult {
  /** The run's settings. */
  run: RunConfig;
  /** Trainable / total parameters. */
  params: { trainable: number; total: number };
  /** Estimated training memory (our dtypes): weights + indices + optimizer state. */
  estimatedBytes: number;
  /** Measured live bytes of parameters, buffers and optimizer state after the last step. */
  measuredBytes: number;
  /** Peak live device bytes during a step (what tensors request). */
  peakBytes: number;
  /**
   * Peak device bytes allocated during a step: tensor buffers at their size class, the pool,
   * textures, staging, uniforms (what the device holds; at least `peakBytes`).
   */
  allocatedPeak: number;
  /** Device bytes allocated after the last step (see `allocatedPeak`). */
  allocatedBytes: number;
  /** Measured bytes of the optimizer state alone (moments, projectors, limiter norms). */
  stateBytes: number;
  /** The estimate of the same (`optimizerStates + projector` of the memory estimate). */
  estimatedStateBytes: number;
  /** Training tokens per second over the steps of this process. */
  tokensPerSec: number;
  /** Loss curves. */
  history: History;
  /** Completed steps. */
  steps: number;
  /** Seconds of training in this process. */
  seconds: number;
  /** True when stopped early (Ctrl-C); a checkpoint was written. */
  interrupted: boolean;
}

/** Where a run writes and how it reports. */
export interface RunIO {
  /**
   * Output folder: `checkpoint.safetensors` and `log.jsonl` (see `runlog.ts`); null keeps nothing
   * on disk.
   */
  out: string | null;
  /**
   * Continue the run in `out`: from its checkpoint, or from step 0 when it has none yet (a run
   * killed before its first checkpoint). Either way the log is cut back to what the starting point
   * covers, so no step is logged twice.
   */
  resume: boolean;
  /** Checkpoints to keep: the latest and `keep − 1` before it (default 1). */
  keep?: number;
  /** Progress display. */
  progress: Progress;
  /** Sees each record as it is appended to the log (with its time). */
  log: (record: LogRecord) => void;
  /** Polled after each step; true stops the run with a checkpoint (Ctrl-C). */
  shouldStop: () => boolean;
  /**
   * Called after each completed optimizer step with its number, once that step's reads,
   * evaluation and checkpoint (if any) are done.
   */
  onStep?: (step: number) => void;
  /**
   * Called after each evaluation has been logged, with the curves so far (e.g. to redraw plots);
   * awaited.
   */
  onEval?: (history: History) => void | Promise<void>;
  /**
   * The weights a fresh run starts from (default: `initLlama` with the run's seed), e.g. a
   * Hugging Face model (`train.ts --init`). Not called when resuming.
   */
  initModel?: (
    run: RunConfig,
    method: LinearMethod,
  ) => Promise<{ params: LlamaParams; buffers: LlamaBuffers }>;
  /**
   * Settings of the run whose values were derived from `steps` rather than given (see
   * `derivedFromSteps` in `resume.ts`): a resumed run takes the checkpoint's instead.
   */
  derived?: ReadonlySet<string>;
}

export { resumeConflicts } from "./resume.ts";

/** A run in progress: what changes from step to step. */
interface Training {
  readonly run: RunConfig;
  readonly method: LinearMethod;
  params: LlamaParams;
  buffers: LlamaBuffers;
  /** This cycle's optimizer (a fresh one after each momentum reset). */
  opt: GradientTransformation;
  /** The same optimizer, when the run updates each weight during backward. */
  perLayerOpt: PerLayer<unknown> | null;
  optState: unknown;
  /** Completed optimizer steps. */
  step: number;
  /** True when the run continues from a checkpoint. */
  readonly resumed: boolean;
  /** How a resumed run's length changed (null when it did not), for the log. */
  readonly extended?:
    | { from: number; to: number; kept: Record<string, unknown>; text: string }
    | null;
  readonly stream: BatchStream;
  readonly history: History;
  /** Non-finite flags and the update gate. */
  readonly guard: NonFiniteGuard;
  /** What the optimizer reports during a step. */
  readonly watch: StepWatch;
}

/**
 * What the optimizer reports during one step (see {@link OptimizerHooks}), gathered for the log:
 * the sum of squares of its gradients before clipping (on the device, read with the loss), and
 * its projector refreshes.
 */
class StepWatch {
  /** The step's Σg², accumulated on the device; null between steps. */
  sumSq: Tensor | null = null;
  /** The step's refreshes, with their start and end (performance.now() ms). */
  refreshes: { matrices: number; start: number; end: number }[] = [];
  readonly hooks: OptimizerHooks = {
    onGradients: (grads) => {
      if (this.sumSq) addSumOfSquares(grads, this.sumSq);
    },
    onRefresh: (r: ProjectorRefresh) => {
      const end = performance.now();
      this.refreshes.push({ matrices: r.matrices, start: end - r.seconds * 1000, end });
    },
  };

  /** Starts a step. */
  begin(): void {
    this.sumSq = zeros([1]);
    this.refreshes = [];
  }

  /**
   * Ends a step: its Σg² tensor (the caller owns it) and the record of its refreshes, if any
   * (under per-layer updates each matrix refreshes alone and they overlap: one record, their
   * span).
   */
  end(step: number): { sumSq: Tensor; refresh: LogRecord | null } {
    const sumSq = this.sumSq!;
    this.sumSq = null;
    const r = this.refreshes;
    if (r.length === 0) return { sumSq, refresh: null };
    const start = Math.min(...r.map((x) => x.start));
    const end = Math.max(...r.map((x) => x.end));
    return {
      sumSq,
      refresh: stamped({
        kind: "refresh",
        step,
        matrices: r.reduce((n, x) => n + x.matrices, 0),
        seconds: (end - start) / 1000,
      }),
    };
  }
}

function modelOf(t: Training): LlamaModel {
  return { config: t.run.model, method: t.method, buffers: t.buffers };
}

/**
 * The optimizer for the cycle the run is in at `step`. A momentum reset is a fresh optimizer
 * whose learning-rate schedule starts where its cycle starts.
 */
function optimizerAt(
  run: RunConfig,
  params: LlamaParams,
  step: number,
  watch: StepWatch,
): Pick<Training, "opt" | "perLayerOpt"> {
  const cycle = cycleLength(run);
  const from = cycle > 0 ? Math.floor(step / cycle) * cycle : 0;
  const opt = buildOptimizer(run, params, from, watch.hooks);
  const perLayerOpt = run.perLayer ? perLayer(opt) : null;
  return { opt: perLayerOpt ?? opt, perLayerOpt };
}

/** A fresh model, or the checkpoint's when resuming (refused if it comes from another config). */
async function startRun(
  run: RunConfig,
  train: Sequences,
  ckptPath: string | null,
  io: RunIO,
): Promise<Training> {
  const method = linearMethod(run);
  const stream = new BatchStream(train, run.batch, run.seed);
  const history: History = { train: [], val: [] };
  const guardOf = (params: LlamaParams) =>
    new NonFiniteGuard(tree.paths(params), run.onNonfinite ?? "stop");
  const watch = new StepWatch();
  if (!(io.resume && ckptPath && await exists(ckptPath))) {
    const { params, buffers } = io.initModel
      ? await io.initModel(run, method)
      : initLlama(run.model, method, run.seed, { dtype: run.dtype });
    const o = optimizerAt(run, params, 0, watch);
    return {
      run,
      method,
      params,
      buffers,
      ...o,
      optState: o.opt.init(params),
      step: 0,
      resumed: false,
      stream,
      history,
      guard: guardOf(params),
      watch,
    };
  }
  const ck = await loadCheckpoint(ckptPath);
  // Checkpoints from before --optimizer existed were all trained with adamw.
  const saved = { optimizer: "adamw", ...(ck.meta.run as Partial<RunConfig>) } as RunConfig;
  const reconciled = reconcileResume(run, saved, io.derived ?? new Set());
  if (reconciled.conflicts.length > 0) {
    tree.dispose(ck);
    throw new Error(
      `cannot resume ${ckptPath}: it comes from another config (only the settings the README ` +
        `lists under "Resuming" may change):\n  ${reconciled.conflicts.join("\n  ")}`,
    );
  }
  run = reconciled.run;
  const params = ck.params as LlamaParams;
  stream.state = ck.meta.stream as BatchStreamState;
  Object.assign(history, ck.meta.history as History);
  io.progress.log(`resumed from ${ckptPath} at step ${ck.step}`);
  const extension = describeExtension(run, saved, ck.step, reconciled.kept);
  if (extension) io.progress.log(extension);
  return {
    run,
    extended: extension === null ? null : {
      from: saved.steps,
      to: run.steps,
      kept: Object.fromEntries(Object.entries(reconciled.kept).map(([k, [v]]) => [k, v])),
      text: extension,
    },
    method,
    params,
    buffers: ck.buffers as LlamaBuffers,
    ...optimizerAt(run, params, ck.step, watch),
    optState: ck.optState,
    step: ck.step,
    resumed: true,
    stream,
    history,
    guard: guardOf(params),
    watch,
  };
}

/** Trains one run to `run.steps` (or until stopped) and reports. */
export async function trainRun(run: RunConfig, data: RunData, io: RunIO): Promise<RunResult> {
  const ckptPath = io.out ? `${io.out}/${CHECKPOINT_FILE}` : null;
  const t = await startRun(run, data.train, ckptPath, io);
  let log: RunLog | null = null;
  let trainTokens = 0;
  try {
    if (io.out) {
      // Cut back to what the starting point covers (all of it for a fresh start); a checkpoint
      // write that was killed leaves a temporary file, never a complete checkpoint.
      const opened = await RunLog.open(`${io.out}/${LOG_FILE}`, t.resumed ? t.step : null);
      log = opened.log;
      if (ckptPath) await removeStaleTemps(ckptPath);
      if (io.resume) {
        const rec = stamped({ kind: "resume", step: t.step, cut: opened.cut });
        log.append(rec);
        io.log(rec);
        if (t.extended) {
          const ext = stamped({ kind: "extend", step: t.step, ...t.extended });
          log.append(ext);
          io.log(ext);
        }
      }
      if (t.resumed) trainTokens = await tokensSoFar(`${io.out}/${LOG_FILE}`, t.run, t.step);
    }
    // A run that ended on a cycle boundary skipped that reset or merge (it was its last step);
    // extended, it does it now, as a run of the new length would have.
    const cycle = cycleLength(t.run);
    if (
      t.extended && cycle > 0 && t.step === t.extended.from && t.step % cycle === 0 &&
      t.step < t.run.steps
    ) {
      const rec = await resetCycle(t);
      log?.append(rec);
      io.log(rec);
    }
    if (!t.resumed) {
      const counts = countParams(run.model, t.method);
      const rec = stamped({
        kind: "start",
        step: t.step,
        run: t.run,
        params: { trainable: counts.trainable, total: counts.total },
      });
      log?.append(rec);
      io.log(rec);
    }
    return await new RunLoop(t, data, io, log, ckptPath, trainTokens).run();
  } finally {
    log?.close();
    tree.dispose([t.params, t.buffers, t.optState]);
  }
}

/**
 * `e` with `what` (the operation) in front of its message, when it is a device or file-system error
 * (a GPU error names its op but not the run's phase; Deno's file errors name neither).
 */
function withContext(e: unknown, what: string): unknown {
  if (e instanceof DeviceError || (e instanceof Error && "code" in e)) {
    e.message = `${what}: ${e.message}`;
  }
  return e;
}

/**
 * Runs `f`; a device or file-system error it throws gets `what` in front (see withContext). A
 * lost device makes later calls fail in odd ways: its loss is the error then.
 */
async function during<T>(what: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw withContext(await deviceLostError() ?? e, what);
  }
}

const stamped = (rec: LogRecord): LogRecord => ({ time: new Date().toISOString(), ...rec });

/**
 * Training tokens of the steps a resumed log covers: its last `trainTokens`, or for a log written
 * before that field existed, every step counted as full (batch × seq × gradAccum).
 */
async function tokensSoFar(path: string, run: RunConfig, step: number): Promise<number> {
  const last = (await readLog(path)).records.findLast((r) => typeof r.trainTokens === "number");
  return last ? last.trainTokens as number : step * run.batch * run.seq * run.gradAccum;
}

/**
 * A step's loss, non-finite flags and gradient Σg², kept on the device until the next read, with
 * what was measured on the CPU when it ended and the records of its events (refresh, refactor,
 * merge), logged after its own so that the log's steps never go back.
 */
interface PendingStep {
  step: number;
  loss: Tensor;
  flags: Tensor;
  sumSq: Tensor;
  /** Training tokens up to and including this step. */
  trainTokens: number;
  /** Live device bytes after the step, and the peak during it: requested, then allocated. */
  liveBytes: number;
  peakBytes: number;
  allocatedBytes: number;
  allocatedPeak: number;
  events: LogRecord[];
}

const deviceTensors = (p: PendingStep) => [p.loss, p.flags, p.sumSq];

/** The loop of one run: steps, reads, evaluations and checkpoints (see the module doc). */
class RunLoop {
  readonly #lr: (step: number) => number;
  #pending: PendingStep[] = [];
  /** Step of the checkpoint on disk (-1: none written by or loaded into this run). */
  #saved: number;
  #skipsInARow = 0;
  #tokens = 0;
  /** Training tokens since the run began (across resumes). */
  #trainTokens: number;
  #peak = 0;
  #allocatedPeak = 0;
  #t0 = performance.now();
  /**
   * Start of the steps the next read covers (performance.now() ms), and their tokens: training
   * time only, restarted after each evaluation and checkpoint.
   */
  #window = { start: performance.now(), tokens: 0 };

  constructor(
    readonly t: Training,
    readonly data: RunData,
    readonly io: RunIO,
    readonly log: RunLog | null,
    readonly ckptPath: string | null,
    trainTokens: number,
  ) {
    this.#lr = lrSchedule(t.run);
    this.#saved = t.resumed ? t.step : -1;
    this.#trainTokens = trainTokens;
  }

  #restartWindow(): void {
    this.#window = { start: performance.now(), tokens: 0 };
  }

  async run(): Promise<RunResult> {
    const { t, io } = this;
    const run = t.run;
    let interrupted = false;
    try {
      if (t.step === 0) await this.evaluate();
      while (t.step < run.steps) {
        resetPeakBytes();
        const flags = t.guard.flags();
        t.watch.begin();
        let r;
        try {
          enterPhase("step");
          r = await during(`step ${t.step + 1}`, () => trainStep(t, flags));
        } catch (e) {
          t.watch.end(t.step + 1).sumSq.dispose();
          throw e;
        }
        t.step++;
        this.#tokens += r.tokens;
        this.#window.tokens += r.tokens;
        this.#trainTokens += r.tokens;
        const { sumSq, refresh } = t.watch.end(t.step);
        const events = refresh ? [refresh] : [];
        const cycle = cycleLength(run);
        if (cycle > 0 && t.step % cycle === 0 && t.step < run.steps) {
          events.push(await resetCycle(t));
        }
        const mem = memoryStats();
        this.#peak = Math.max(this.#peak, mem.peakBytes);
        this.#allocatedPeak = Math.max(this.#allocatedPeak, mem.allocatedPeak);
        this.#pending.push({
          step: t.step,
          loss: r.loss,
          flags,
          sumSq,
          trainTokens: this.#trainTokens,
          liveBytes: mem.liveBytes,
          peakBytes: mem.peakBytes,
          allocatedBytes: mem.allocatedBytes,
          allocatedPeak: mem.allocatedPeak,
          events,
        });
        const last = t.step === run.steps;
        if (t.step % run.logEvery === 0 || last) await this.read();
        if (run.evalEvery > 0 && t.step % run.evalEvery === 0 && !last) {
          await this.read();
          await this.evaluate();
          await this.save();
        }
        io.onStep?.(t.step);
        if (io.shouldStop()) {
          interrupted = true;
          break;
        }
      }
      await this.read();
    } finally {
      tree.dispose(this.#pending.map(deviceTensors));
      this.#pending = [];
    }
    io.progress.done();
    const seconds = (performance.now() - this.#t0) / 1000;
    if (!interrupted && (t.history.val.at(-1)?.[0] ?? -1) !== t.step) await this.evaluate();
    await this.save();
    if (interrupted && io.out) {
      io.progress.log(`interrupted at step ${t.step}; checkpoint written to ${io.out}`);
    }
    return this.result(seconds, interrupted);
  }

  /** Appends a record (with its time, unless it has one) to the log and shows it to `io.log`. */
  record(rec: LogRecord): void {
    const full = stamped(rec);
    this.log?.append(full);
    this.io.log(full);
  }

  /**
   * Reads the losses and flags of the steps since the last read (one sync), logs them, and
   * applies the non-finite policy to any bad step (see `guard.ts`).
   */
  async read(): Promise<void> {
    const { t } = this;
    const pending = this.#pending;
    if (pending.length === 0) return;
    this.#pending = [];
    let vals;
    try {
      const steps = `step${pending.length > 1 ? "s" : ""} ${pending[0].step}` +
        (pending.length > 1 ? `-${pending.at(-1)!.step}` : "");
      vals = await during(steps, () => readAll(pending.flatMap(deviceTensors)));
    } finally {
      tree.dispose(pending.map(deviceTensors));
    }
    // The steps since the last read ran back to back: each gets their mean time, and a time
    // stamp that many seconds apart, the last one now.
    const seconds = (performance.now() - this.#window.start) / 1000;
    const perStep = {
      stepSeconds: seconds / pending.length,
      tokensPerSec: this.#window.tokens / seconds,
    };
    this.#restartWindow();
    const now = Date.now();
    const timeOf = (i: number) =>
      new Date(now - (pending.length - 1 - i) * perStep.stepSeconds * 1000).toISOString();
    for (const [i, p] of pending.entries()) {
      const { step } = p;
      const [loss] = vals[3 * i];
      const lr = this.#lr(step - 1);
      const bad = t.guard.verdict(step, loss, vals[3 * i + 1]);
      if (!bad) {
        this.#skipsInARow = 0;
        t.history.train.push([step, loss]);
        this.record({
          time: timeOf(i),
          kind: "train",
          step,
          loss,
          lr,
          gradNorm: Math.sqrt(vals[3 * i + 2][0]),
          trainTokens: p.trainTokens,
          ...perStep,
          liveBytes: p.liveBytes,
          peakBytes: p.peakBytes,
          allocatedBytes: p.allocatedBytes,
          allocatedPeak: p.allocatedPeak,
        });
        for (const e of p.events) this.record(e);
        continue;
      }
      const what = describeNonFinite(bad);
      this.record({
        kind: t.guard.policy === "skip" ? "skip" : "nonfinite",
        step,
        loss: String(loss),
        lr,
        nonfinite: bad.params,
      });
      for (const e of p.events) this.record(e);
      if (t.guard.policy === "stop") throw this.stopped(what);
      this.io.progress.log(`${what}: skipped`);
      if (++this.#skipsInARow >= MAX_CONSECUTIVE_SKIPS) {
        throw this.stopped(`${MAX_CONSECUTIVE_SKIPS} steps in a row (the last ${what})`);
      }
    }
    const elapsed = (performance.now() - this.#t0) / 1000;
    const last = pending.at(-1)!.step;
    this.io.progress.update({
      step: last,
      total: t.run.steps,
      loss: t.history.train.at(-1)?.[1] ?? NaN,
      lr: this.#lr(last - 1),
      tokensPerSec: this.#tokens / elapsed,
      elapsed,
      liveBytes: memoryStats().liveBytes,
      peakBytes: this.#peak,
    });
  }

  /** The error that stops the run at non-finite values, naming the last good checkpoint. */
  stopped(what: string): Error {
    const last = this.ckptPath && this.#saved >= 0
      ? `${this.ckptPath} (step ${this.#saved})`
      : null;
    return nonFiniteStop(what, last, this.t.guard.policy);
  }

  async evaluate(): Promise<void> {
    const { t, io } = this;
    const t0 = performance.now();
    enterPhase("eval");
    const r = await during(
      `the evaluation at step ${t.step}`,
      () => evaluate(modelOf(t), t.params, this.data.val, t.run.batch, t.run.evalTokens),
    );
    if (!Number.isFinite(r.loss)) {
      throw this.stopped(`step ${t.step}: the validation loss is ${r.loss}`);
    }
    t.history.val.push([t.step, r.loss]);
    this.record({
      kind: "eval",
      step: t.step,
      valLoss: r.loss,
      valPpl: Math.exp(r.loss),
      tokens: r.tokens,
      trainTokens: this.#trainTokens,
      seconds: (performance.now() - t0) / 1000,
    });
    io.progress.log(
      `step ${t.step}: val loss ${r.loss.toFixed(4)}, ppl ${
        Math.exp(r.loss).toFixed(2)
      } (${r.tokens} tokens)`,
    );
    await io.onEval?.(t.history);
    this.#restartWindow();
  }

  /**
   * Writes a checkpoint of the current state once every step it covers has been read and found
   * finite, and the log records of those steps are durable; never twice for one step.
   */
  async save(): Promise<void> {
    const { t } = this;
    if (!this.ckptPath || this.#saved === t.step) return;
    await this.read();
    this.log?.sync();
    enterPhase("checkpoint");
    try {
      await saveCheckpoint(this.ckptPath, checkpointOf(t, this.data.source), {
        keep: this.io.keep,
      });
    } catch (e) {
      // A parameter can overflow in a step whose loss and gradients were still finite.
      if (e instanceof NonFiniteError) {
        throw this.stopped(`step ${t.step}: ${e.message}`);
      }
      throw withContext(
        await deviceLostError() ?? e,
        `writing the checkpoint of step ${t.step} to ${this.ckptPath}`,
      );
    }
    this.#saved = t.step;
    this.#restartWindow();
  }

  result(seconds: number, interrupted: boolean): RunResult {
    const { t } = this;
    const run = t.run;
    const counts = countParams(run.model, t.method);
    const est = estimateMemory(
      run.model,
      { method: t.method, optimizer: optimizerSpec(run), weights: run.dtype },
      "ours",
    );
    return {
      run,
      params: { trainable: counts.trainable, total: counts.total },
      estimatedBytes: est.total,
      measuredBytes: tree.bytes({ params: t.params, buffers: t.buffers, optState: t.optState }),
      peakBytes: this.#peak,
      allocatedPeak: this.#allocatedPeak,
      allocatedBytes: memoryStats().allocatedBytes,
      stateBytes: tree.bytes(t.optState),
      estimatedStateBytes: est.optimizerStates + est.projector,
      tokensPerSec: this.#tokens / Math.max(1e-9, seconds),
      history: t.history,
      steps: t.step,
      seconds,
      interrupted,
    };
  }
}

/**
 * One optimizer step: forward + backward and an optimizer update per micro-batch (the optimizer
 * accumulates `gradAccum` of them before it changes anything); the loss is their mean. Every
 * micro-batch's loss and gradients mark the step's non-finite `flags`.
 */
async function trainStep(t: Training, flags: Tensor): Promise<{ loss: Tensor; tokens: number }> {
  const losses: Tensor[] = [];
  let tokens = 0;
  for (let k = 0; k < t.run.gradAccum; k++) {
    const b = t.stream.next();
    const batch: Batch = {
      inputs: tensor(b.inputs, [b.batch, b.seq], "i32"),
      targets: tensor(b.targets, [b.batch, b.seq], "i32"),
    };
    try {
      losses.push(
        t.perLayerOpt
          ? await perLayerMicroStep(t, t.perLayerOpt, batch, flags)
          : await microStep(t, batch, flags),
      );
    } finally {
      batch.inputs.dispose();
      batch.targets.dispose();
    }
    tokens += b.tokens;
  }
  if (losses.length === 1) return { loss: losses[0], tokens };
  const mean = scope(() => mulScalar(losses.reduce((a, l) => add(a, l)), 1 / losses.length));
  tree.dispose(losses);
  return { loss: mean, tokens };
}

/**
 * Forward + backward, then update: gradients of all weights at once. Under `--on-nonfinite skip`
 * the update is gated on the step's flags (see `guard.ts`).
 */
async function microStep(t: Training, batch: Batch, flags: Tensor): Promise<Tensor> {
  const model = modelOf(t);
  const { value, grads } = valueAndGrad((p: LlamaParams) =>
    loss(model, p, batch, { recompute: t.run.recompute })
  )(
    t.params,
  );
  t.guard.checkLoss(flags, value);
  tree.flatten(grads).forEach((g, i) => t.guard.checkGrad(flags, g, i));
  await t.guard.update(flags, async () => {
    const r = await t.opt.update(grads, t.optState, t.params);
    t.optState = r.state;
    t.params = applyUpdates(t.params, r.updates);
  });
  return value;
}

/**
 * Forward, then a backward whose `onGrad` hook updates each weight the moment its gradient is
 * final and frees that gradient: the full gradient set is never resident, and where the optimizer
 * updates rows in place (Adam) the LM head's and embedding's gradients never exist whole either.
 * (So the non-finite flags are set, but the update cannot wait for them: per-layer runs only stop.)
 */
async function perLayerMicroStep(
  t: Training,
  perLayerOpt: PerLayer<unknown>,
  batch: Batch,
  flags: Tensor,
): Promise<Tensor> {
  const model = modelOf(t);
  const leaves = tree.flatten(t.params);
  const tape = new Tape();
  try {
    tape.watch(...leaves);
    const value = tape.run(() => loss(model, t.params, batch, { recompute: t.run.recompute }));
    t.guard.checkLoss(flags, value);
    const update = perLayerOpt.start(t.params, t.optState as unknown[], {
      observe: (g, i) => t.guard.checkGrad(flags, g, i),
    });
    tape.backward(value, leaves, update);
    ({ params: t.params, state: t.optState } = await update.finish());
    return value;
  } finally {
    tape.dispose();
  }
}

/**
 * The end of a cycle: SLTrain refactorizes every B·A, ReLoRA merges its adapters; then the momentum
 * reset (a fresh optimizer whose learning rate picks up the quick-recovery ramp). Returns the log
 * record, stamped now.
 */
async function resetCycle(t: Training): Promise<LogRecord> {
  const t0 = performance.now();
  const relora = t.run.method === "relora";
  t.params = relora
    ? mergeRelora(modelOf(t), t.params, t.run.seed + t.step)
    : await refactorLlama(modelOf(t), t.params);
  tree.dispose(t.optState);
  Object.assign(t, optimizerAt(t.run, t.params, t.step, t.watch));
  t.optState = t.opt.init(t.params);
  // Its dispatches are queued, not done: the time is the CPU's (all of it for the refactorization's
  // float64 SVDs, which read B and A back).
  return stamped({
    kind: relora ? "merge" : "refactor",
    step: t.step,
    seconds: (performance.now() - t0) / 1000,
  });
}

function checkpointOf(t: Training, source: DataSource | undefined) {
  const meta = { run: t.run, stream: t.stream.state, history: t.history };
  return {
    params: t.params,
    buffers: t.buffers,
    optState: t.optState,
    step: t.step,
    meta: source ? { ...meta, data: source } : meta,
  };
}
