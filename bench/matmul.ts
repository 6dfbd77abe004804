/**
 * `deno task bench`: matmul GFLOP/s of our kernels against TF.js (webgpu, wasm) and jax-js on the
 * same adapter in the same run, a training-shaped linear layer (forward, dX, dW in one submit), and
 * the fixed costs of a dispatch and of a GPU-to-JS sync.
 *
 * Protocol for our kernels (the same as bench/peers.ts): one warmup (compiles the pipeline), then
 * reps of `inner` matmuls recorded into one submit and one sync; time = median over reps of rep
 * time / inner, where inner makes a rep last about `targetRepMs`.
 *
 * `--compare=K1,K2` adds a column per kernel family forced with `setMatmulFamily` (default
 * `register`: every invocation loads its own operands, no subgroups, no textures), its reps
 * alternating with the default's, so each ratio is a same-run one.
 *
 * A last table times split-K against the unsplit product (`setMatmulSplitK`).
 *
 * Shapes: the issue's large ones, the `tiny` model's (2048 tokens, d 128, FFN 352; forward NT,
 * dX NN, dW TN), SLTrain's low-rank factors (r = 32) and batched attention ([B·H, T, T]·[B·H, T,
 * Dh]); peers run on the 2-D shapes only.
 *
 * Flags: `--quick` (fewer shapes and reps), `--no-peers`, `--reps N`, `--compare K1,K2`,
 * `--only SUBSTRING` (shapes whose label contains it).
 */
import { parseArgs } from "node:util";
import { deviceInfo, init } from "../core/device.ts";
import { sync } from "../core/kernel.ts";
import { randomUniform, tensor } from "../core/tensor.ts";
import {
  addScalar,
  matmul,
  type MatmulFamily,
  setMatmulFamily,
  setMatmulSplitK,
  setMatmulTextureThreshold,
} from "../ops/mod.ts";
import {
  benchPeerMatmul,
  closePeers,
  type Layout,
  type PeerName,
  type PeerResult,
  PEERS,
  peerVersions,
} from "./peers.ts";

const { values: flags } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    "no-peers": { type: "boolean", default: false },
    reps: { type: "string", default: "5" },
    compare: { type: "string", default: "register" },
    only: { type: "string", default: "" },
  },
});
const reps = Number(flags.reps);
const targetRepMs = 400;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * GFLOP/s of our matmul with the default kernel table and with each kernel family in `compare`
 * forced, reps alternating between them so a busy machine skews all alike. A forced family also
 * switches the texture path off, so `register` is the plain storage-buffer kernel.
 */
async function timeOurs(
  batch: number,
  m: number,
  k: number,
  n: number,
  layout: Layout,
  compare: MatmulFamily[],
): Promise<number[]> {
  const tA = layout === "TN";
  const tB = layout === "NT";
  const lead = batch > 1 ? [batch] : [];
  const a = randomUniform([...lead, ...(tA ? [k, m] : [m, k])], -1, 1, { seed: 1 });
  const b = randomUniform([...lead, ...(tB ? [n, k] : [k, n])], -1, 1, { seed: 2 });
  const once = async (inner: number, kernel: MatmulFamily) => {
    const prevKernel = setMatmulFamily(kernel);
    const prevTex = kernel === "auto" ? null : setMatmulTextureThreshold(Infinity);
    const t0 = performance.now();
    for (let i = 0; i < inner; i++) matmul(a, b, { transA: tA, transB: tB }).dispose();
    await sync();
    const ms = performance.now() - t0;
    setMatmulFamily(prevKernel);
    if (prevTex !== null) setMatmulTextureThreshold(prevTex);
    return ms;
  };
  const kernels: MatmulFamily[] = ["auto", ...compare];
  for (const kn of kernels) await once(1, kn); // compile
  const probe = await once(1, "auto");
  const inner = Math.max(1, Math.min(64, Math.round(targetRepMs / probe)));
  const times: number[][] = kernels.map(() => []);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < kernels.length; i++) times[i].push((await once(inner, kernels[i])) / inner);
  }
  a.dispose();
  b.dispose();
  const flop = 2 * batch * m * n * k;
  return times.map((t) => flop / (median(t) * 1e6));
}

/**
 * GFLOP/s of Aᵀ·B with few outputs and a long K, with split-K (the default) and without, reps
 * alternating.
 */
