/**
 * The non-finite guard end to end: an absurd learning rate makes a step non-finite; `stop` names
 * that step (checked against a loop that reads every loss and gradient back) and its first bad
 * parameter, writes no checkpoint from it, and leaves the last good checkpoint resumable; `skip`
 * leaves parameters and optimizer state bit for bit as they were, whatever the optimizer does in
 * place.
 */
import assert from "node:assert/strict";
import { loadCheckpoint } from "../cli/checkpoint.ts";
import { NonFiniteGuard } from "../cli/guard.ts";
import { readLog } from "../cli/runlog.ts";
import { buildOptimizer, type RunConfig } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import { NonFiniteError } from "../core/errors.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { BatchStream } from "../data/batches.ts";
import { initLlama, type LlamaParams, loss } from "../models/llama.ts";
import { mulScalar } from "../ops/mod.ts";
import { applyUpdates } from "../optim/mod.ts";
import { linearMethod } from "../cli/run_config.ts";
import { quietIO, toyData, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const data = toyData;

/**
 * The reference: the trainer's steps written out, reading every loss and gradient back to the CPU
 * after each step. Returns the first step whose loss or a gradient is not finite, with the
 * parameters (leaf order) whose gradient is not.
 */
async function firstBadStep(run: RunConfig): Promise<{ step: number; params: string[] }> {
  const d = data();
  const model = initLlama(run.model, linearMethod(run), run.seed);
  let params = model.params;
  const opt = buildOptimizer(run, params);
  let state = opt.init(params);
  const stream = new BatchStream(d.train, run.batch, run.seed);
  const paths = tree.paths(params);
  try {
    for (let step = 1; step <= run.steps; step++) {
      const b = stream.next();
      const batch = {
        inputs: tensor(b.inputs, [b.batch, b.seq], "i32"),
        targets: tensor(b.targets, [b.batch, b.seq], "i32"),
      };
      const m = { config: run.model, method: model.method, buffers: model.buffers };
      const { value, grads } = valueAndGrad((p: LlamaParams) => loss(m, p, batch))(params);
      const [l, ...gs] = await readAll([value, ...tree.flatten(grads)]);
      const bad = paths.filter((_, i) => gs[i].some((x) => !Number.isFinite(x)));
      tree.dispose([batch, value]);
      if (!Number.isFinite(l[0]) || bad.length > 0) {
        tree.dispose(grads);
        return { step, params: bad };
      }
      const r = await opt.update(grads, state, params);
      state = r.state;
      params = applyUpdates(params, r.updates);
    }
    throw new Error("the reference run stayed finite");
  } finally {
    tree.dispose([params, model.buffers, state]);
  }
}

Deno.test("non-finite guard, stop: the right step and parameter, no checkpoint from it, the last good one resumable", async () => {
  // lr ramps to 1e6 over 10 warmup steps: fine at first, then the weights blow up.
  const run = toyRun({ lr: 1e6, warmup: 10, steps: 14, logEvery: 4, evalEvery: 2 });
  const ref = await firstBadStep(run);
  assert.ok(
    ref.step > 2,
    `the reference turns non-finite at step ${ref.step}, before a checkpoint`,
  );
  const goodCheckpoint = Math.floor((ref.step - 1) / 2) * 2;
  const dir = await Deno.makeTempDir();
  try {
    const err = await trainRun(run, data(), quietIO(dir)).then(
      () => assert.fail("the run did not stop"),
      (e) => e,
    );
    assert.ok(err instanceof NonFiniteError, String(err));
    assert.match(err.message, new RegExp(`^non-finite values at step ${ref.step}: `));
    if (ref.params.length > 0) {
      assert.ok(
        err.message.includes(`the gradient of ${ref.params[0]} is not finite`),
        err.message,
      );
    }
    assert.ok(err.message.includes(`checkpoint.safetensors (step ${goodCheckpoint})`), err.message);

    const log = await readLog(`${dir}/log.jsonl`);
    assert.equal(log.torn, false);
    const last = log.records.at(-1)!;
    assert.equal(last.kind, "nonfinite");
    assert.equal(last.step, ref.step);
    assert.deepEqual(last.nonfinite, ref.params);
    const trained = log.records.filter((r) => r.kind === "train").map((r) => r.step);
    assert.deepEqual(trained, Array.from({ length: ref.step - 1 }, (_, i) => i + 1));

    const ck = await loadCheckpoint(`${dir}/checkpoint.safetensors`);
    assert.equal(ck.step, goodCheckpoint);
    for (const x of await readAll(tree.flatten([ck.params, ck.optState]))) {
      assert.ok(x.every((v) => Number.isFinite(v)));
    }
    tree.dispose(ck);

    // Resumed with skip: every bad step is logged as skipped and nothing non-finite is saved;
    // a model this broken keeps failing, so the run ends at the limit or at its last step.
    const skipping = { ...run, onNonfinite: "skip" as const };
    let ended: unknown = null;
    await trainRun(skipping, data(), quietIO(dir, { resume: true })).catch((e) => (ended = e));
    if (ended) assert.match(String(ended), /non-finite values at 10 steps in a row/);
    const after = await readLog(`${dir}/log.jsonl`);
    const steps = after.records.filter((r) => r.kind === "train" || r.kind === "skip");
    assert.deepEqual(
      steps.map((r) => r.step),
      Array.from({ length: steps.length }, (_, i) => i + 1),
      "each step logged once",
    );
    assert.ok(steps.some((r) => r.kind === "skip" && r.step === ref.step));
    const saved = await loadCheckpoint(`${dir}/checkpoint.safetensors`);
    for (const x of await readAll(tree.flatten([saved.params, saved.optState]))) {
      assert.ok(x.every((v) => Number.isFinite(v)));
    }
    tree.dispose(saved);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const CONFIGS: [string, Partial<RunConfig>][] = [
  ["full (fused AdamW)", { method: "full", weightDecay: 0.1 }],
  ["sltrain + clipping", { method: "sltrain", clip: 1 }],
  ["galore refreshing its projectors at the bad step", { method: "galore", galoreGap: 1 }],
  ["lowrank, 2 micro-batches (the second one bad)", { method: "lowrank", gradAccum: 2 }],
];

for (const [name, overrides] of CONFIGS) {
  Deno.test(`non-finite guard, skip: ${name}: parameters and optimizer state stay bit for bit`, async () => {
    const run = toyRun({ ...overrides, onNonfinite: "skip" });
    const model = initLlama(run.model, linearMethod(run), run.seed);
    const m = { config: run.model, method: model.method, buffers: model.buffers };
    let params = model.params;
    const opt = buildOptimizer(run, params);
    let state = opt.init(params);
    const guard = new NonFiniteGuard(tree.paths(params), "skip");
    const stream = new BatchStream(data().train, run.batch, run.seed);
    /** One step as the trainer takes it; `poison` makes the last micro-batch's gradient NaN. */
    const step = async (poison: boolean) => {
      const flags = guard.flags();
      for (let k = 0; k < run.gradAccum; k++) {
        const b = stream.next();
        const batch = {
          inputs: tensor(b.inputs, [b.batch, b.seq], "i32"),
          targets: tensor(b.targets, [b.batch, b.seq], "i32"),
        };
        const { value, grads } = valueAndGrad((p: LlamaParams) => loss(m, p, batch))(params);
        let g = tree.flatten(grads);
        if (poison && k === run.gradAccum - 1) {
          g = g.map((x, i) =>
            i === 3
              ? (() => {
                const y = mulScalar(x, NaN);
                x.dispose();
                return y;
              })()
              : x
          );
        }
        guard.checkLoss(flags, value);
        g.forEach((x, i) => guard.checkGrad(flags, x, i));
        await guard.update(flags, async () => {
          const r = await opt.update(tree.unflatten(grads, g), state, params);
          state = r.state;
          params = applyUpdates(params, r.updates);
        });
        tree.dispose([batch, value]);
      }
      const [f] = await readAll([flags]);
      flags.dispose();
      return f;
    };
    const values = async () =>
      await readAll(tree.flatten([params, state]).filter((t: Tensor) => !t.isDisposed));
    await step(false);
    const before = await values();
    const f = await step(true);
    assert.equal(f[1 + 3], 1, "the poisoned gradient is flagged");
    assert.deepEqual(await values(), before, "a skipped step changed the state");
    await step(false);
    const next = await values();
    assert.notDeepEqual(next[0], before[0], "the step after a skipped one is applied");
    for (const x of next) assert.ok(x.every((v) => Number.isFinite(v)));
    tree.dispose([params, model.buffers, state]);
  });
}
