/**
 * One training-shaped linear layer, forward + backward, three ways: dense (matmul + its VJP),
 * low-rank (r = 128, α = 32) and SLTrain (r = 128, δ = 0.03, α = 32), at x [2048, 512] → [2048, 1376]
 * (LLaMA-60M's MLP up-projection at 2048 tokens).
 *
 * A rep is `valueAndGrad(sum(y · w))` over every input (x included, so all three compute dx) and
 * one `sync()`; two warmup reps compile the pipelines; reps run the variants round-robin (so load
 * from other processes hits all alike) and the table shows each one's median over `--reps` (>= 5).
 * "GFLOP" is the work each variant actually does; "dense-eq GFLOP/s" divides the dense layer's
 * 8.66 GFLOP by the variant's time, i.e. how fast it delivers a layer of that shape.
 *
 * `--breakdown` also times SLTrain's parts (W build, forward, backward, SDDMM) in isolation.
 *
 * Usage: `deno run -A bench/layer.ts [--reps 7] [--breakdown]`.
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { sync } from "../core/kernel.ts";
import { valueAndGrad } from "../core/tape.ts";
import { randomUniform, type Tensor, tensor } from "../core/tensor.ts";
import {
  lowRankLinear,
  matmul,
  mul,
  sampleSupport,
  sddmm,
  sltrainLinear,
  sum,
} from "../ops/mod.ts";

const { values: flags } = parseArgs({
  options: { reps: { type: "string", default: "7" }, breakdown: { type: "boolean" } },
});
const reps = Math.max(5, Number(flags.reps));
const [T, IN, OUT, R, DELTA, ALPHA] = [2048, 512, 1376, 128, 0.03, 32];
const s = ALPHA / R;
const info = await init();

const x = randomUniform([T, IN], -1, 1, { seed: 1 });
const w = randomUniform([T, OUT], -1, 1, { seed: 2 });
const W = randomUniform([OUT, IN], -0.05, 0.05, { seed: 3 });
const B = randomUniform([OUT, R], -0.05, 0.05, { seed: 4 });
const A = randomUniform([R, IN], -0.05, 0.05, { seed: 5 });
const idx = sampleSupport(OUT, IN, DELTA, 6);
const nnz = idx.length;
const V = randomUniform([nnz], -0.05, 0.05, { seed: 7 });
const I = tensor(idx, [nnz], "u32");
await sync();

function median(xs: number[]): number {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[v.length >> 1] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

/** ms of one call of `f` (which returns what to dispose) and one sync. */
async function once(f: () => Tensor[]): Promise<number> {
  const t0 = performance.now();
  const outs = f();
  await sync();
  const ms = performance.now() - t0;
  for (const t of outs) t.dispose();
  return ms;
}

/** Median ms of `f` over reps after two warmup calls. */
async function time(f: () => Tensor[]): Promise<number> {
  for (let r = 0; r < 2; r++) await once(f);
  const times: number[] = [];
  for (let r = 0; r < reps; r++) times.push(await once(f));
  return median(times);
}

function step(params: Tensor[], layer: (p: Tensor[]) => Tensor): () => Tensor[] {
  const f = valueAndGrad((p: Tensor[]) => sum(mul(layer(p), w)));
  return () => {
    const { value, grads } = f(params);
    return [value, ...grads];
  };
}

const mm = 2 * T * IN * OUT;
const lowRankFlop = 3 * 2 * T * R * (IN + OUT);
const buildFlop = 2 * OUT * R * IN;
const variants = [
  {
    name: "dense",
    flop: 3 * mm,
    run: step([x, W], ([x, W]) => matmul(x, W, { transB: true })),
  },
  {
    name: `low-rank (r=${R})`,
    flop: lowRankFlop,
    run: step([x, B, A], ([x, B, A]) => lowRankLinear(x, B, A, s)),
  },
  {
    name: `SLTrain (r=${R}, δ=${DELTA})`,
    // 2 W builds, y, dx, the four skinny factor products, the SDDMM.
    flop: 2 * buildFlop + 2 * mm + (4 / 3) * lowRankFlop + 2 * T * nnz,
    run: step([x, B, A, V], ([x, B, A, V]) => sltrainLinear(x, B, A, V, I, s)),
  },
];

console.log(
  `layer x [${T}, ${IN}] → [${T}, ${OUT}], fwd+bwd, median of ${reps} reps (1 sync each) on ` +
    `${info.description} (${info.kind}); α=${ALPHA}, nnz=${nnz}\n`,
);
console.log("| variant | ms | GFLOP | GFLOP/s | dense-eq GFLOP/s | × dense |");
console.log("|---|---|---|---|---|---|");
// Round-robin over the variants inside each rep, so load from other processes hits all alike.
for (const v of variants) for (let r = 0; r < 2; r++) await once(v.run);
const times = variants.map(() => [] as number[]);
const ratios: number[] = [];
for (let r = 0; r < reps; r++) {
  for (let k = 0; k < variants.length; k++) times[k].push(await once(variants[k].run));
  ratios.push(times[2][r] / times[0][r]);
}
const denseMs = median(times[0]);
variants.forEach((v, k) => {
  const ms = median(times[k]);
  console.log(
    `| ${v.name} | ${ms.toFixed(0)} | ${(v.flop / 1e9).toFixed(2)} | ` +
      `${(v.flop / ms / 1e6).toFixed(1)} | ${(3 * mm / ms / 1e6).toFixed(1)} | ` +
      `${(ms / denseMs).toFixed(2)} |`,
  );
});
console.log(
  `\nSLTrain/dense per rep: ${ratios.map((x) => x.toFixed(2)).join(" ")} ` +
    `(median ${median(ratios).toFixed(2)})`,
);

if (flags.breakdown) {
  const sync1 = await time(() => []);
  console.log(
    `\nSLTrain parts (each: median of ${reps} reps incl. one ~${sync1.toFixed(0)} ms sync):`,
  );
  const gy = randomUniform([T, OUT], -1, 1, { seed: 8 });
  const parts: [string, () => Tensor[]][] = [
    ["forward only (no tape)", () => [sltrainLinear(x, B, A, V, I, s)]],
    ["dense forward only", () => [matmul(x, W, { transB: true })]],
    ["W build (B·A) matmul", () => [matmul(B, A)]],
    ["sddmm(g, x) over I", () => [sddmm(gy, x, I)]],
    ["dB, dA factor products", () => {
      const xA = matmul(x, A, { transB: true });
      const gB = matmul(gy, B);
      const out = [matmul(gy, xA, { transA: true }), matmul(gB, x, { transA: true })];
      xA.dispose();
      gB.dispose();
      return out;
    }],
  ];
  for (const [name, f] of parts) {
    console.log(`  ${name.padEnd(26)} ${(await time(f)).toFixed(0)} ms`);
  }
  gy.dispose();
}
