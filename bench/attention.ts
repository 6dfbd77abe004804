/**
 * Causal self-attention with RoPE, forward + backward, two ways at a model's shapes: the fused
 * kernels (`flashAttention` on [B, T, H, Dh], RoPE folded in) against the composition it replaces
 * (split transposes, `rope`, `causalSelfAttention` with its [B, H, T, T] scores, merge transpose).
 *
 * A rep is `valueAndGrad(sum(y · w))` with respect to q, k, v and one `sync()`; two warmup reps
 * compile; the two run round-robin (so load from other processes hits both alike) and the table
 * shows medians of wall time and of the process's CPU time (llvmpipe's threads included: on a
 * machine shared with other work, CPU time moves much less than wall time), dispatches per rep
 * and, with `--profile`, GPU time per kernel of one rep each.
 *
 * Usage: `deno run -A bench/attention.ts [--batch 8] [--seq 256] [--heads 8] [--dh 64] [--reps 7]
 *   [--target auto|cpu|gpu] [--profile]`
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { deviceInfo, init } from "../core/device.ts";
import { dispatchStats, startProfile, stopProfile, sync } from "../core/kernel.ts";
import { valueAndGrad } from "../core/tape.ts";
import { randomUniform, type Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { causalSelfAttention, mul, rope, sum, transpose } from "../ops/mod.ts";
import { flashAttention } from "../ops/flash_attention.ts";
import { type FusedTarget, setFusedTarget } from "../ops/fused_target.ts";

const { values: f } = parseArgs({
  options: {
    batch: { type: "string", default: "8" },
    seq: { type: "string", default: "256" },
    heads: { type: "string", default: "8" },
    dh: { type: "string", default: "64" },
    reps: { type: "string", default: "7" },
    target: { type: "string", default: "auto" },
    profile: { type: "boolean", default: false },
  },
});
await init();
setFusedTarget(f.target as FusedTarget);
const [B, T, H, DH, reps] = [f.batch, f.seq, f.heads, f.dh, f.reps].map(Number);
const shape = [B, T, H, DH];
const [q, k, v, w] = [1, 2, 3, 4].map((seed) => randomUniform(shape, -1, 1, { seed }));

const split = (x: Tensor) => transpose(x, [0, 2, 1, 3]);
const ways: Record<string, (p: Tensor[]) => Tensor> = {
  composition: ([a, b, c]) =>
    transpose(causalSelfAttention(rope(split(a)), rope(split(b)), split(c)), [0, 2, 1, 3]),
  fused: ([a, b, c]) => flashAttention(a, b, c, { ropeBase: 10000 }),
};
const step = (fn: (p: Tensor[]) => Tensor) => {
  const { value, grads } = valueAndGrad((p: Tensor[]) => sum(mul(fn(p), w)))([q, k, v]);
  tree.dispose([value, grads]);
};

const times: Record<string, number[]> = { composition: [], fused: [] };
const cpu: Record<string, number[]> = { composition: [], fused: [] };
const dispatches: Record<string, number> = {};
for (let i = 0; i < reps + 2; i++) {
  for (const [name, fn] of Object.entries(ways)) {
    const d0 = dispatchStats().dispatches;
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    step(fn);
    await sync();
    const c = process.cpuUsage(c0);
    if (i >= 2) {
      times[name].push(performance.now() - t0);
      cpu[name].push((c.user + c.system) / 1000);
    }
    dispatches[name] = dispatchStats().dispatches - d0;
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
console.log(
  `# causal attention + RoPE, fwd + bwd, [B, T, H, Dh] = [${shape}], ${deviceInfo().description}\n`,
);
console.log("| way | wall ms (median) | CPU ms (median) | dispatches |\n|---|---|---|---|");
for (const name of Object.keys(ways)) {
  console.log(
    `| ${name} | ${median(times[name]).toFixed(1)} | ${median(cpu[name]).toFixed(1)} | ${
      dispatches[name]
    } |`,
  );
}
const ratio = (xs: Record<string, number[]>) =>
  (median(xs.fused) / median(xs.composition)).toFixed(2);
console.log(`\nfused / composition: wall ${ratio(times)}x, CPU ${ratio(cpu)}x`);
if (f.profile) {
  for (const [name, fn] of Object.entries(ways)) {
    startProfile();
    step(fn);
    const prof = await stopProfile();
    console.log(`\n${name}: GPU ${prof.reduce((a, e) => a + e.ms, 0).toFixed(1)} ms`);
    for (const e of prof) {
      console.log(`  ${e.name.padEnd(28)} ${String(e.count).padStart(3)}× ${e.ms.toFixed(2)} ms`);
    }
  }
}
