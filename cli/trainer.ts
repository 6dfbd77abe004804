/**
 * The training loop of one run. A step reads like llm.c's: forward + backward, update (clipping
 * and accumulation are stages of the optimizer), log; setup and resume, evaluation, checkpoints
 * and the SLTrain refactorization / ReLoRA merge cycle are small functions of their own.
 * @module
 */
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { Tape, valueAndGrad } from "../core/tape.ts";
import { readAll, scope, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { BatchStream, type BatchStreamState, type Sequences } from "../data/batches.ts";
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
  applyUpdates,
  type GradientTransformation,
  type PerParameter,
  perParameter,
} from "../optim/mod.ts";
import { loadCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { evaluate } from "./evaluate.ts";
import type { Progress } from "./progress.ts";
import {
  buildOptimizer,
  cycleLength,
  linearMethod,
  lrSchedule,
  optimizerSpec,
  type RunConfig,
} from "./run_config.ts";

/** Train and validation sequences of a run. */
export interface RunData {
  /** Training sequences. */
  train: Sequences;
  /** Validation sequences. */
  val: Sequences;
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
  /** Peak live device bytes during a step. */
  peakBytes: number;
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
  /** Output folder (checkpoint, log, plot); null keeps nothing on disk. */
  out: string | null;
  /** Continue from `out/checkpoint.safetensors`. */
  resume: boolean;
  /** Progress display. */
  progress: Progress;
  /** Appends a record to the run's JSONL log. */
  log: (record: Record<string, unknown>) => void;
  /** Polled after each step; true stops the run with a checkpoint (Ctrl-C). */
  shouldStop: () => boolean;
}

/**
 * The settings a resumed run may change: how long it runs and how it evaluates and reports. Any
 * other setting, including one added later, must match the checkpoint's.
 */
const MAY_CHANGE: ReadonlySet<string> = new Set<keyof RunConfig>([
  "modelName",
  "steps",
  "evalEvery",
  "evalTokens",
  "logEvery",
  // Recomputation gives the same gradients to the bit: only memory and time differ.
  "recompute",
]);

/** Names the settings of `run` that differ from a checkpoint's (empty when it can resume). */
export function resumeConflicts(run: RunConfig, saved: RunConfig): string[] {
  const now = run as unknown as Record<string, unknown>;
  const then = saved as unknown as Record<string, unknown>;
  const keys = new Set([...Object.keys(now), ...Object.keys(then)]);
  return [...keys]
    .filter((k) => !MAY_CHANGE.has(k) && JSON.stringify(now[k]) !== JSON.stringify(then[k]))
    .map((k) => `${k}: checkpoint ${JSON.stringify(then[k])}, now ${JSON.stringify(now[k])}`);
}

/** A run in progress: what changes from step to step. */
interface Training {
  readonly run: RunConfig;
  readonly method: LinearMethod;
  params: LlamaParams;
  buffers: LlamaBuffers;
  /** This cycle's optimizer (a fresh one after each momentum reset). */
  opt: GradientTransformation;
  /** The same optimizer, when the run updates each weight during backward. */
  layerwise: PerParameter<unknown> | null;
  optState: unknown;
  /** Completed optimizer steps. */
  step: number;
  readonly stream: BatchStream;
  readonly history: History;
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
): Pick<Training, "opt" | "layerwise"> {
  const cycle = cycleLength(run);
  const opt = buildOptimizer(run, params, cycle > 0 ? Math.floor(step / cycle) * cycle : 0);
  const layerwise = run.perLayer ? perParameter(opt) : null;
  return { opt: layerwise ?? opt, layerwise };
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
  if (!(io.resume && ckptPath)) {
    const { params, buffers } = initLlama(run.model, method, run.seed, { dtype: run.dtype });
    const o = optimizerAt(run, params, 0);
    return {
      run,
      method,
      params,
      buffers,
      ...o,
      optState: o.opt.init(params),
      step: 0,
      stream,
      history,
    };
  }
  const ck = await loadCheckpoint(ckptPath);
  const conflicts = resumeConflicts(run, ck.meta.run as RunConfig);
  if (conflicts.length > 0) {
    tree.dispose(ck);
    throw new Error(
      `cannot resume ${ckptPath}: it comes from another config:\n  ${conflicts.join("\n  ")}`,
    );
  }
  const params = ck.params as LlamaParams;
  stream.state = ck.meta.stream as BatchStreamState;
  Object.assign(history, ck.meta.history as History);
  io.progress.log(`resumed from ${ckptPath} at step ${ck.step}`);
  return {
    run,
    method,
    params,
    buffers: ck.buffers as LlamaBuffers,
    ...optimizerAt(run, params, ck.step),
    optState: ck.optState,
    step: ck.step,
    stream,
    history,
  };
}

/** Trains one run to `run.steps` (or until stopped) and reports. */
export async function trainRun(run: RunConfig, data: RunData, io: RunIO): Promise<RunResult> {
  const ckptPath = io.out ? `${io.out}/checkpoint.safetensors` : null;
  const t = await startRun(run, data.train, ckptPath, io);
  const lr = lrSchedule(run);
  const save = () => ckptPath ? saveCheckpoint(ckptPath, checkpointOf(t)) : Promise.resolve();
  const evalNow = () => evaluateNow(t, data.val, io);
  // Losses stay on the device until a log step reads them back together (one sync).
  let pending: [number, Tensor][] = [];
  const flushLosses = async () => {
    if (pending.length === 0) return;
    const vals = await readAll(pending.map(([, l]) => l));
    pending.forEach(([step, l], i) => {
      t.history.train.push([step, vals[i][0]]);
      io.log({ kind: "train", step, loss: vals[i][0], lr: lr(step - 1) });
      l.dispose();
    });
    pending = [];
  };

  if (t.step === 0) await evalNow();
  const t0 = performance.now();
  let tokens = 0;
  let peak = 0;
  let interrupted = false;
  while (t.step < run.steps) {
    resetPeakBytes();
    const r = await trainStep(t);
    t.step++;
    tokens += r.tokens;
    pending.push([t.step, r.loss]);
    const cycle = cycleLength(run);
    if (cycle > 0 && t.step % cycle === 0 && t.step < run.steps) await resetCycle(t, io);
    peak = Math.max(peak, memoryStats().peakBytes);
    const last = t.step === run.steps;
    if (t.step % run.logEvery === 0 || last) {
      await flushLosses();
      const elapsed = (performance.now() - t0) / 1000;
      io.progress.update({
        step: t.step,
        total: run.steps,
        loss: t.history.train.at(-1)?.[1] ?? NaN,
        lr: lr(t.step - 1),
        tokensPerSec: tokens / elapsed,
        elapsed,
        liveBytes: memoryStats().liveBytes,
        peakBytes: peak,
      });
    }
    if (run.evalEvery > 0 && t.step % run.evalEvery === 0 && !last) {
      await flushLosses();
      await evalNow();
      await save();
    }
    if (io.shouldStop()) {
      interrupted = true;
      break;
    }
  }
  await flushLosses();
  io.progress.done();
  const seconds = (performance.now() - t0) / 1000;
  if (!interrupted && (t.history.val.at(-1)?.[0] ?? -1) !== t.step) await evalNow();
  await save();
  if (interrupted && ckptPath) {
    io.progress.log(`interrupted at step ${t.step}; checkpoint written to ${ckptPath}`);
  }
  const counts = countParams(run.model, t.method);
  const est = estimateMemory(
    run.model,
    { method: t.method, optimizer: optimizerSpec(run) },
    "ours",
  );
  const kept = { params: t.params, buffers: t.buffers, optState: t.optState };
  const result: RunResult = {
    run,
    params: { trainable: counts.trainable, total: counts.total },
    estimatedBytes: est.total,
    measuredBytes: tree.bytes(kept),
    peakBytes: peak,
    tokensPerSec: tokens / Math.max(1e-9, seconds),
    history: t.history,
    steps: t.step,
    seconds,
    interrupted,
  };
  tree.dispose(kept);
  return result;
}

/**
 * One optimizer step: forward + backward and an optimizer update per micro-batch (the optimizer
 * accumulates `gradAccum` of them before it changes anything); the loss is their mean.
 */
async function trainStep(t: Training): Promise<{ loss: Tensor; tokens: number }> {
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
        t.layerwise ? await layerwiseMicroStep(t, t.layerwise, batch) : await microStep(t, batch),
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

/** Forward + backward, then update: gradients of all weights at once. */
async function microStep(t: Training, batch: Batch): Promise<Tensor> {
  const model = modelOf(t);
  const lossOf = (p: LlamaParams) => loss(model, p, batch, { recompute: t.run.recompute });
  const { value, grads } = valueAndGrad(lossOf)(t.params);
  const r = await t.opt.update(grads, t.optState, t.params);
  t.optState = r.state;
  t.params = applyUpdates(t.params, r.updates);
  return value;
}

/**
 * Forward, then a backward whose `onGrad` hook updates each weight the moment its gradient is
 * final and frees that gradient: the full gradient set is never resident.
 */
async function layerwiseMicroStep(
  t: Training,
  layerwise: PerParameter<unknown>,
  batch: Batch,
): Promise<Tensor> {
  const model = modelOf(t);
  const leaves = tree.flatten(t.params);
  const tape = new Tape();
  try {
    tape.watch(...leaves);
    const value = tape.run(() => loss(model, t.params, batch, { recompute: t.run.recompute }));
    const update = layerwise.start(t.params, t.optState as unknown[]);
    tape.backward(value, leaves, { onGrad: update.onGrad });
    ({ params: t.params, state: t.optState } = await update.finish());
    return value;
  } finally {
    tape.dispose();
  }
}

/**
 * The end of a cycle: SLTrain refactorizes every B·A, ReLoRA merges its adapters; then the momentum
 * reset (a fresh optimizer whose learning rate picks up the quick-recovery ramp).
 */
async function resetCycle(t: Training, io: RunIO): Promise<void> {
  const relora = t.run.method === "relora";
  t.params = relora
    ? mergeRelora(modelOf(t), t.params, t.run.seed + t.step)
    : await refactorLlama(modelOf(t), t.params);
  tree.dispose(t.optState);
  Object.assign(t, optimizerAt(t.run, t.params, t.step));
  t.optState = t.opt.init(t.params);
  io.log({ kind: relora ? "merge" : "refactor", step: t.step });
}

async function evaluateNow(t: Training, val: Sequences, io: RunIO): Promise<void> {
  const r = await evaluate(modelOf(t), t.params, val, t.run.batch, t.run.evalTokens);
  t.history.val.push([t.step, r.loss]);
  io.log({
    kind: "eval",
    step: t.step,
    valLoss: r.loss,
    valPpl: Math.exp(r.loss),
    tokens: r.tokens,
  });
  io.progress.log(
    `step ${t.step}: val loss ${r.loss.toFixed(4)}, ppl ${
      Math.exp(r.loss).toFixed(2)
    } (${r.tokens} tokens)`,
  );
}

function checkpointOf(t: Training) {
  return {
    params: t.params,
    buffers: t.buffers,
    optState: t.optState,
    step: t.step,
    meta: { run: t.run, stream: t.stream.state, history: t.history },
  };
}
