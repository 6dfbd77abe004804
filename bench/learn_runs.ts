/**
 * The training runs of tests/learn_test.ts: each method on `tiny`, 20 steps of fixed text. Kept
 * apart from `learn_reference.ts` (which replays them in PyTorch through subprocesses) so that the
 * test, which runs in browsers too, imports nothing Deno-only.
 * @module
 */
import { isProjected, type MethodName, type RunConfig } from "../cli/run_config.ts";
import type { RunData } from "../cli/trainer.ts";
import { packedSequences } from "../data/batches.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { PRESETS, withVocab } from "../models/config.ts";

const TEXT = `The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary
election produced no evidence that any irregularities took place. The jury further said in
term-end presentments that the City Executive Committee, which had over-all charge of the
election, deserves the praise and thanks of the City of Atlanta for the manner in which the
election was conducted. The September-October term jury had been charged by Fulton Superior
Court Judge Durwood Pye to investigate reports of possible irregularities in the hard-fought
primary which was won by Mayor-nominate Ivan Allen Jr. Only a relative handful of such reports
was received, the jury said, considering the widespread interest in the election, the number of
voters and the size of this city.`;

/** Optimizer steps of each learning run. */
export const LEARN_STEPS = 20;

/** The fixed text as byte-level sequences (train and validation alike). */
export function learnData(): RunData {
  const tok = byteTokenizer();
  const docs = TEXT.split(". ").map((s) => Uint32Array.from(tok.encode(s)));
  const seqs = packedSequences(docs, 32, tok.eos, tok.pad);
  return { train: seqs, val: seqs };
}

/**
 * The run of `method`: tiny, rank 32, warmup 3, batch 4 × 32, GaLore-family refresh every 10
 * steps, resets of SPAM and Stable-SPAM every 10, LoRO's exact step every 5, ReLoRA without a merge
 * within the 20 steps (the reference does not replay merges; tests/relora_test.ts covers them).
 */
export function learnRun(method: MethodName): RunConfig {
  return {
    model: withVocab(PRESETS.tiny, byteTokenizer().vocabSize),
    modelName: "tiny",
    method,
    optimizer: "adamw",
    rank: 32,
    delta: 0.05,
    alpha: 32,
    lr: isProjected(method) ? 1e-2 : 3e-3,
    warmup: 3,
    steps: LEARN_STEPS,
    minLrRatio: 0.1,
    batch: 4,
    seq: 32,
    gradAccum: 1,
    clip: 0,
    weightDecay: 0,
    perLayer: false,
    galoreGap: 10,
    galoreScale: 0.25,
    refactorEvery: 0,
    reloraEvery: LEARN_STEPS,
    recoverySteps: 3,
    evalEvery: 0,
    evalTokens: 256,
    seed: 1,
    logEvery: LEARN_STEPS,
    dtype: "f32",
    recompute: false,
    ...(method === "fira" || method.startsWith("apollo") ? { limiter: 1.01 } : {}),
    ...(method === "apollo" ? { apolloScale: 1, apolloGranularity: "channel" as const } : {}),
    ...(method === "apollo-mini" ? { apolloScale: 128, apolloGranularity: "tensor" as const } : {}),
    ...(method === "golore" ? { goloreRandomFrom: 0 } : {}),
    ...(method === "loro" ? { loroExactEvery: 5 } : {}),
    ...(method === "spam" ? { spamThreshold: 5000, spamWarmup: 5, momentumResetEvery: 10 } : {}),
    ...(method === "stable-spam"
      ? {
        momentumResetEvery: 10,
        stableSpamGammas: [0.85, 0.999, 0.999] as [number, number, number],
        stableSpamSchedule: { totalT: LEARN_STEPS, etaMin: 0.5 },
      }
      : {}),
  };
}
