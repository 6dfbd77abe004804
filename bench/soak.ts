/**
 * The long soak: `tiny` trains 1000 steps with every method and option (Fira, APOLLO, APOLLO-Mini,
 * GoLore, LoRO, SPAM, Stable-SPAM, low-rank with refactorization,
 * 8-bit states, bf16 weights, recomputation, per-layer updates), evaluating, checkpointing,
 * refreshing, merging and refactorizing every 100 steps, and prints live buffers, live bytes, the
 * buffer pool, every GPU-object cache, and the process's resident memory and JS heap (after a full
 * collection) at steps 1, 500 and 1000 (the loss is read every step, so each sample is taken with
 * nothing pending). tests/soak_test.ts asserts the same on a shorter run.
 *
 *   deno run -A bench/soak.ts [--steps 1000] [--only sltrain]
 */
import { parseArgs } from "node:util";
import v8 from "node:v8";
import vm from "node:vm";
import { isProjected, type RunConfig } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import type { Progress } from "../cli/progress.ts";
import { init } from "../core/device.ts";
import { cacheStats } from "../core/kernel.ts";
import { memoryStats } from "../core/memory.ts";
import { loadBrown, splitEvery } from "../data/brown.ts";
import { packedSequences } from "../data/batches.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { PRESETS, withVocab } from "../models/config.ts";
import { fmtBytes } from "../cli/format.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { steps: { type: "string", default: "1000" }, only: { type: "string" } },
});
const steps = Number(values.steps);
const every = Math.max(1, Math.floor(steps / 10));
const info = await init();
const tok = byteTokenizer();
const { train, val } = splitEvery((await loadBrown()).slice(0, 60));
const enc = (docs: { text: string }[]) => docs.map((d) => Uint32Array.from(tok.encode(d.text)));
const data = {
  train: packedSequences(enc(train), 32, tok.eos, tok.pad),
  val: packedSequences(enc(val), 32, tok.eos, tok.pad),
};

const CONFIGS: [string, Partial<RunConfig>][] = [
  ["full", { method: "full" }],
  ["lowrank", { method: "lowrank" }],
  ["sltrain", { method: "sltrain", refactorEvery: every }],
  ["relora", { method: "relora", reloraEvery: every }],
  ["galore", { method: "galore", galoreGap: every }],
  ["fira", { method: "fira", galoreGap: every }],
  ["apollo", { method: "apollo", galoreGap: every }],
  ["apollo-mini", { method: "apollo-mini", galoreGap: every }],
  ["golore", { method: "golore", galoreGap: every }],
  ["loro", { method: "loro" }],
  ["spam", { method: "spam" }],
  ["stable-spam", { method: "stable-spam" }],
  ["lowrank --refactor-every", { method: "lowrank", refactorEvery: every }],
  ["sltrain --optimizer adamw8bit", { method: "sltrain", optimizer: "adamw8bit" }],
  ["sltrain --dtype bf16", { method: "sltrain", dtype: "bf16" }],
  ["full --recompute", { method: "full", recompute: true }],
  ["sltrain --per-layer", { method: "sltrain", perLayer: true }],
];

// A full collection before each sample: the heap figure is what is reachable.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

const silent = { update() {}, log() {}, done() {} } as unknown as Progress;
console.log(
  `${info.summary}\n${steps} steps of tiny (2×32 tokens), every ${every}: eval, checkpoint, refresh/merge/refactor`,
);
console.log(
  "| method | step | live buffers | live bytes | pool (reserved) | pipelines | uniforms (made) | kernel variants | matmul textures | RSS | JS heap | s/step |",
);
console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
for (const [name, overrides] of CONFIGS) {
  if (values.only && !name.startsWith(values.only)) continue;
  const run: RunConfig = {
    model: withVocab(PRESETS.tiny, tok.vocabSize),
    modelName: "tiny",
    method: "sltrain",
    optimizer: "adamw",
    rank: 32,
    delta: 0.03,
    alpha: 8,
    lr: isProjected(overrides.method!) ? 1e-2 : 3e-3,
    warmup: 60,
    steps,
    minLrRatio: 0.1,
    batch: 2,
    seq: 32,
    gradAccum: 1,
    clip: 0,
    weightDecay: 0,
    perLayer: false,
    galoreGap: 200,
    galoreScale: 0.25,
    refactorEvery: 0,
    reloraEvery: every,
    recoverySteps: 10,
    evalEvery: every,
    evalTokens: 1024,
    seed: 42,
    logEvery: 1,
    dtype: "f32",
    recompute: false,
    ...overrides,
  };
  const dir = await Deno.makeTempDir({ prefix: "sltrain-soak-" });
  const t0 = performance.now();
  try {
    await trainRun(run, data, {
      out: dir,
      resume: false,
      progress: silent,
      log: () => {},
      shouldStop: () => false,
      onStep: (step) => {
        if (step !== 1 && step !== Math.floor(steps / 2) && step !== steps) return;
        gc();
        const p = Deno.memoryUsage();
        const m = memoryStats();
        const c = cacheStats();
        console.log(
          `| ${name} | ${step} | ${m.liveBuffers} | ${m.liveBytes} | ${
            fmtBytes(m.reservedBytes)
          } | ${c.pipelines} | ${c.uniforms} (${c.uniformsCreated}) | ${c.kernelVariants} | ${c.matmulTextures} | ${
            fmtBytes(p.rss)
          } | ${fmtBytes(p.heapUsed)} | ${((performance.now() - t0) / 1000 / step).toFixed(3)} |`,
        );
      },
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
