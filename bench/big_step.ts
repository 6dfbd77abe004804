/**
 * One training step of a big preset (1B, 7B) through the library, to show it instantiates and
 * trains on an adapter whose storage bindings hold 128 MiB: init, then forward + backward with a
 * per-layer SGD update in the tape's onGrad hook (p ← p − lr·g in f32, stored in p's dtype), so no
 * gradient set and no optimizer state is resident: the memory is the weights, the buffers and one
 * step's activations. Prints times, the loss before and after the step on the same batch, and the
 * memory counters (live = steady bytes, peak = the step's peak).
 *
 * Usage: `deno run -A bench/big_step.ts [--model 7b] [--method sltrain] [--dtype bf16]
 *   [--batch 1] [--seq 256] [--rank hidden/4] [--delta 0.03] [--lr 1e-3] [--recompute]`
 * Run it under `/usr/bin/time -v` for the process's resident memory.
 * @module
 */
import { parseArgs } from "node:util";
import { convert } from "../core/convert.ts";
import { deviceInfo, init } from "../core/device.ts";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { Rng } from "../core/rng.ts";
import { Tape } from "../core/tape.ts";
import { type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { loadConfig } from "../cli/load_config.ts";
import { initLlama, type LlamaParams, loss } from "../models/llama.ts";
import type { LinearMethod } from "../models/method.ts";
import { mapN } from "../ops/mod.ts";

const { values: f } = parseArgs({
  options: {
    model: { type: "string", default: "7b" },
    method: { type: "string", default: "sltrain" },
    dtype: { type: "string", default: "bf16" },
    batch: { type: "string", default: "1" },
    seq: { type: "string", default: "256" },
    rank: { type: "string" },
    delta: { type: "string", default: "0.03" },
    lr: { type: "string", default: "1e-3" },
    recompute: { type: "boolean", default: false },
  },
});
const info = await init();
const config = await loadConfig(f.model!);
const rank = Number(f.rank ?? config.hidden / 4);
const method: LinearMethod = f.method === "full"
  ? { kind: "dense" }
  : f.method === "sltrain"
  ? { kind: "sltrain", rank, delta: Number(f.delta), alpha: rank / 4, seed: 1 }
  : f.method === "lowrank"
  ? { kind: "lowrank", rank, alpha: rank / 4 }
  : { kind: "relora", rank, alpha: rank / 4 };
const dtype = f.dtype === "bf16" ? "bf16" : "f32";
const [B, T, lr] = [Number(f.batch), Number(f.seq), Number(f.lr)];
const gb = (b: number) => `${(b / 1e9).toFixed(3)} GB`;
console.log(
  `# ${f.model} ${f.method} ${dtype}${f.recompute ? " recompute" : ""}, ${B}×${T} tokens, ` +
    `${info.description} (binding limit ${info.limits.maxStorageBufferBindingSize} B)`,
);

let t0 = performance.now();
const model = initLlama(config, method, 1, { dtype });
let params: LlamaParams = model.params;
await tree.flatten(params)[0].data(); // wait for the uploads
console.log(
  `init: ${((performance.now() - t0) / 1000).toFixed(1)} s, live ${gb(memoryStats().liveBytes)}`,
);

const rng = new Rng(7);
const ids = Int32Array.from({ length: B * T + 1 }, () => rng.nextInt(config.vocabSize));
const batch = {
  inputs: tensor(ids.subarray(0, B * T), [B, T], "i32"),
  targets: tensor(ids.subarray(1), [B, T], "i32"),
};
const steady = memoryStats().liveBytes;
resetPeakBytes();
t0 = performance.now();
const leaves = tree.flatten(params);
const next: Tensor[] = [...leaves];
const tape = new Tape();
tape.watch(...leaves);
const before = tape.run(() => loss(model, params, batch, { recompute: f.recompute }));
tape.backward(before, leaves, {
  onGrad: (g, i) => {
    const p = leaves[i];
    // One f32 temporary (mapN reads bf16), rounded back to p's dtype.
    const moved = mapN("sgd", [p, g], "v0 - c0 * v1", undefined, [lr]);
    next[i] = convert(moved, p.dtype as "f32" | "bf16");
    moved.dispose();
    g.dispose();
    p.dispose();
  },
});
tape.dispose();
const loss0 = await before.item();
const stepSeconds = (performance.now() - t0) / 1000;
const peak = memoryStats().peakBytes;
before.dispose();
params = tree.unflatten(params, next);
const after = loss(model, params, batch);
console.log(
  `step: ${stepSeconds.toFixed(1)} s; loss ${loss0.toFixed(4)} -> ${
    (await after.item()).toFixed(4)
  } ` +
    `on the same batch (ln V = ${Math.log(config.vocabSize).toFixed(4)})`,
);
console.log(
  `memory: steady (params + buffers + batch) ${gb(steady)}, step peak ${gb(peak)} ` +
    `(+${gb(peak - steady)}); ${deviceInfo().kind} adapter`,
);
