/**
 * Training learns, and learns what an independent implementation learns (after llm.c's test_gpt2,
 * which pins its first losses): for each method, a fixed seed trains the `tiny` preset for 20 steps
 * on fixed text (bench/learn_reference.ts). The loss must start at ln 256 (a uniform byte model),
 * the first six training losses must equal the PyTorch reference's (bench/torch_ref, written from
 * the methods' definitions, replaying the same weights and batches) within 1e-3, and the final
 * validation loss within 0.02. The pins are what `deno run -A bench/learn_reference.ts` prints.
 */
import assert from "node:assert/strict";
import { type MethodName, METHODS } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import { LEARN_STEPS, learnData, learnRun } from "../bench/learn_runs.ts";
import { quietIO } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

/** The PyTorch reference's first six training losses and final validation loss, per method. */
const REFERENCE: Record<MethodName, { first: number[]; val: number }> = {
  "full": { first: [5.5322, 5.5451, 5.1592, 4.8837, 4.5257, 4.2195], val: 3.1426 },
  "lowrank": { first: [5.5965, 5.5714, 5.3728, 5.0816, 4.7115, 4.3558], val: 3.1462 },
  "sltrain": { first: [5.6072, 5.5856, 5.3812, 5.1017, 4.7228, 4.3597], val: 2.8319 },
  "relora": { first: [5.5322, 5.5451, 5.3268, 5.1642, 4.7202, 4.3071], val: 3.1391 },
  "galore": { first: [5.5322, 5.5451, 5.1336, 4.5243, 3.5865, 3.3695], val: 3.0766 },
  "fira": { first: [5.5322, 5.5451, 5.1082, 4.2978, 3.6409, 3.3656], val: 3.0793 },
  "apollo": { first: [5.5322, 5.5451, 5.1214, 4.3068, 3.6549, 3.3704], val: 3.0383 },
  "apollo-mini": { first: [5.5322, 5.5451, 5.1099, 4.2595, 3.829, 3.3831], val: 3.1187 },
  "golore": { first: [5.5322, 5.5451, 5.1633, 4.5666, 3.6108, 3.3714], val: 3.0424 },
  "loro": { first: [5.5965, 5.5714, 5.4401, 5.2618, 4.8389, 4.4379], val: 3.137 },
  "spam": { first: [5.5322, 5.5451, 5.1598, 4.886, 4.5283, 4.2226], val: 3.1872 },
  "stable-spam": { first: [5.5322, 5.5451, 5.1605, 4.9043, 4.577, 4.2721], val: 2.9315 },
};

for (const method of METHODS as readonly MethodName[]) {
  Deno.test(`training learns: ${method} on tiny, ${LEARN_STEPS} steps of fixed text, as PyTorch does`, async () => {
    const r = await trainRun(learnRun(method), learnData(), { ...quietIO(""), out: null });
    const losses = r.history.train.map(([, l]) => l);
    assert.equal(losses.length, LEARN_STEPS);
    const [[, val0], [, valEnd]] = r.history.val;
    assert.ok(Math.abs(val0 - Math.log(256)) < 0.1, `initial val loss ${val0}, not ≈ ln 256`);
    const ref = REFERENCE[method];
    ref.first.forEach((want, i) =>
      assert.ok(
        Math.abs(losses[i] - want) <= 1e-3,
        `step ${i + 1}: loss ${losses[i]}, PyTorch ${want}`,
      )
    );
    assert.ok(
      Math.abs(valEnd - ref.val) <= 0.02,
      `final val loss ${valEnd}, PyTorch ${ref.val}`,
    );
    assert.ok(valEnd < val0 - 2, `${method} did not learn: ${val0} -> ${valEnd}`);
  });
}
