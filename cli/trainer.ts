/**
 * The training loop of one run: model and optimizer setup, (optionally per-layer) steps, periodic
 * loss readback, evaluation, SLTrain refactorization / ReLoRA merges, checkpoints and resume.
 * @module
 */
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { Tape, valueAndGrad } from "../core/tape.ts";
import { collectTensors, readAll, scope, type Tensor, tensor } from "../core/tensor.ts";
import { BatchStream, type BatchStreamState, type Sequences } from "../data/batches.ts";
import { countParams, estimateMemory } from "../models/estimate.ts";
import { mergeRelora } from "../models/relora.ts";
import {
  initLlama,
  type LlamaBuffers,
  type LlamaModel,
  type LlamaParams,
  loss,
  paramPaths,
} from "../models/llama.ts";
import { add, mulScalar } from "../ops/mod.ts";
import {
  disposeTree,
  type Optimizer,
  refactorFactors,
  treeBytes,
  treeRebuild,
} from "../optim/mod.ts";
import { loadCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { evaluate } from "./evaluate.ts";
import type { Progress } from "./progress.ts";
import {
  buildOptimizer,
  cycleLength,
  isGaloreTarget,
  leafOptimizer,
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

const STRUCTURAL: (keyof RunConfig)[] = [
  "model",
  "method",
  "rank",
  "delta",
  "alpha",
  "lr",
  "warmup",
  "minLrRatio",
  "batch",
  "seq",
  "gradAccum",
  "clip",
  "weightDecay",
  "perLayer",
  "galoreGap",
  "galoreScale",
  "refactorEvery",
  "reloraEvery",
  "recoverySteps",
  "seed",
];

/** Names the settings of `run` that differ from a checkpoint's (empty when it can resume). */
export function resumeConflicts(run: RunConfig, saved: RunConfig): string[] {
  return STRUCTURAL.filter((k) => JSON.stringify(run[k]) !== JSON.stringify(saved[k])).map(
    (k) => `${k}: checkpoint ${JSON.stringify(saved[k])}, now ${JSON.stringify(run[k])}`,
  );
}

function batchTensors(stream: BatchStream): { inputs: Tensor; targets: Tensor; tokens: number } {
  const b = stream.next();
  return {
    inputs: tensor(b.inputs, [b.batch, b.seq], "i32"),
    targets: tensor(b.targets, [b.batch, b.seq], "i32"),
    tokens: b.tokens,
  };
}

/** Per-parameter optimizers for per-layer updates, one state per leaf. */
interface LeafOpt {
  opt: Optimizer;
  galore: boolean;
}

/** Trains one run to `run.steps` (or until stopped) and reports. */
export async function trainRun(run: RunConfig, data: RunData, io: RunIO): Promise<RunResult> {
  const method = linearMethod(run);
  const built = initLlama(run.model, method, run.seed);
  let params: LlamaParams = built.params;
  let buffers: LlamaBuffers = built.buffers;
  const model = (): LlamaModel => ({ config: run.model, method, buffers });
  const entries = paramPaths(params);
  const leafOpts: LeafOpt[] = entries.map((e) => {
    const galore = isGaloreTarget(run, e);
    return { opt: leafOptimizer(run, galore), galore };
  });
  const opt = buildOptimizer(run, params);
  const initState = (p: LlamaParams): unknown =>
    run.perLayer ? collectTensors(p).map((t, i) => leafOpts[i].opt.init(t)) : opt.init(p);
  let optState = initState(params);
  const stream = new BatchStream(data.train, run.batch, run.seed);
  const history: History = { train: [], val: [] };
  const lr = lrSchedule(run);
  let step = 0;

  const ckptPath = io.out ? `${io.out}/checkpoint.safetensors` : null;
  if (io.resume && ckptPath) {
    const ck = await loadCheckpoint(ckptPath);
    const saved = ck.meta.run as RunConfig;
    const conflicts = resumeConflicts(run, saved);
    if (conflicts.length > 0) {
      disposeTree(ck);
      disposeTree({ params, buffers, optState });
      throw new Error(
        `cannot resume ${ckptPath}: it comes from another config:\n  ${conflicts.join("\n  ")}`,
      );
    }
    disposeTree({ params, buffers, optState });
    params = ck.params as LlamaParams;
    buffers = ck.buffers as LlamaBuffers;
    optState = ck.optState;
    step = ck.step;
    stream.state = ck.meta.stream as BatchStreamState;
    Object.assign(history, ck.meta.history as History);
    io.progress.log(`resumed from ${ckptPath} at step ${step}`);
  }

  const save = async () => {
    if (!ckptPath) return;
    await saveCheckpoint(ckptPath, {
      params,
      buffers,
      optState,
      step,
      meta: { run, stream: stream.state, history },
    });
  };

  const evalNow = async () => {
    const r = await evaluate(model(), params, data.val, run.batch, run.evalTokens);
    history.val.push([step, r.loss]);
    io.log({ kind: "eval", step, valLoss: r.loss, valPpl: Math.exp(r.loss), tokens: r.tokens });
    io.progress.log(
      `step ${step}: val loss ${r.loss.toFixed(4)}, ppl ${
        Math.exp(r.loss).toFixed(2)
      } (${r.tokens} tokens)`,
    );
  };
  if (step === 0) await evalNow();

  let pendingLosses: [number, Tensor][] = [];
  const flushLosses = async () => {
    if (pendingLosses.length === 0) return;
    const vals = await readAll(pendingLosses.map(([, t]) => t));
    pendingLosses.forEach(([s, t], i) => {
      const v = vals[i][0];
      history.train.push([s, v]);
      io.log({ kind: "train", step: s, loss: v, lr: lr(s - 1) });
      t.dispose();
    });
    pendingLosses = [];
  };

  const t0 = performance.now();
  let tokens = 0;
  let peak = 0;
  let interrupted = false;
  while (step < run.steps) {
    resetPeakBytes();
    let lossT: Tensor;
    if (run.perLayer) {
      const r = perLayerStep(run, model(), params, optState as unknown[], leafOpts, stream, step);
      await r.done;
      params = r.params;
      optState = r.state;
      lossT = r.loss;
      tokens += r.tokens;
    } else {
      const r = accumulate(run, model(), params, stream);
      tokens += r.tokens;
      lossT = r.loss;
      const u = await opt.update(r.grads, optState, params, step);
      disposeTree(r.grads);
      params = u.params as LlamaParams;
      optState = u.state;
    }
    step++;
    pendingLosses.push([step, lossT]);
    const cycle = cycleLength(run);
    if (cycle > 0 && step % cycle === 0 && step < run.steps) {
      params = await resetCycle(run, model(), params, step);
      buffers = model().buffers;
      disposeTree(optState);
      optState = initState(params);
      io.log({ kind: run.method === "relora" ? "merge" : "refactor", step });
    }
    peak = Math.max(peak, memoryStats().peakBytes);
    const last = step === run.steps;
    if (step % run.logEvery === 0 || last) {
      await flushLosses();
      const elapsed = (performance.now() - t0) / 1000;
      const mem = memoryStats();
      io.progress.update({
        step,
        total: run.steps,
        loss: history.train.at(-1)?.[1] ?? NaN,
        lr: lr(step - 1),
        tokensPerSec: tokens / elapsed,
        elapsed,
        liveBytes: mem.liveBytes,
        peakBytes: peak,
      });
    }
    if (run.evalEvery > 0 && step % run.evalEvery === 0 && !last) {
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
  if (!interrupted && (history.val.at(-1)?.[0] ?? -1) !== step) await evalNow();
  await save();
  if (interrupted && ckptPath) {
    io.progress.log(`interrupted at step ${step}; checkpoint written to ${ckptPath}`);
  }

  const counts = countParams(run.model, method);
  const est = estimateMemory(run.model, {
    method,
    optimizer: optimizerSpec(run),
  }, "ours");
  const result: RunResult = {
    run,
    params: { trainable: counts.trainable, total: counts.total },
    estimatedBytes: est.total,
    measuredBytes: treeBytes({ params, buffers, optState }),
    peakBytes: peak,
    tokensPerSec: tokens / Math.max(1e-9, seconds),
    history,
    steps: step,
    seconds,
    interrupted,
  };
  disposeTree({ params, buffers, optState });
  for (const [, t] of pendingLosses) t.dispose();
  return result;
}

/** Forward+backward over `gradAccum` micro-batches; grads averaged, loss the mean of the micro losses. */
function accumulate(
  run: RunConfig,
  model: LlamaModel,
  params: LlamaParams,
  stream: BatchStream,
): { grads: LlamaParams; loss: Tensor; tokens: number } {
  const f = valueAndGrad((p: LlamaParams) => loss(model, p, batch));
  let batch = batchTensors(stream);
  let tokens = batch.tokens;
  let { value, grads } = f(params);
  batch.inputs.dispose();
  batch.targets.dispose();
  for (let k = 1; k < run.gradAccum; k++) {
    batch = batchTensors(stream);
    tokens += batch.tokens;
    const r = f(params);
    batch.inputs.dispose();
    batch.targets.dispose();
    const merged = scope(() => ({
      value: add(value, r.value),
      grads: treeRebuild(
        grads,
        collectTensors(grads).map((g, i) => add(g, collectTensors(r.grads)[i])),
      ),
    }));
    disposeTree([value, grads, r.value, r.grads]);
    value = merged.value;
    grads = merged.grads as LlamaParams;
  }
  if (run.gradAccum > 1) {
    const s = 1 / run.gradAccum;
    const scaled = scope(() => ({
      value: mulScalar(value, s),
      grads: treeRebuild(grads, collectTensors(grads).map((g) => mulScalar(g, s))),
    }));
    disposeTree([value, grads]);
    value = scaled.value;
    grads = scaled.grads as LlamaParams;
  }
  return { grads, loss: value, tokens };
}

/**
 * One step that updates each parameter as soon as its gradient is final (the tape's onGrad hook)
 * and frees that gradient at once, so the full gradient set is never resident. A GaLore projector
 * refresh reads its gradient back, so that gradient lives until the refresh has run.
 */
function perLayerStep(
  run: RunConfig,
  model: LlamaModel,
  params: LlamaParams,
  states: unknown[],
  leafOpts: LeafOpt[],
  stream: BatchStream,
  step: number,
): { params: LlamaParams; state: unknown[]; loss: Tensor; tokens: number; done: Promise<unknown> } {
  const batch = batchTensors(stream);
  const leaves = collectTensors(params);
  const next = leaves.slice();
  const nextStates = states.slice();
  const pending: Promise<unknown>[] = [];
  const tape = new Tape();
  tape.watch(...leaves);
  const value = tape.run(() => loss(model, params, batch));
  try {
    tape.backward(value, leaves, {
      onGrad: (g, i) => {
        const lo = leafOpts[i];
        const refresh = lo.galore && ((states[i] as { count: number }).count % run.galoreGap === 0);
        const p = lo.opt.update(g, states[i], leaves[i], step).then((r) => {
          next[i] = r.params as Tensor;
          nextStates[i] = r.state;
        });
        if (refresh) {
          g.pin();
          g.dispose();
          pending.push(p.finally(() => g.unpin()));
        } else {
          // Every dispatch reading g is already recorded, so its buffer can be recycled now.
          g.dispose();
          pending.push(p);
        }
      },
    });
  } finally {
    tape.dispose();
    batch.inputs.dispose();
    batch.targets.dispose();
  }
  const done = Promise.all(pending);
  // The promises settle in microtasks; the caller awaits `done` before using params and states.
  const result = {
    get params() {
      return treeRebuild(params, next) as LlamaParams;
    },
    get state() {
      return nextStates;
    },
    loss: value,
    tokens: batch.tokens,
    done,
  };
  return result;
}

/** SLTrain: refactorize every B·A (momentum is reset by the caller); ReLoRA: merge the adapters. */
async function resetCycle(
  run: RunConfig,
  model: LlamaModel,
  params: LlamaParams,
  step: number,
): Promise<LlamaParams> {
  if (run.method === "relora") return mergeRelora(model, params, run.seed + step);
  const layers = [];
  for (const layer of params.layers) {
    const l: Record<string, unknown> = { ...layer };
    for (const name of ["q", "k", "v", "o", "gate", "up", "down"] as const) {
      const lin = layer[name] as { A: Tensor; B: Tensor; V: Tensor };
      const r = await refactorFactors(lin.B, lin.A);
      l[name] = { ...lin, A: r.a, B: r.b };
    }
    layers.push(l);
  }
  return { ...params, layers } as unknown as LlamaParams;
}
