/**
 * Training-step speed per method: median ms per optimizer step (forward, backward, the trainer's
 * optimizer update and `applyUpdates`, one sync), tokens/s, dispatches per step, and optionally the
 * GPU time per kernel; beside it, the same step of the PyTorch CPU reference (bench/torch_ref/,
 * same model, method, optimizer and batch shape), run as a subprocess right after ours, method by
 * method, and the ratio ours / PyTorch. Also the median CPU time per step of the whole process
 * (llvmpipe's threads included), which on a machine shared with other work moves much less than
 * wall time.
 *
 * Usage: `deno run -A bench/step.ts [--model tiny] [--methods full,lowrank,sltrain,relora,galore]
 *   (`sltrain+keep`: with --keep-weight)
 *   [--optimizer adamw|adamw8bit] [--batch 8] [--seq 128] [--reps 5] [--profile] [--skip-torch]`
 *
 * On a quiet machine, e.g. the issue's `tiny` 16×128 comparison:
 *
 *   apt-get install -y python3-torch libopenblas0-pthread   # once; not a CI dependency
 *   DENO_WEBGPU_BACKEND=vulkan deno run -A bench/step.ts --methods full,sltrain --batch 16
 *
 * The PyTorch column uses Debian's /usr/bin/python3 (or $SLTRAIN_PYTHON) with 2 threads and
 * without the OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE presets (bench/torch_peer.ts); it is skipped,
 * with the reason printed, when torch or OpenBLAS is missing.
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { deviceInfo, init } from "../core/device.ts";
import { dispatchStats, startProfile, stopProfile, sync } from "../core/kernel.ts";
import { valueAndGrad } from "../core/tape.ts";
import { tensor } from "../core/tensor.ts";
import { Rng } from "../core/rng.ts";
import { withVocab } from "../models/config.ts";
import { loadConfig } from "../cli/load_config.ts";
import { initLlama, type LlamaParams, loss } from "../models/llama.ts";
import * as tree from "../core/tree.ts";
import { applyUpdates } from "../optim/mod.ts";
import {
  buildOptimizer,
  linearMethod,
  type MethodName,
  type RunConfig,
} from "../cli/run_config.ts";
import { methodName, optimizerName } from "../cli/flags.ts";
import { probeTorch, runPython, torchRefScript } from "./torch_peer.ts";

const { values: f } = parseArgs({
  options: {
    model: { type: "string", default: "tiny" },
    methods: { type: "string", default: "full,lowrank,sltrain,relora,galore" },
    batch: { type: "string", default: "8" },
    seq: { type: "string", default: "128" },
    reps: { type: "string", default: "5" },
    vocab: { type: "string", default: "256" },
    optimizer: { type: "string", default: "adamw" },
    profile: { type: "boolean", default: false },
    "skip-torch": { type: "boolean", default: false },
  },
});
await init();
const peer = f["skip-torch"]
  ? { ok: false, why: "--skip-torch" }
  : f.optimizer !== "adamw"
  ? { ok: false, why: `the reference has no ${f.optimizer}` }
  : await probeTorch();
const model = withVocab(await loadConfig(f.model!), Number(f.vocab));
const [B, T, reps] = [Number(f.batch), Number(f.seq), Number(f.reps)];
const rank = Math.floor(model.hidden / 4);
console.log(
  `# training step, ${f.model} (vocab ${model.vocabSize}), ${B}×${T} tokens, ${f.optimizer}, ${deviceInfo().description}\n`,
);
console.log(
  peer.ok
    ? `PyTorch ${peer.version} CPU (OpenBLAS, 2 threads) beside us, method by method\n`
    : `PyTorch column skipped: ${peer.why}\n`,
);
console.log(
  "| method | ms/step (median) | tokens/s | PyTorch ms/step | PyTorch tokens/s | ours / PyTorch | dispatches/step | CPU ms/step (median) |",
);
console.log("|---|---|---|---|---|---|---|---|");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const rng = new Rng(3);
const ids = Int32Array.from({ length: B * T }, () => rng.nextInt(model.vocabSize));
for (const name of f.methods!.split(",")) {
  // "sltrain+keep": SLTrain keeping each built W from forward to backward (--keep-weight).
  const [base, variant] = name.trim().split("+");
  const method: MethodName = methodName(base);
  const run = {
    keepWeight: variant === "keep",
    model,
    method,
    optimizer: optimizerName(f.optimizer!),
    batch: B,
    seq: T,
    rank,
    delta: 0.03,
    alpha: rank / 4,
    lr: 1e-3,
    warmup: 1,
    steps: 1000,
    minLrRatio: 0.1,
    clip: 0,
    weightDecay: 0,
    galoreGap: 200,
    galoreScale: 0.25,
    seed: 1,
  } as RunConfig;
  const m = initLlama(model, linearMethod(run), 1);
  let params: LlamaParams = m.params;
  const opt = buildOptimizer(run, params);
  let state = opt.init(params);
  const times: number[] = [];
  const cpu: number[] = [];
  let dispatches = 0;
  for (let i = 0; i < reps + 2; i++) {
    if (f.profile && i === reps + 1) startProfile();
    const d0 = dispatchStats().dispatches;
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const inputs = tensor(ids, [B, T], "i32");
    const targets = tensor(ids, [B, T], "i32");
    const { value, grads } = valueAndGrad((p: LlamaParams) => loss(m, p, { inputs, targets }))(
      params,
    );
    const r = await opt.update(grads, state, params);
    state = r.state;
    params = applyUpdates(params, r.updates);
    await sync();
    tree.dispose([value, inputs, targets]);
    // Step 0 compiles and refreshes GaLore's projector; the profiled step is excluded too.
    if (i >= 1 && i <= reps) {
      times.push(performance.now() - t0);
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1000);
    }
    dispatches = dispatchStats().dispatches - d0;
  }
  const ms = median(times);
  const torch = peer.ok ? await torchStep(run, reps) : null;
  const peerCols = torch
    ? `${torch.msPerStep.toFixed(0)} | ${Math.round(torch.tokensPerSec)} | ${
      (torch.msPerStep / ms).toFixed(2)
    }×`
    : "– | – | –";
  console.log(
    `| ${name.trim()} | ${ms.toFixed(0)} | ${
      Math.round((B * T) / (ms / 1000))
    } | ${peerCols} | ${dispatches} | ${median(cpu).toFixed(0)} |`,
  );
  if (f.profile) {
    const prof = await stopProfile();
    const total = prof.reduce((a, e) => a + e.ms, 0);
    console.log(`\n${name.trim()}: GPU ${total.toFixed(0)} ms in one profiled step\n`);
    for (const e of prof.slice(0, 8)) {
      console.log(
        `  ${e.name.padEnd(26)} ${String(e.count).padStart(4)}× ${e.ms.toFixed(1).padStart(7)} ms ${
          (100 * e.ms / total).toFixed(0).padStart(3)
        }%`,
      );
    }
    console.log();
  }
  tree.dispose([params, m.buffers, state]);
}

/** The PyTorch reference's median step for the same run, or null (with a note) if it failed. */
async function torchStep(
  run: RunConfig,
  reps: number,
): Promise<{ msPerStep: number; tokensPerSec: number } | null> {
  const r = await runPython([
    torchRefScript("bench_step.py"),
    "--run",
    JSON.stringify(run),
    "--reps",
    String(reps),
  ]);
  if (r.code !== 0) {
    console.error(`PyTorch step failed for ${run.method} (exit ${r.code})`);
    return null;
  }
  return JSON.parse(r.stdout);
}
