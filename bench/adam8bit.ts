/**
 * One optimizer update (+ `applyUpdates`) on a single large parameter: fused AdamW with f32
 * moments against 8-bit moments, f32 and bf16 weights, median ms over interleaved repetitions.
 *
 * Usage: `deno run -A bench/adam8bit.ts [--size 4194304] [--reps 9]`
 * @module
 */
import { parseArgs } from "node:util";
import { deviceInfo, init } from "../core/device.ts";
import { sync } from "../core/kernel.ts";
import { randomNormal, type Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { adamw, adamw8bit, applyUpdates, type GradientTransformation } from "../optim/mod.ts";

const { values: f } = parseArgs({
  options: {
    size: { type: "string", default: String(4 * 1024 * 1024) },
    reps: { type: "string", default: "9" },
  },
});
await init();
const [n, reps] = [Number(f.size), Number(f.reps)];
console.log(`# optimizer update of one [${n}] parameter, ${deviceInfo().description}\n`);
console.log("| optimizer | weights | ms/update (median) | state bytes |");
console.log("|---|---|---|---|");
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const cases: [string, GradientTransformation, "f32" | "bf16"][] = [
  ["adamw", adamw({ lr: 1e-3, weightDecay: 0.1 }), "f32"],
  ["adamw8bit", adamw8bit({ lr: 1e-3, weightDecay: 0.1 }), "f32"],
  ["adamw", adamw({ lr: 1e-3, weightDecay: 0.1 }), "bf16"],
  ["adamw8bit", adamw8bit({ lr: 1e-3, weightDecay: 0.1 }), "bf16"],
];
const runs = cases.map(([, opt, dtype]) => {
  const params: Tensor[] = [randomNormal([n], 0, 0.02, { seed: 1, dtype })];
  return { params, state: opt.init(params), times: [] as number[] };
});
const grad = (dtype: "f32" | "bf16") => randomNormal([n], 0, 1, { seed: 2, dtype });
// Interleaved, so a busy machine slows every case alike; the first round compiles.
for (let rep = 0; rep <= reps; rep++) {
  for (const [k, [, opt, dtype]] of cases.entries()) {
    const r = runs[k];
    const g = [grad(dtype)];
    await sync();
    const t0 = performance.now();
    const u = await opt.update(g, r.state, r.params);
    r.state = u.state;
    r.params = applyUpdates(r.params, u.updates);
    await sync();
    if (rep > 0) r.times.push(performance.now() - t0);
  }
}
cases.forEach(([name, , dtype], k) => {
  const r = runs[k];
  console.log(
    `| ${name} | ${dtype} | ${median(r.times).toFixed(1)} | ${tree.bytes(r.state)} |`,
  );
  tree.dispose([r.params, r.state]);
});
