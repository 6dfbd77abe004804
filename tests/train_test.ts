import assert from "node:assert/strict";
import { readSafetensors } from "../cli/safetensors.ts";
import type { RunConfig } from "../cli/run_config.ts";
import { type RunData, trainRun } from "../cli/trainer.ts";
import { packedSequences } from "../data/batches.ts";
import { Rng } from "../core/rng.ts";
import { quietIO, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

function runConfig(method: RunConfig["method"], steps: number): RunConfig {
  return toyRun({ method, steps });
}

function data(): RunData {
  const rng = new Rng(1);
  const doc = () => Uint32Array.from({ length: 60 }, () => 1 + rng.nextInt(39));
  return {
    train: packedSequences([doc(), doc(), doc()], 8, 0, 0),
    val: packedSequences([doc()], 8, 0, 0),
  };
}

async function params(dir: string): Promise<Map<string, Uint32Array>> {
  const f = await readSafetensors(`${dir}/checkpoint.safetensors`);
  return new Map(
    Object.entries(f.tensors).filter(([k]) => k.startsWith("params.")).map((
      [k, t],
    ) => [k, new Uint32Array(t.data.buffer)]),
  );
}

for (const method of ["sltrain", "galore"] as const) {
  Deno.test(`resume: ${method} stopped at step 3 and resumed equals an uninterrupted run bit for bit`, async () => {
    const a = await Deno.makeTempDir();
    const b = await Deno.makeTempDir();
    const d = data();
    const full = await trainRun(
      runConfig(method, 6),
      d,
      quietIO(a, { resume: false, shouldStop: () => false }),
    );
    let steps = 0;
    const part = await trainRun(
      runConfig(method, 6),
      d,
      quietIO(b, { resume: false, shouldStop: () => ++steps >= 3 }),
    );
    assert.equal(part.interrupted, true);
    assert.equal(part.steps, 3);
    const rest = await trainRun(
      runConfig(method, 6),
      d,
      quietIO(b, { resume: true, shouldStop: () => false }),
    );
    assert.equal(rest.steps, 6);
    const pa = await params(a);
    const pb = await params(b);
    assert.deepEqual([...pa.keys()], [...pb.keys()]);
    for (const [k, v] of pa) assert.deepEqual(pb.get(k), v, `parameter ${k} differs`);
    assert.deepEqual(rest.history.train, full.history.train);
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  });
}

Deno.test("resume refuses a checkpoint from another config and names the difference", async () => {
  const dir = await Deno.makeTempDir();
  await trainRun(
    runConfig("sltrain", 2),
    data(),
    quietIO(dir, { resume: false, shouldStop: () => false }),
  );
  const other = { ...runConfig("sltrain", 2), rank: 3 };
  await assert.rejects(
    () => trainRun(other, data(), quietIO(dir, { resume: true, shouldStop: () => false })),
    /another config[\s\S]*rank: checkpoint 4, now 3/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("per-layer updates: bit-identical parameters, and the peak drops by the block gradients", async () => {
  const { PRESETS } = await import("../models/config.ts");
  const { countParams } = await import("../models/estimate.ts");
  // The real small preset (vocab 32000), one step of 1×16 tokens.
  const small = { ...runConfig("full", 1), model: PRESETS.small, batch: 1, seq: 16 };
  const dirs: string[] = [];
  const peaks: number[] = [];
  for (const perLayer of [false, true]) {
    const dir = await Deno.makeTempDir();
    dirs.push(dir);
    const r = await trainRun(
      { ...small, perLayer },
      data(),
      quietIO(dir, { resume: false, shouldStop: () => false }),
    );
    peaks.push(r.peakBytes);
  }
  const [pa, pb] = [await params(dirs[0]), await params(dirs[1])];
  for (const [k, v] of pa) assert.deepEqual(pb.get(k), v, `parameter ${k} differs`);
  const blockGradBytes = 4 * countParams(small.model, { kind: "dense" }).byPart.blocks;
  console.log(
    `small preset, one step: peak ${peaks[0]} B standard, ${
      peaks[1]
    } B per-layer; block gradients ${blockGradBytes} B`,
  );
  assert.ok(
    peaks[0] - peaks[1] >= blockGradBytes,
    `standard peak ${peaks[0]} - per-layer peak ${peaks[1]} < block gradients ${blockGradBytes}`,
  );
  for (const d of dirs) await Deno.remove(d, { recursive: true });
});

Deno.test("per-layer GaLore (projector refresh inside backward) matches the standard step", async () => {
  const dirs: string[] = [];
  for (const perLayer of [false, true]) {
    const dir = await Deno.makeTempDir();
    dirs.push(dir);
    await trainRun(
      { ...runConfig("galore", 4), perLayer },
      data(),
      quietIO(dir, { resume: false, shouldStop: () => false }),
    );
  }
  const [pa, pb] = [await params(dirs[0]), await params(dirs[1])];
  for (const [k, v] of pa) assert.deepEqual(pb.get(k), v, `parameter ${k} differs`);
  for (const d of dirs) await Deno.remove(d, { recursive: true });
});

Deno.test("SLTrain refactorization + momentum reset and ReLoRA merges: resume across them is bit-exact", async () => {
  for (
    const overrides of [{ method: "sltrain", refactorEvery: 2 }, {
      method: "relora",
      reloraEvery: 2,
    }] as const
  ) {
    const run = toyRun({ ...overrides, steps: 6 });
    const a = await Deno.makeTempDir();
    const b = await Deno.makeTempDir();
    const kinds: unknown[] = [];
    const full = await trainRun(run, data(), {
      ...quietIO(a),
      log: (r) => void kinds.push(r.kind),
    });
    let n = 0;
    await trainRun(run, data(), quietIO(b, { shouldStop: () => ++n >= 3 }));
    await trainRun(run, data(), quietIO(b, { resume: true }));
    const [pa, pb] = [await params(a), await params(b)];
    for (const [k, v] of pa) {
      assert.deepEqual(pb.get(k), v, `${run.method}: parameter ${k} differs`);
    }
    assert.ok(full.history.train.every(([, l]) => Number.isFinite(l)));
    const resets = kinds.filter((k) => k === "refactor" || k === "merge");
    assert.equal(resets.length, 2, `${run.method}: a reset at steps 2 and 4`);
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});
