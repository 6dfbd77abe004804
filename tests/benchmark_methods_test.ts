/**
 * The benchmark's remaining methods through the trainer (GoLore, LoRO, SPAM, Stable-SPAM, and
 * low-rank with refactorization + momentum reset): each trains, stops and resumes bit for bit
 * (loss history and checkpoint), with the estimate equal to the measured optimizer-state bytes
 * (8-bit inner states and per-layer updates where the method allows them); low-rank logs a
 * refactorization at every cycle and its product B·A is unchanged by it.
 */
import assert from "node:assert/strict";
import { buildOptimizer, linearMethod, optimizerSpec, type RunConfig } from "../cli/run_config.ts";
import { openSafetensors } from "../cli/safetensors.ts";
import { type RunData, trainRun } from "../cli/trainer.ts";
import { Rng } from "../core/rng.ts";
import { packedSequences } from "../data/batches.ts";
import { estimateMemory } from "../models/estimate.ts";
import { measureMemory } from "../models/memory.ts";
import { perLayer as perLayerUpdates } from "../optim/mod.ts";
import { EIGHT_BIT_MODEL, quietIO, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

/** Each method with settings that make its special steps happen within 4 steps. */
const CASES: Record<string, Partial<RunConfig>> = {
  golore: { method: "golore", rank: 8, goloreRandomFrom: 2, galoreGap: 2 },
  loro: { method: "loro", loroExactEvery: 2 },
  spam: { method: "spam", momentumResetEvery: 3, spamWarmup: 2, spamThreshold: 50 },
  "stable-spam": {
    method: "stable-spam",
    momentumResetEvery: 3,
    stableSpamGammas: [0.85, 0.99, 0.99],
    stableSpamSchedule: { totalT: 4, etaMin: 0.5 },
  },
  "lowrank refactor": { method: "lowrank", refactorEvery: 2, recoverySteps: 2 },
};

function run(name: string, overrides: Partial<RunConfig> = {}): RunConfig {
  return toyRun({
    model: EIGHT_BIT_MODEL,
    rank: 4,
    weightDecay: 0.1,
    steps: 4,
    ...CASES[name],
    ...overrides,
  });
}

function data(): RunData {
  const rng = new Rng(1);
  const doc = () => Uint32Array.from({ length: 60 }, () => 1 + rng.nextInt(299));
  return {
    train: packedSequences([doc(), doc(), doc()], 8, 0, 0),
    val: packedSequences([doc()], 8, 0, 0),
  };
}

async function checkpoint(dir: string): Promise<Map<string, Uint8Array>> {
  const f = await openSafetensors(`${dir}/checkpoint.safetensors`);
  const out = new Map<string, Uint8Array>();
  try {
    for (const [name, e] of f.entries) {
      const bytes = new Uint8Array(e.end - e.start);
      await f.read(name, (chunk, off) => bytes.set(chunk, off));
      out.set(name, bytes);
    }
  } finally {
    f.close();
  }
  return out;
}

for (const name of Object.keys(CASES)) {
  Deno.test(`${name}: stopped at step 1 or 3 and resumed equals an uninterrupted run bit for bit; estimate = measured bytes`, async () => {
    const [a, b] = [await Deno.makeTempDir(), await Deno.makeTempDir()];
    try {
      const full = await trainRun(run(name), data(), quietIO(a));
      assert.ok(full.history.train.every(([, l]) => Number.isFinite(l)), `${name} losses finite`);
      assert.equal(full.measuredBytes, full.estimatedBytes, "steady bytes = estimate");
      for (const stopAt of [1, 3]) {
        await Deno.remove(b, { recursive: true });
        await Deno.mkdir(b);
        let n = 0;
        await trainRun(run(name), data(), quietIO(b, { shouldStop: () => ++n >= stopAt }));
        const rest = await trainRun(run(name), data(), quietIO(b, { resume: true }));
        assert.equal(rest.steps, 4);
        assert.deepEqual(rest.history.train, full.history.train, `stop at ${stopAt}`);
        const [ca, cb] = [await checkpoint(a), await checkpoint(b)];
        assert.deepEqual([...ca.keys()], [...cb.keys()]);
        for (const [k, v] of ca) assert.deepEqual(cb.get(k), v, `stop at ${stopAt}: ${k} differs`);
      }
    } finally {
      await Deno.remove(a, { recursive: true });
      await Deno.remove(b, { recursive: true });
    }
  });
}

Deno.test("optimizer-state bytes of the new methods equal estimateMemory('ours'): adamw/adamw8bit where allowed, whole-tree and per-layer", () => {
  for (const name of ["golore", "loro", "spam", "stable-spam"]) {
    for (const optimizer of ["adamw", "adamw8bit"] as const) {
      if (optimizer === "adamw8bit" && name.includes("spam")) continue;
      for (const perLayer of [false, true]) {
        if (perLayer && name === "loro") continue;
        const r = run(name, { optimizer, perLayer });
        const m = measureMemory(r.model, linearMethod(r), {
          dtype: "f32",
          extra: (model) => {
            const opt = buildOptimizer(r, model.params);
            return (perLayer ? perLayerUpdates(opt) : opt).init(model.params);
          },
        });
        const est = estimateMemory(
          r.model,
          { method: linearMethod(r), optimizer: optimizerSpec(r) },
          "ours",
        );
        // GoLore's projectors appear at its first update (estimated apart as `projector`).
        assert.equal(
          m.extra,
          est.optimizerStates,
          `${name} ${optimizer}${perLayer ? " per-layer" : ""}`,
        );
      }
    }
  }
});

Deno.test("low-rank with --refactor-every logs a refactorization at every cycle and keeps training", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await trainRun(run("lowrank refactor", { steps: 5 }), data(), quietIO(dir));
    const log = (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.deepEqual(log.filter((r) => r.kind === "refactor").map((r) => r.step), [2, 4]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
