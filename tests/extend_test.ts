/**
 * Extending a run: `--resume` with a larger `--steps` continues it, keeping the settings derived
 * from the old step count, skipping settings the method does not use, and refusing the rest by
 * name.
 */
import assert from "node:assert/strict";
import { applies, derivedFromSteps, reconcileResume } from "../cli/resume.ts";
import {
  blockTransform,
  cycleLength,
  linearMethod,
  lrSchedule,
  METHODS,
  type RunConfig,
} from "../cli/run_config.ts";
import { readLog } from "../cli/runlog.ts";
import { loadCheckpoint } from "../cli/checkpoint.ts";
import { trainRun } from "../cli/trainer.ts";
import * as tree from "../core/tree.ts";
import { quietIO, toyData, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const DERIVED = new Set(["warmup", "reloraEvery"]);

Deno.test("reconcileResume: derived settings come from the checkpoint, given ones must match", () => {
  const saved = toyRun({ method: "relora", steps: 4, warmup: 1, reloraEvery: 2 });
  const longer = { ...saved, steps: 8, warmup: 2, reloraEvery: 4 };
  const r = reconcileResume(longer, saved, DERIVED);
  assert.deepEqual(r.conflicts, []);
  assert.equal(r.run.steps, 8);
  assert.equal(r.run.warmup, 1);
  assert.equal(r.run.reloraEvery, 2);
  assert.deepEqual(r.kept, { warmup: [1, 2], reloraEvery: [2, 4] });
  // --warmup given on the command line: a real change, refused by name.
  assert.deepEqual(reconcileResume(longer, saved, new Set(["reloraEvery"])).conflicts, [
    "warmup: checkpoint 1, now 2",
  ]);
  for (const [k, v] of [["lr", 1], ["rank", 3], ["seed", 9], ["batch", 3], ["clip", 1]] as const) {
    assert.deepEqual(reconcileResume({ ...longer, [k]: v }, saved, DERIVED).conflicts, [
      `${k}: checkpoint ${JSON.stringify(saved[k])}, now ${v}`,
    ]);
  }
});

Deno.test("derivedFromSteps: the settings whose flags are all absent", () => {
  assert.deepEqual(
    [...derivedFromSteps({})].sort(),
    ["goloreRandomFrom", "reloraEvery", "stableSpamSchedule", "warmup"],
  );
  assert.deepEqual(
    [...derivedFromSteps({ warmup: "5", "stable-spam-eta": "0.3" })].sort(),
    ["goloreRandomFrom", "reloraEvery"],
  );
});

Deno.test("reconcileResume: settings the method does not use are not compared", () => {
  const sl = toyRun({ method: "sltrain", steps: 4 });
  // ReLoRA's merge period and GaLore's gap mean nothing to SLTrain, given or derived.
  assert.deepEqual(
    reconcileResume({ ...sl, steps: 8, reloraEvery: 99, galoreGap: 7 }, sl, new Set()).conflicts,
    [],
  );
  assert.deepEqual(reconcileResume({ ...sl, delta: 0.2 }, sl, new Set()).conflicts, [
    "delta: checkpoint 0.1, now 0.2",
  ]);
  const full = toyRun({ method: "full", steps: 4 });
  assert.deepEqual(
    reconcileResume({ ...full, delta: 0.5, refactorEvery: 3, recoverySteps: 7 }, full, new Set())
      .conflicts,
    [],
  );
  const galore = toyRun({ method: "galore", steps: 4 });
  assert.deepEqual(reconcileResume({ ...galore, galoreGap: 5 }, galore, new Set()).conflicts, [
    "galoreGap: checkpoint 3, now 5",
  ]);
  // Another method is always a conflict.
  assert.deepEqual(reconcileResume({ ...sl, method: "full" }, sl, new Set()).conflicts, [
    'method: checkpoint "sltrain", now "full"',
  ]);
});

Deno.test("a setting skipped for a method changes nothing that method builds", () => {
  const changed: Partial<RunConfig> = {
    delta: 0.3,
    refactorEvery: 2,
    reloraEvery: 2,
    recoverySteps: 5,
    galoreGap: 2,
    galoreScale: 0.5,
  };
  for (const method of METHODS) {
    const run = toyRun({ method, steps: 8 });
    for (const [k, v] of Object.entries(changed)) {
      if (applies(k, method)) continue;
      const other = { ...run, [k]: v };
      const what = `${method}: ${k}`;
      assert.deepEqual(linearMethod(other), linearMethod(run), what);
      assert.equal(cycleLength(other), cycleLength(run), what);
      const [a, b] = [lrSchedule(run), lrSchedule(other)];
      for (let s = 0; s < 8; s++) assert.equal(b(s), a(s), `${what}, lr at ${s}`);
      assert.equal(blockTransform(other) === null, blockTransform(run) === null, what);
    }
  }
});

Deno.test("a ReLoRA run of 4 steps extended to 8: continues, merges at 4, logs the change", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const data = toyData();
    const short = toyRun({ method: "relora", steps: 4, warmup: 1, reloraEvery: 2 });
    const first = await trainRun(short, data, quietIO(dir));
    const seen: string[] = [];
    const io = { ...quietIO(dir, { resume: true }), derived: DERIVED };
    io.progress = {
      update() {},
      done() {},
      log: (s: string) => seen.push(s),
    } as unknown as typeof io.progress;
    // What train.ts derives for --steps 8: warmup 2, merge every 4; both keep the checkpoint's.
    const long = await trainRun(
      { ...short, steps: 8, warmup: 2, reloraEvery: 4 },
      data,
      io,
    );
    assert.equal(long.steps, 8);
    assert.equal(long.run.warmup, 1);
    assert.equal(long.run.reloraEvery, 2);
    assert.deepEqual(long.history.train.slice(0, 4), first.history.train);
    assert.ok(long.history.train[7][1] > 0);
    assert.match(seen.join("\n"), /extending the run from 4 to 8 steps; warmup 1 \(kept/);
    const log = (await readLog(`${dir}/log.jsonl`)).records;
    const ext = log.find((r) => r.kind === "extend");
    assert.deepEqual([ext?.step, ext?.from, ext?.to, ext?.kept], [4, 4, 8, {
      warmup: 1,
      reloraEvery: 2,
    }]);
    // The merge the 4-step run skipped at its end, and the later ones, each logged once.
    const merges = log.filter((r) => r.kind === "merge").map((r) => r.step);
    assert.deepEqual(merges, [2, 4, 6]);
    const ck = await loadCheckpoint(`${dir}/checkpoint.safetensors`);
    const saved = ck.meta.run as { steps: number; warmup: number };
    tree.dispose(ck);
    assert.deepEqual([saved.steps, saved.warmup], [8, 1]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
