/** Small shared fixtures of the model and trainer tests. */
import type { Progress } from "../cli/progress.ts";
import type { RunConfig } from "../cli/run_config.ts";
import type { RunData, RunIO } from "../cli/trainer.ts";
import { Rng } from "../core/rng.ts";
import { packedSequences } from "../data/batches.ts";
import { type LlamaConfig, validateConfig } from "../models/config.ts";

/** The `tiny` code path at toy sizes: 2 heads of dim 8, 2 layers, vocab `vocab`. */
export function toyConfig(vocab = 11, maxSeqLen?: number): LlamaConfig {
  return validateConfig({
    vocabSize: vocab,
    hidden: 16,
    intermediate: 40,
    heads: 2,
    layers: 2,
    maxSeqLen,
    rmsNormEps: 1e-6,
    ropeBase: 10000,
    initStd: 0.02,
  });
}

/**
 * Big enough that some tensors reach 8-bit states (embedding and LM head 300·32 = 9600 values;
 * GaLore's projected gate/up/down 32·128 = 4096), small enough to train in a second.
 */
export const EIGHT_BIT_MODEL: LlamaConfig = validateConfig({
  vocabSize: 300,
  hidden: 32,
  intermediate: 128,
  heads: 2,
  layers: 2,
  maxSeqLen: 64,
  rmsNormEps: 1e-6,
  ropeBase: 10000,
  initStd: 0.02,
});

/** A run of a toy model that trains in a second: override what a test varies. */
export function toyRun(overrides: Partial<RunConfig> = {}): RunConfig {
  return {
    model: toyConfig(40, 64),
    modelName: "test",
    method: "sltrain",
    optimizer: "adamw",
    rank: 4,
    delta: 0.1,
    alpha: 4,
    lr: 3e-3,
    warmup: 2,
    steps: 2,
    minLrRatio: 0.1,
    batch: 2,
    seq: 8,
    gradAccum: 1,
    clip: 0,
    weightDecay: 0,
    perLayer: false,
    galoreGap: 3,
    galoreScale: 0.25,
    refactorEvery: 0,
    reloraEvery: 3,
    recoverySteps: 2,
    evalEvery: 0,
    evalTokens: 32,
    seed: 5,
    logEvery: 2,
    dtype: "f32",
    recompute: false,
    ...overrides,
  };
}

/** Trainer IO that prints nothing; `out`, `resume` and `shouldStop` as given. */
export function quietIO(
  out: string,
  opts: { resume?: boolean; shouldStop?: () => boolean } = {},
): RunIO {
  return {
    out,
    resume: opts.resume ?? false,
    log: () => {},
    progress: { update() {}, log() {}, done() {} } as unknown as Progress,
    shouldStop: opts.shouldStop ?? (() => false),
  };
}

/** Random token documents for {@link toyRun}'s vocabulary of 40: three to train on, one to validate. */
export function toyData(): RunData {
  const rng = new Rng(1);
  const doc = () => Uint32Array.from({ length: 60 }, () => 1 + rng.nextInt(39));
  return {
    train: packedSequences([doc(), doc(), doc()], 8, 0, 0),
    val: packedSequences([doc()], 8, 0, 0),
  };
}