async function splitK(m: number, k: number, n: number): Promise<[number, number]> {
  const a = randomUniform([k, m], -1, 1, { seed: 1 });
  const b = randomUniform([k, n], -1, 1, { seed: 2 });
  const once = async (inner: number, split: boolean) => {
    const prev = setMatmulSplitK(split ? navigator.hardwareConcurrency || 2 : 0);
    const t0 = performance.now();
    for (let i = 0; i < inner; i++) matmul(a, b, { transA: true }).dispose();
    await sync();
    setMatmulSplitK(prev);
    return performance.now() - t0;
  };
  await once(1, true);
  await once(1, false);
  const inner = Math.max(1, Math.min(64, Math.round(targetRepMs / (await once(1, true)))));
  const on: number[] = [], off: number[] = [];
  for (let r = 0; r < reps; r++) {
    on.push((await once(inner, true)) / inner);
    off.push((await once(inner, false)) / inner);
  }
  a.dispose();
  b.dispose();
  const flop = 2 * m * n * k;
  return [flop / (median(on) * 1e6), flop / (median(off) * 1e6)];
}

async function trainingStep(): Promise<{ ms: number; gflops: number; parts: number[] }> {
  const [t, din, dout] = [2048, 512, 1376];
  const x = randomUniform([t, din], -1, 1, { seed: 3 });
  const w = randomUniform([dout, din], -1, 1, { seed: 4 });
  const dy = randomUniform([t, dout], -1, 1, { seed: 5 });
  const flop = 2 * t * din * dout;
  const step = async () => {
    const t0 = performance.now();
    const y = matmul(x, w, { transB: true }); // forward x·Wᵀ
    const dx = matmul(dy, w); // dX = dY·W
    const dw = matmul(dy, x, { transA: true }); // dW = dYᵀ·x
    await sync();
    for (const z of [y, dx, dw]) z.dispose();
    return performance.now() - t0;
  };
  await step();
  const times: number[] = [];
  for (let r = 0; r < reps; r++) times.push(await step());
  const ms = median(times);
  const parts: number[] = [];
  for (
    const [a, b, o] of [[x, w, { transB: true }], [dy, w, {}], [dy, x, { transA: true }]] as const
  ) {
    const ts: number[] = [];
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      matmul(a, b, o).dispose();
      await sync();
      ts.push(performance.now() - t0);
    }
    parts.push(flop / (median(ts) * 1e6));
  }
  for (const z of [x, w, dy]) z.dispose();
  return { ms, gflops: (3 * flop) / (ms * 1e6), parts };
}

async function overheads(): Promise<{ dispatchUs: number; syncMs: number }> {
  const x = tensor([1, 2, 3, 4]);
  addScalar(x, 1).dispose();
  await sync();
  const ds: number[] = [];
  for (let r = 0; r < 5; r++) {
    const n = 1000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) addScalar(x, 1).dispose();
    await sync();
    ds.push(((performance.now() - t0) * 1000) / n);
  }
  const ss: number[] = [];
  for (let r = 0; r < 10; r++) {
    const t0 = performance.now();
    await x.data();
    ss.push(performance.now() - t0);
  }
  x.dispose();
  return { dispatchUs: median(ds), syncMs: median(ss) };
}

const fmt = (v: number | undefined, d = 2) => (v === undefined ? "–" : v.toFixed(d));

await init();
const info = deviceInfo();
console.log(
  `# sltrain matmul benchmark\n\nadapter: ${info.description} (${info.kind}); reps ${reps}; ${
    new Date().toISOString()
  }\n`,
);

// [label, batch, M, K, N, layout]; the label names the role of the tiny-model shapes.
type Shape = [string, number, number, number, number, Layout];
const big: Shape[] = [
  ["256³", 1, 256, 256, 256, "NN"],
  ["512³", 1, 512, 512, 512, "NN"],
  ["1024³", 1, 1024, 1024, 1024, "NN"],
  ["1024³", 1, 1024, 1024, 1024, "NT"],
  ["1024³", 1, 1024, 1024, 1024, "TN"],
  ["2048³", 1, 2048, 2048, 2048, "NN"],
  ["2048×512×1376", 1, 2048, 512, 1376, "NN"],
  ["2048×512×1376", 1, 2048, 512, 1376, "NT"],
  ["2048×512×1376", 1, 2048, 512, 1376, "TN"],
];
const tiny: Shape[] = [
  ["tiny up x·W1ᵀ 2048×128×352", 1, 2048, 128, 352, "NT"],
  ["tiny down h·W2ᵀ 2048×352×128", 1, 2048, 352, 128, "NT"],
  ["tiny qkvo x·Wᵀ 2048×128×128", 1, 2048, 128, 128, "NT"],
  ["tiny dX up g·W1 2048×352×128", 1, 2048, 352, 128, "NN"],
  ["tiny dX down g·W2 2048×128×352", 1, 2048, 128, 352, "NN"],
  ["tiny dW up gᵀ·x 352×2048×128", 1, 352, 2048, 128, "TN"],
  ["tiny dW down gᵀ·h 128×2048×352", 1, 128, 2048, 352, "TN"],
  ["tiny dW qkvo gᵀ·x 128×2048×128", 1, 128, 2048, 128, "TN"],
  ["low-rank x·Aᵀ 2048×512×32", 1, 2048, 512, 32, "NT"],
  ["low-rank u·Bᵀ 2048×32×1376", 1, 2048, 32, 1376, "NT"],
  ["low-rank W = B·A 1376×32×512", 1, 1376, 32, 512, "NN"],
  ["low-rank dA gᵀ·x 32×2048×512", 1, 32, 2048, 512, "TN"],
  ["low-rank dB gᵀ·u 1376×2048×32", 1, 1376, 2048, 32, "TN"],
  ["attn scores q·kᵀ 32×[128×32×128]", 32, 128, 32, 128, "NT"],
  ["attn P·V 32×[128×128×32]", 32, 128, 128, 32, "NN"],
  ["attn dP dO·Vᵀ 32×[128×32×128]", 32, 128, 32, 128, "NT"],
  ["attn dV Pᵀ·dO 32×[128×128×32]", 32, 128, 128, 32, "TN"],
];
const shapes: Shape[] = (flags.quick ? [big[2], big[7], tiny[0], tiny[5]] : [...big, ...tiny])
  .filter(([label]) => label.includes(flags.only));
