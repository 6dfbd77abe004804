/**
 * A training run inside a browser tab, on the library alone: text → byte tokens → packed windows,
 * a LLaMA with the chosen method, AdamW (or GaLore) with warmup and cosine decay, one step at a
 * time so the page can draw, stop and continue; samples from the model; and the checkpoint as a
 * safetensors Blob that `sample.ts` and `export.ts` load like a `train.ts` run's.
 * @module
 */
import { memoryStats, models, optim, readAll, tensor, tree, valueAndGrad } from "../../mod.ts";
import { memorySink, writeCheckpoint } from "../../io/mod.ts";
import { BatchStream, packedWindows, type Sequences } from "../../data/batches.ts";
import { byteTokenizer } from "../../data/tokenizer.ts";
import {
  buildOptimizer,
  linearMethod,
  lrSchedule,
  type MethodName,
  optimizerSpec,
  type RunConfig,
} from "../../cli/run_config.ts";
import { generate, textStream } from "../../cli/generate.ts";
import { evaluate } from "../../cli/evaluate.ts";

const { estimateMemory, initLlama, loss, PRESETS, withVocab } = models;
const { applyUpdates } = optim;

/** What the page lets a user choose. */
export interface DemoSettings {
  /** Model preset (byte vocabulary). */
  preset: "tiny" | "small";
  /** Training method. */
  method: Extract<MethodName, "full" | "lowrank" | "sltrain" | "galore">;
  /** Optimizer steps of the run (the schedule's length). */
  steps: number;
  /** Sequences per step. */
  batch: number;
  /** Tokens (bytes) per sequence. */
  seq: number;
  /** Seed of weights, supports and batch order. */
  seed: number;
}

/** The most text a page trains on: its tokens live in JS memory as 32-bit ids. */
export const MAX_TEXT_BYTES = 32 * 1024 * 1024;

/** A problem with the user's text or settings, worded for the page. */
export class InputError extends Error {
  /** Error class name. */
  override name = "InputError";
}

/** Refuses a file of `size` bytes over {@link MAX_TEXT_BYTES}, before it is read. */
export function checkTextSize(size: number, name: string): void {
  if (size > MAX_TEXT_BYTES) {
    throw new InputError(
      `${name} is ${mb(size)}; this page trains on at most ${mb(MAX_TEXT_BYTES)} of text ` +
        "(use train.ts for larger corpora)",
    );
  }
}

