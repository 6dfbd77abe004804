/**
 * Fixed cost per dispatch: a chain of tiny element-wise ops (64 floats, so the kernels themselves
 * cost next to nothing), recorded and run with one sync at the end. Prints the median over
 * `--reps` of microseconds per dispatch to record (the JS side: argument checks, bind groups,
 * uniforms) and to record and run (wall, the GPU's fixed cost included).
 *
 * Usage: `deno run -A bench/dispatch.ts [--ops 2000] [--reps 7]`
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { dispatchStats, sync } from "../core/kernel.ts";
import { tensor } from "../core/tensor.ts";
import { add, mul } from "../ops/mod.ts";

const { values: f } = parseArgs({
  options: { ops: { type: "string", default: "2000" }, reps: { type: "string", default: "7" } },
});
const info = await init();
const n = Number(f.ops);
const a = tensor(new Float32Array(64).fill(1));
const b = tensor(new Float32Array(64).fill(0.5));

async function once(): Promise<{ record: number; wall: number; dispatches: number }> {
  const d0 = dispatchStats().dispatches;
  const t0 = performance.now();
  let x = add(a, b);
  for (let i = 1; i < n; i++) {
    const y = i % 2 ? mul(x, b) : add(x, a);
    x.dispose();
    x = y;
  }
  const t1 = performance.now();
  await sync();
  const t2 = performance.now();
  x.dispose();
  const dispatches = dispatchStats().dispatches - d0;
  return { record: (t1 - t0) * 1e3 / dispatches, wall: (t2 - t0) * 1e3 / dispatches, dispatches };
}

await once(); // compile the pipelines
const runs = [];
for (let r = 0; r < Number(f.reps); r++) runs.push(await once());
const median = (v: number[]) => v.sort((p, q) => p - q)[Math.floor(v.length / 2)];
console.log(
  `${info.summary}\n${runs[0].dispatches} dispatches per run, median of ${runs.length}: ` +
    `${median(runs.map((r) => r.record)).toFixed(1)} µs to record, ` +
    `${median(runs.map((r) => r.wall)).toFixed(1)} µs to record and run, per dispatch`,
);
