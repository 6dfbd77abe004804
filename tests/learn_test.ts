/**
 * Training learns (after llm.c's test_gpt2, which pins its first losses): for each method, a fixed
 * seed trains the `tiny` preset for 20 steps on fixed text. The loss must start at ln 256 (a
 * uniform byte model), follow the first losses of a reference run (lavapipe, 2026-11) within 0.03,
 * and the final validation loss must fall below a bound pinned 0.1 above that run's.
 */
import assert from "node:assert/strict";
import { isProjected, type MethodName } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import { packedSequences } from "../data/batches.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { PRESETS, withVocab } from "../models/config.ts";
import { quietIO, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const TEXT = `The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary
election produced no evidence that any irregularities took place. The jury further said in
term-end presentments that the City Executive Committee, which had over-all charge of the
election, deserves the praise and thanks of the City of Atlanta for the manner in which the
election was conducted. The September-October term jury had been charged by Fulton Superior
Court Judge Durwood Pye to investigate reports of possible irregularities in the hard-fought
primary which was won by Mayor-nominate Ivan Allen Jr. Only a relative handful of such reports
was received, the jury said, considering the widespread interest in the election, the number of
voters and the size of this city.`;

const STEPS = 20;

/** The reference run's first six training losses and final validation loss, per method. */
const PINNED: Partial<Record<MethodName, { first: number[]; val: number }>> = {
  full: { first: [5.532, 5.545, 5.159, 4.884, 4.526, 4.219], val: 3.143 },
  lowrank: { first: [5.596, 5.571, 5.373, 5.082, 4.712, 4.356], val: 3.146 },
  sltrain: { first: [5.607, 5.586, 5.381, 5.102, 4.723, 4.360], val: 2.832 },
  relora: { first: [5.532, 5.545, 5.327, 5.164, 4.720, 4.307], val: 3.144 },
  galore: { first: [5.532, 5.545, 5.134, 4.524, 3.586, 3.370], val: 3.077 },
  fira: { first: [5.532, 5.545, 5.108, 4.298, 3.641, 3.366], val: 3.079 },
  apollo: { first: [5.532, 5.545, 5.121, 4.307, 3.655, 3.370], val: 3.038 },
  "apollo-mini": { first: [5.532, 5.545, 5.110, 4.260, 3.829, 3.383], val: 3.119 },
};

for (const method of Object.keys(PINNED) as MethodName[]) {
  Deno.test(`training learns: ${method} on tiny, ${STEPS} steps of fixed text`, async () => {
    const tok = byteTokenizer();
    const docs = TEXT.split(". ").map((s) => Uint32Array.from(tok.encode(s)));
    const seqs = packedSequences(docs, 32, tok.eos, tok.pad);
    const run = toyRun({
      method,
      model: withVocab(PRESETS.tiny, tok.vocabSize),
      rank: 32,
      alpha: 32,
      delta: 0.05,
      lr: isProjected(method) ? 1e-2 : 3e-3,
      warmup: 3,
      steps: STEPS,
      batch: 4,
      seq: 32,
      galoreGap: 10,
      reloraEvery: 10,
      recoverySteps: 3,
      evalEvery: 0,
      evalTokens: 256,
      logEvery: STEPS,
      seed: 1,
    });
    const r = await trainRun(run, { train: seqs, val: seqs }, { ...quietIO(""), out: null });
    const losses = r.history.train.map(([, l]) => l);
    assert.equal(losses.length, STEPS);
    const [[, val0], [, valEnd]] = r.history.val;
    assert.ok(Math.abs(val0 - Math.log(256)) < 0.1, `initial val loss ${val0}, not ≈ ln 256`);
    const pin = PINNED[method]!;
    pin.first.forEach((want, i) =>
      assert.ok(
        Math.abs(losses[i] - want) <= 0.03,
        `step ${i + 1}: loss ${losses[i]}, pinned ${want}`,
      )
    );
    assert.ok(valEnd < pin.val + 0.1, `final val loss ${valEnd}, pinned bound ${pin.val + 0.1}`);
  });
}
