/**
 * `--optimizer adamw8bit` through the trainer: every method trains and resumes bit for bit with
 * its 8-bit states checkpointed as u8/f32 tensors; a checkpoint of another optimizer is refused by
 * name; and the memory estimate equals the measured bytes to the byte, for f32 and bf16 weights,
 * f32 and 8-bit states, GaLore8bit and per-layer states.
 */
import assert from "node:assert/strict";
import { buildOptimizer, linearMethod, type RunConfig } from "../cli/run_config.ts";
import { loadCheckpoint, saveCheckpoint } from "../cli/checkpoint.ts";
import { openSafetensors } from "../cli/safetensors.ts";
import { type RunData, trainRun } from "../cli/trainer.ts";
import { Rng } from "../core/rng.ts";
import * as tree from "../core/tree.ts";
import { packedSequences } from "../data/batches.ts";
import { estimateMemory } from "../models/estimate.ts";
import { measureMemory } from "../models/memory.ts";
import { perLayer } from "../optim/mod.ts";
import { EIGHT_BIT_MODEL, quietIO, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const METHODS = ["full", "lowrank", "sltrain", "relora", "galore"] as const;

function run(method: RunConfig["method"], overrides: Partial<RunConfig> = {}): RunConfig {
  return toyRun({
    model: EIGHT_BIT_MODEL,
    method,
    optimizer: "adamw8bit",
    rank: method === "galore" ? 32 : 4,
    weightDecay: 0.1,
    steps: 4,
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

/** The checkpoint's tensors: name → [dtype, raw bytes]. */
async function checkpoint(dir: string): Promise<Map<string, [string, Uint8Array]>> {
  const f = await openSafetensors(`${dir}/checkpoint.safetensors`);
  const out = new Map<string, [string, Uint8Array]>();
  try {
    for (const [name, e] of f.entries) {
      const bytes = new Uint8Array(e.end - e.start);
      await f.read(name, (chunk, off) => bytes.set(chunk, off));
      out.set(name, [e.dtype, bytes]);
    }
  } finally {
    f.close();
  }
  return out;
}

for (const method of METHODS) {
  Deno.test(`adamw8bit: ${method} stopped at step 2 and resumed equals an uninterrupted run bit for bit (states checkpointed as U8 codes and F32 absmax); estimate = measured bytes`, async () => {
    const [a, b] = [await Deno.makeTempDir(), await Deno.makeTempDir()];
    try {
      const full = await trainRun(run(method), data(), quietIO(a));
      let n = 0;
      await trainRun(run(method), data(), quietIO(b, { shouldStop: () => ++n >= 2 }));
      const rest = await trainRun(run(method), data(), quietIO(b, { resume: true }));
      assert.equal(rest.steps, 4);
      const [ca, cb] = [await checkpoint(a), await checkpoint(b)];
      assert.deepEqual([...ca.keys()], [...cb.keys()]);
      for (const [k, v] of ca) assert.deepEqual(cb.get(k), v, `${k} differs`);
      const codes = [...ca].filter(([k, [dtype]]) => k.includes(".codes") && dtype === "U8");
      const absmax = [...ca].filter(([k, [dtype]]) => k.includes(".absmax") && dtype === "F32");
      assert.ok(codes.length >= 4, `${codes.length} code tensors`);
      assert.equal(absmax.length, codes.length);
      assert.deepEqual(rest.history.train, full.history.train);
      assert.ok(full.history.train.every(([, l]) => Number.isFinite(l)));
      assert.equal(full.measuredBytes, full.estimatedBytes, "steady bytes = estimate");
    } finally {
      await Deno.remove(a, { recursive: true });
      await Deno.remove(b, { recursive: true });
    }
  });
}

Deno.test("adamw8bit changes the run (not a silent f32 fallback), and resume refuses a checkpoint of another optimizer by name", async () => {
  const [a, b] = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  try {
    await trainRun(run("sltrain"), data(), quietIO(a));
    await trainRun(run("sltrain", { optimizer: "adamw" }), data(), quietIO(b));
    const [ca, cb] = [await checkpoint(a), await checkpoint(b)];
    assert.notDeepEqual(ca.get("params.embed"), cb.get("params.embed"));
    assert.ok(![...cb.keys()].some((k) => k.includes(".codes")));
    await assert.rejects(
      () => trainRun(run("sltrain", { optimizer: "adamw" }), data(), quietIO(a, { resume: true })),
      /another config[\s\S]*optimizer: checkpoint "adamw8bit", now "adamw"/,
    );
  } finally {
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});

Deno.test("a checkpoint from before --optimizer existed (no optimizer in its config) resumes as adamw, and is refused for adamw8bit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/checkpoint.safetensors`;
    await trainRun(run("sltrain", { optimizer: "adamw", steps: 2 }), data(), quietIO(dir));
    const ck = await loadCheckpoint(path);
    delete (ck.meta.run as Partial<RunConfig>).optimizer;
    await saveCheckpoint(path, ck);
    tree.dispose(ck);
    await assert.rejects(
      () => trainRun(run("sltrain", { steps: 3 }), data(), quietIO(dir, { resume: true })),
      /optimizer: checkpoint "adamw", now "adamw8bit"/,
    );
    const r = await trainRun(
      run("sltrain", { optimizer: "adamw", steps: 3 }),
      data(),
      quietIO(dir, { resume: true }),
    );
    assert.equal(r.steps, 3);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("per-layer GaLore8bit and SLTrain with adamw8bit (updates inside backward, a projector refresh among them) equal the standard step bit for bit", async () => {
  for (const method of ["galore", "sltrain"] as const) {
    const dirs: string[] = [];
    try {
      for (const perLayer of [false, true]) {
        dirs.push(await Deno.makeTempDir());
        await trainRun(run(method, { perLayer, steps: 4 }), data(), quietIO(dirs.at(-1)!));
      }
      const [ca, cb] = [await checkpoint(dirs[0]), await checkpoint(dirs[1])];
      for (const [k, v] of ca) {
        if (k.startsWith("params.")) assert.deepEqual(cb.get(k), v, `${method}: ${k} differs`);
      }
    } finally {
      for (const d of dirs) await Deno.remove(d, { recursive: true });
    }
  }
});

Deno.test("measured bytes of weights, buffers and optimizer state equal estimateMemory('ours') to the byte: f32/bf16 weights × adamw/adamw8bit × whole-tree/per-layer, every method", () => {
  for (const method of METHODS) {
    for (const optimizer of ["adamw", "adamw8bit"] as const) {
      for (const weights of ["f32", "bf16"] as const) {
        for (const layered of [false, true]) {
          const r = run(method, { optimizer, perLayer: layered });
          const m = measureMemory(r.model, linearMethod(r), {
            dtype: weights,
            extra: (model) => {
              const opt = buildOptimizer(r, model.params);
              return (layered ? perLayer(opt) : opt).init(model.params);
            },
          });
          const states = optimizer === "adamw8bit" ? "8bit" : "f32";
          const est = estimateMemory(r.model, {
            method: linearMethod(r),
            optimizer: method === "galore"
              ? { kind: "galore", rank: r.rank, states }
              : { kind: "adam", states },
            weights,
          }, "ours");
          const what = `${method} ${optimizer} ${weights}${layered ? " per-layer" : ""}`;
          assert.equal(m.params + m.buffers, est.weights + est.indices, `${what}: weights`);
          // GaLore's projectors appear at its first update; the rest of the state at init.
          assert.equal(m.extra, est.optimizerStates, `${what}: optimizer state`);
        }
      }
    }
  }
});