const compare = flags.compare ? flags.compare.split(",") as MatmulFamily[] : [];

const peers = flags["no-peers"] ? [] : PEERS;
const row = (cells: string[]) => console.log(`| ${cells.join(" | ")} |`);
row([
  "shape M×K×N",
  "layout",
  "ours GFLOP/s",
  ...compare,
  ...peers.flatMap((p) => [p, `ours/${p}`]),
]);
row(Array(3 + compare.length + 2 * peers.length).fill("---"));
const notes: string[] = [];
// A peer's best speed so far predicts its time on bigger shapes, so hopeless cells are skipped.
const best = new Map<string, number>();
for (const [label, batch, m, k, n, layout] of shapes) {
  const [ours, ...forced] = await timeOurs(batch, m, k, n, layout, compare);
  const cells: string[] = [];
  for (const p of batch > 1 ? [] : peers) {
    const key = `${p}/${layout}`;
    const r: PeerResult = await benchPeerMatmul(p as PeerName, m, k, n, layout, {
      reps,
      maxSeconds: 20,
      expectGflops: best.get(key),
    });
    if (r.error) {
      cells.push("–", "–");
      notes.push(`${p} ${label} ${layout}: ${r.error}`);
    } else {
      best.set(key, Math.max(best.get(key) ?? 0, r.gflops!));
      cells.push(fmt(r.gflops), `${fmt(ours / r.gflops!)}×`);
      if (r.note && !notes.some((x) => x.startsWith(`${p}:`))) notes.push(`${p}: ${r.note}`);
    }
  }
  if (batch > 1) { for (const _ of peers) cells.push("–", "–"); }
  row([label, layout, fmt(ours), ...forced.map((f) => fmt(f)), ...cells]);
}
if (notes.length) console.log(`\n${notes.map((x) => `- ${x}`).join("\n")}`);
if (peers.length) {
  console.log(`\npeer versions: ${JSON.stringify(await peerVersions())}`);
  closePeers();
}

console.log(
  `\n## Split-K: Aᵀ·B with few outputs over a long K (weight gradients of small layers)\n`,
);
console.log(`| M×K×N | GFLOP/s split | GFLOP/s unsplit | split/unsplit |`);
console.log(`|---|---|---|---|`);
for (const [m, k, n] of [[32, 2048, 32], [64, 4096, 32], [16, 8192, 16]]) {
  const [on, off] = await splitK(m, k, n);
  console.log(`| ${m}×${k}×${n} | ${fmt(on)} | ${fmt(off)} | ${fmt(on / off)}× |`);
}

const ts = await trainingStep();
console.log(
  `\n## Training-shaped linear layer: x[2048, 512]·Wᵀ, W[1376, 512]; forward + dX + dW in one submit\n`,
);
console.log(
  `| step time (ms) | GFLOP/s | fwd NT / dX NN / dW TN GFLOP/s (each alone, incl. one sync) |`,
);
console.log(`|---|---|---|`);
console.log(
  `| ${fmt(ts.ms, 1)} | ${fmt(ts.gflops)} | ${ts.parts.map((v) => fmt(v)).join(" / ")} |`,
);

const oh = await overheads();
console.log(
  `\n## Fixed costs\n\n| per dispatch (µs, 1000 tiny dispatches in one submit) | per sync (ms, 16-byte readback) |`,
);
console.log(`|---|---|`);
console.log(`| ${fmt(oh.dispatchUs, 1)} | ${fmt(oh.syncMs, 1)} |`);
