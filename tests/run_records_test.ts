/**
 * What a run's log.jsonl holds (README, "The run log"): every train record's gradient norm equals
 * the norm of the gradients computed here on the CPU in float64, whatever path the trainer took
 * (all at once, accumulated, clipped, per layer); the other fields are there and consistent; the
 * events (start, refresh, refactor, merge, resume) are logged at their steps, in step order.
 */
import assert from "node:assert/strict";
import { readLog } from "../cli/runlog.ts";
import { linearMethod, type RunConfig } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { BatchStream } from "../data/batches.ts";
import { initLlama, type LlamaParams, loss } from "../models/llama.ts";
import { quietIO, toyData, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

/** ‖mean of the gradients of the run's first `gradAccum` micro-batches‖, in float64. */
async function firstGradNorm(run: RunConfig): Promise<number> {
  const { params, buffers } = initLlama(run.model, linearMethod(run), run.seed, {
    dtype: run.dtype,
  });
  const model = { config: run.model, method: linearMethod(run), buffers };
  const stream = new BatchStream(toyData().train, run.batch, run.seed);
  let sum: Float64Array[] | null = null;
  for (let k = 0; k < run.gradAccum; k++) {
    const b = stream.next();
    const batch = {
      inputs: tensor(b.inputs, [b.batch, b.seq], "i32"),
      targets: tensor(b.targets, [b.batch, b.seq], "i32"),
    };
    const { value, grads } = valueAndGrad((p: LlamaParams) => loss(model, p, batch))(params);
    const g = await readAll(tree.flatten(grads));
    sum = g.map((x, i) => Float64Array.from(x, (v, j) => v + (sum ? sum[i][j] : 0)));
    tree.dispose([value, grads, batch.inputs, batch.targets]);
  }
  tree.dispose([params, buffers]);
  let sq = 0;
  for (const x of sum!) for (const v of x) sq += (v / run.gradAccum) ** 2;
  return Math.sqrt(sq);
}

Deno.test("run log: the first step's gradNorm is the float64 norm of its gradients before clipping (at once, accumulated, clipped, per layer)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const method of ["sltrain", "full", "galore"] as const) {
      for (const path of ["whole", "accumulated", "clipped", "per-layer"]) {
        const run = toyRun({
          method,
          steps: 1,
          gradAccum: path === "accumulated" ? 2 : 1,
          clip: path === "clipped" ? 0.05 : 0,
          perLayer: path === "per-layer",
        });
        await trainRun(run, toyData(), quietIO(dir));
        const { records } = await readLog(`${dir}/log.jsonl`);
        const got = records.find((r) => r.kind === "train")!.gradNorm as number;
        const want = await firstGradNorm(run);
        assert.ok(
          Math.abs(got - want) <= 1e-5 * want,
          `${method} ${path}: logged ${got}, float64 ${want}`,
        );
        if (path === "clipped") assert.ok(got > 0.05, "the norm is logged before clipping");
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run log: train, eval and event records carry their fields, in step order", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const run = toyRun({ method: "galore", steps: 6, galoreGap: 3, evalEvery: 3, logEvery: 2 });
    await trainRun(run, toyData(), quietIO(dir));
    const { records } = await readLog(`${dir}/log.jsonl`);
    assert.equal(records[0].kind, "start");
    assert.deepEqual(records[0].run, run);
    for (let i = 1; i < records.length; i++) {
      assert.ok(records[i].step >= records[i - 1].step, `step order at record ${i}`);
    }
    const train = records.filter((r) => r.kind === "train");
    assert.deepEqual(train.map((r) => r.step), [1, 2, 3, 4, 5, 6]);
    for (const r of train) {
      for (const k of ["loss", "lr", "gradNorm", "stepSeconds", "tokensPerSec"]) {
        assert.ok(Number.isFinite(r[k]) && (r[k] as number) >= 0, `${k} of step ${r.step}`);
      }
      assert.equal(r.trainTokens, r.step * run.batch * run.seq);
      assert.ok((r.liveBytes as number) > 0 && (r.peakBytes as number) >= (r.liveBytes as number));
    }
    const evals = records.filter((r) => r.kind === "eval");
    assert.deepEqual(evals.map((r) => r.step), [0, 3, 6]);
    for (const r of evals) {
      assert.ok(Math.abs((r.valPpl as number) - Math.exp(r.valLoss as number)) < 1e-9);
      assert.equal(r.trainTokens, r.step * run.batch * run.seq);
    }
    // GaLore refreshes at its updates 0 and 3: steps 1 and 4, every matrix at once.
    const refresh = records.filter((r) => r.kind === "refresh");
    assert.deepEqual(refresh.map((r) => r.step), [1, 4]);
    for (const r of refresh) {
      assert.equal(r.matrices, run.model.layers * 7);
      assert.ok((r.seconds as number) > 0);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run log: refactorization and merge records carry their time; a resumed run's tokens continue", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const over of [{ method: "sltrain", refactorEvery: 2 }, { method: "relora" }] as const) {
      const run = toyRun({ ...over, steps: 6, reloraEvery: 2 });
      let n = 0;
      await trainRun(run, toyData(), quietIO(dir, { shouldStop: () => ++n >= 3 }));
      await trainRun(run, toyData(), quietIO(dir, { resume: true }));
      const { records } = await readLog(`${dir}/log.jsonl`);
      const kind = over.method === "sltrain" ? "refactor" : "merge";
      const resets = records.filter((r) => r.kind === kind);
      assert.deepEqual(resets.map((r) => r.step), [2, 4]);
      assert.ok(resets.every((r) => (r.seconds as number) > 0));
      assert.deepEqual(records.filter((r) => r.kind === "resume").map((r) => r.step), [3]);
      assert.equal(records.filter((r) => r.kind === "start").length, 1);
      const train = records.filter((r) => r.kind === "train");
      assert.deepEqual(train.map((r) => r.trainTokens), train.map((r) => r.step * 16));
      await Deno.remove(dir, { recursive: true });
      await Deno.mkdir(dir);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