/** Decodes a file's bytes as text, refusing what is not UTF-8 text or is over the budget. */
export function textOf(bytes: Uint8Array, name: string): string {
  checkTextSize(bytes.byteLength, name);
  if (bytes.includes(0)) {
    throw new InputError(`${name} looks binary (it holds NUL bytes), not text`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new InputError(`${name} is not UTF-8 text`);
  }
}

const mb = (n: number) => `${(n / 2 ** 20).toFixed(n < 10 * 2 ** 20 ? 2 : 0)} MiB`;

/** One step's outcome. */
export interface StepResult {
  /** Steps done so far. */
  step: number;
  /** This step's training loss. */
  loss: number;
  /** Learning rate of this step. */
  lr: number;
  /** Tokens trained on per second over the steps of this session. */
  tokensPerSec: number;
}

/** Live and estimated device memory, bytes. */
export interface MemoryView {
  /** Bytes of live tensors now. */
  live: number;
  /** The most live bytes during the last step. */
  peak: number;
  /** `estimateMemory` of the weights, supports and optimizer state. */
  estimate: number;
}

/** A model being trained on one text, step by step. */
export class Session {
  readonly run: RunConfig;
  readonly model: models.LlamaModel;
  #params: models.LlamaParams;
  #opt: optim.GradientTransformation;
  #state: unknown;
  #stream: BatchStream;
  #val: Sequences;
  #lr: (step: number) => number;
  #tokens = 0;
  #seconds = 0;
  /** Steps done. */
  step = 0;
  /** (step, loss) of every step, and of every evaluation. */
  readonly history: { train: [number, number][]; val: [number, number][] } = {
    train: [],
    val: [],
  };

  private constructor(run: RunConfig, train: Sequences, val: Sequences) {
    this.run = run;
    const { params, buffers } = initLlama(run.model, linearMethod(run), run.seed);
    this.model = { config: run.model, method: linearMethod(run), buffers };
    this.#params = params;
    this.#opt = buildOptimizer(run, params);
    this.#state = this.#opt.init(params);
    this.#stream = new BatchStream(train, run.batch, run.seed);
    this.#val = val;
    this.#lr = lrSchedule(run);
  }

  /**
   * Starts a run on `text` (every tenth window held out for validation). Throws an
   * {@link InputError} for empty or too short text and impossible settings.
   */
  static create(text: string, s: DemoSettings): Session {
    if (text.trim() === "") {
      throw new InputError("The text is empty: paste some text, drop a file, or use the sample.");
    }
    const ids = Int32Array.from(byteTokenizer().encode(text));
    if (ids.byteLength > 4 * MAX_TEXT_BYTES) {
      throw new InputError(`the text is over this page's ${mb(MAX_TEXT_BYTES)} budget`);
    }
    for (
      const [k, v, lo, hi] of [["steps", s.steps, 1, 100000], ["batch", s.batch, 1, 64], [
        "sequence length",
        s.seq,
        8,
        1024,
      ]] as const
    ) {
      if (!(Number.isInteger(v) && v >= lo && v <= hi)) {
        throw new InputError(`${k} must be a whole number from ${lo} to ${hi}, got ${v}`);
      }
    }
    const windows = Math.floor((ids.length - 1) / s.seq);
    if (windows < 2) {
      throw new InputError(
        `The text has ${ids.length} bytes; a sequence length of ${s.seq} needs at least ` +
          `${2 * s.seq + 1} (one window to train on, one to validate).`,
      );
    }
    // Windows k with k % 10 == 9 validate (at least one), the rest train.
    const all = packedWindows({ length: ids.length, read: (a, b) => ids.subarray(a, b) }, s.seq, 0);
    const held = (i: number) => i % 10 === 9 || (windows < 10 && i === windows - 1);
    const pick = (keep: boolean): Sequences => {
      const idx = [...Array(all.count).keys()].filter((i) => held(i) !== keep);
      return {
        count: idx.length,
        seq: s.seq,
        fill: (i, inp, tgt, o) => all.fill(idx[i], inp, tgt, o),
      };
    };
    const model = withVocab(PRESETS[s.preset], 256);
    const rank = Math.max(1, Math.floor(model.hidden / 4));
    const projected = s.method === "galore";
    const run: RunConfig = {
      model,
      modelName: s.preset,
      method: s.method,
      optimizer: "adamw",
      rank,
      delta: 0.03,
      alpha: rank / 4,
      lr: projected ? 1e-2 : 3e-3,
      warmup: Math.min(Math.floor(s.steps / 2), Math.max(Math.round(s.steps / 10), 60)),
      steps: s.steps,
      minLrRatio: 0.1,
      batch: s.batch,
      seq: s.seq,
      gradAccum: 1,
      clip: 0,
      weightDecay: 0,
      perLayer: false,
      galoreGap: 200,
      galoreScale: 0.25,
      ...(projected ? { galoreProjector: "auto" as const } : {}),
      refactorEvery: 0,
      reloraEvery: Math.max(1, Math.floor(s.steps / 4)),
      recoverySteps: 10,
      evalEvery: Math.max(1, Math.floor(s.steps / 5)),
      evalTokens: 4096,
      seed: s.seed,
      logEvery: 1,
      dtype: "f32",
      recompute: false,
    };
    return new Session(run, pick(false), pick(true));
  }

  /** Runs one optimizer step and reads its loss back (one GPU sync). */
  async trainStep(): Promise<StepResult> {
    if (this.step >= this.run.steps) {
      throw new InputError(`the run is complete (${this.step} steps)`);
    }
    const t0 = performance.now();
    const b = this.#stream.next();
    const batch = {
      inputs: tensor(b.inputs, [b.batch, b.seq], "i32"),
      targets: tensor(b.targets, [b.batch, b.seq], "i32"),
    };
    let value;
    try {
      const r0 = valueAndGrad((p: models.LlamaParams) => loss(this.model, p, batch))(this.#params);
      value = r0.value;
      const r = await this.#opt.update(r0.grads, this.#state, this.#params);
      this.#state = r.state;
      this.#params = applyUpdates(this.#params, r.updates);
    } finally {
      tree.dispose(batch);
    }
    const [l] = await readAll([value]);
    value.dispose();
    const lr = this.#lr(this.step);
    this.step++;
    this.#tokens += b.tokens;
    this.#seconds += (performance.now() - t0) / 1000;
    this.history.train.push([this.step, l[0]]);
    return { step: this.step, loss: l[0], lr, tokensPerSec: this.#tokens / this.#seconds };
  }

  /** Validation loss on the held-out windows (up to the run's evaluation tokens). */
  async validate(): Promise<number> {
    const r = await evaluate(
      this.model,
      this.#params,
      this.#val,
      this.run.batch,
      this.run.evalTokens,
    );
    this.history.val.push([this.step, r.loss]);
    return r.loss;
  }

  /** Device memory now, beside the estimate. */
  memory(): MemoryView {
    const stats = memoryStats();
    const estimate = estimateMemory(this.run.model, {
      method: linearMethod(this.run),
      optimizer: optimizerSpec(this.run),
    }, "ours").total;
    return { live: stats.liveBytes, peak: stats.peakBytes, estimate };
  }

  /** Generates `tokens` bytes after `prompt`, streaming the text as it comes. */
  async sample(prompt: string, tokens: number, onText: (s: string) => void): Promise<string> {
    const tok = byteTokenizer();
    const stream = textStream((ids) => tok.decode(ids));
    let out = "";
    const ids = tok.encode(prompt.length > 0 ? prompt : "\n");
    await generate({ model: this.model, params: this.#params }, ids, {
      tokens,
      window: this.run.seq,
      seed: this.run.seed + this.step,
      temperature: 0.8,
      topK: 40,
      stopAt: tok.eos,
      onToken: (id) => {
        const piece = stream.push(id);
        out += piece;
        if (piece) onText(out);
      },
    });
    out += stream.flush();
    onText(out);
    return out;
  }

  /**
   * The checkpoint as a safetensors Blob: weights, supports, optimizer state and the run's
   * settings, in the format `train.ts` writes (so `sample.ts --checkpoint` and `export.ts` read it).
   */
  async checkpoint(): Promise<Blob> {
    const sink = memorySink();
    await writeCheckpoint(sink, {
      params: this.#params,
      buffers: this.model.buffers as models.LlamaBuffers,
      optState: this.#state,
      step: this.step,
      meta: { run: this.run, history: this.history, source: "web demo" },
    });
    return sink.blob();
  }

  /** Frees the model and the optimizer state. */
  dispose(): void {
    tree.dispose([this.#params, this.model.buffers, this.#state]);
  }
}
