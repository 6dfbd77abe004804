/**
 * Soak: `tiny` trains with every method and option (Fira, APOLLO, APOLLO-Mini, 8-bit states, bf16
 * weights, recomputation, per-layer updates) through evaluations, checkpoints, projector
 * refreshes, ReLoRA merges and SLTrain refactorizations, all every 4 steps. Sampled at the same
 * point of that cycle, live buffers and live bytes stay where step 1 left them, the buffer pool and
 * every cache of GPU objects stay flat, uniform buffers are made at a constant rate (per-step
 * optimizer scalars) while the cache of them stays under its limit, and the JS heap does not grow
 * from one cycle to the next beyond a bound (JS objects the library's counters do not see). The
 * process's resident memory, and the 1000-step figures, come from `bench/soak.ts` (a process of
 * its own).
 */
import assert from "node:assert/strict";
import v8 from "node:v8";
import vm from "node:vm";
import type { RunConfig } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import { cacheStats, setUniformCacheLimit } from "../core/kernel.ts";
import { memoryStats } from "../core/memory.ts";
import { Rng } from "../core/rng.ts";
import { packedSequences } from "../data/batches.ts";
import { PRESETS, withVocab } from "../models/config.ts";
import { quietIO, toyRun } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const CYCLE = 4;
const STEPS = 3 * CYCLE + 2; // the last sample is taken mid-run, like step 1

const CONFIGS: [string, Partial<RunConfig>][] = [
  ["full", { method: "full" }],
  ["lowrank", { method: "lowrank" }],
  ["sltrain", { method: "sltrain", refactorEvery: CYCLE }],
  ["relora", { method: "relora", reloraEvery: CYCLE }],
  ["galore", { method: "galore", galoreGap: CYCLE }],
  ["fira", { method: "fira", galoreGap: CYCLE }],
  ["apollo", { method: "apollo", galoreGap: CYCLE }],
  ["apollo-mini", { method: "apollo-mini", galoreGap: CYCLE }],
  ["sltrain --optimizer adamw8bit", { method: "sltrain", optimizer: "adamw8bit" }],
  ["sltrain --dtype bf16", { method: "sltrain", dtype: "bf16" }],
  ["full --recompute", { method: "full", recompute: true }],
  ["sltrain --per-layer", { method: "sltrain", perLayer: true }],
];

/** Growth of the JS heap allowed from one cycle to the next. */
const HEAP_SLACK = 12 * 2 ** 20;

// A full collection before each sample, so the heap figure is what is reachable, not what the
// collector has not got to yet (V8's gc, exposed at run time).
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

/** What is sampled after a step. */
function sample() {
  gc();
  const m = memoryStats();
  // Uniforms and bind groups are LRU caches that see each step's new values (the learning rate):
  // bounded, not flat.
  const { uniforms, uniformsCreated, bindGroups, bindGroupsCreated: _, ...caches } = cacheStats();
  return {
    live: { buffers: m.liveBuffers, bytes: m.liveBytes },
    pool: m.reservedBytes,
    process: Deno.memoryUsage(),
    caches,
    uniforms,
    uniformsCreated,
    bindGroups,
  };
}

for (const [name, overrides] of CONFIGS) {
  Deno.test(`soak: ${name} on tiny for ${STEPS} steps leaves memory and caches flat`, async () => {
    const rng = new Rng(3);
    const doc = () => Uint32Array.from({ length: 400 }, () => 1 + rng.nextInt(250));
    const data = {
      train: packedSequences([doc(), doc(), doc()], 16, 0, 0),
      val: packedSequences([doc()], 16, 0, 0),
    };
    const run = toyRun({
      model: withVocab(PRESETS.tiny, 256),
      rank: 32,
      alpha: 8,
      steps: STEPS,
      batch: 2,
      seq: 16,
      logEvery: CYCLE,
      evalEvery: CYCLE,
      ...overrides,
    });
    const dir = await Deno.makeTempDir();
    const limit = 1000;
    const prevLimit = setUniformCacheLimit(limit);
    const before = memoryStats();
    const at = new Map<number, ReturnType<typeof sample>>();
    try {
      await trainRun(run, data, {
        ...quietIO(dir),
        onStep: (step) => void (step % CYCLE <= 1 && at.set(step, sample())),
      });
    } finally {
      setUniformCacheLimit(prevLimit);
      await Deno.remove(dir, { recursive: true });
    }
    const first = at.get(1)!;
    for (let step = 1 + CYCLE; step < STEPS; step += CYCLE) {
      const s = at.get(step)!;
      assert.deepEqual(s.live, first.live, `step ${step} vs step 1: live buffers and bytes`);
      assert.ok(s.uniforms <= limit, `${s.uniforms} uniform buffers cached`);
      assert.ok(s.bindGroups <= 4096, `${s.bindGroups} bind groups cached`);
    }
    // From the end of the first full cycle on, nothing new is ever needed.
    const warm = at.get(1 + CYCLE)!;
    for (let step = 1 + 2 * CYCLE; step < STEPS; step += CYCLE) {
      const s = at.get(step)!;
      assert.equal(s.pool, warm.pool, `step ${step}: the buffer pool grew`);
      assert.deepEqual(s.caches, warm.caches, `step ${step}: a cache grew`);
    }
    // The JS heap (this isolate's) grows no more in the third cycle than a bound. Resident
    // memory is not checked here: `deno test --parallel` runs test files as workers of one
    // process, so RSS moves with whatever the other files allocate (±250 MB a cycle in the
    // suite); bench/soak.ts measures it in a process of its own.
    const last = at.get(1 + 3 * CYCLE)!.process;
    const mid = at.get(1 + 2 * CYCLE)!.process;
    assert.ok(
      last.heapUsed - mid.heapUsed <= HEAP_SLACK,
      `the JS heap grew ${last.heapUsed - mid.heapUsed} bytes in a cycle`,
    );
    const made = (a: number, b: number) => at.get(b)!.uniformsCreated - at.get(a)!.uniformsCreated;
    assert.equal(made(1 + CYCLE, 1 + 2 * CYCLE), made(1 + 2 * CYCLE, 1 + 3 * CYCLE));
    const after = memoryStats();
    assert.deepEqual(
      { buffers: after.liveBuffers, bytes: after.liveBytes },
      { buffers: before.liveBuffers, bytes: before.liveBytes },
      "the finished run left tensors behind",
    );
  });
}
