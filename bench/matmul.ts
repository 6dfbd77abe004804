/**
 * `deno task bench`: matmul GFLOP/s of our kernels against TF.js (webgpu, wasm) and jax-js on the
 * same adapter in the same run, a training-shaped linear layer (forward, dX, dW in one submit), and
 * the fixed costs of a dispatch and of a GPU-to-JS sync.
 *
 * Protocol for our kernels (the same as bench/peers.ts): one warmup (compiles the pipeline), then
 * reps of `inner` matmuls recorded into one submit and one sync; time = median over reps of rep
 * time / inner, where inner makes a rep last about `targetRepMs`.
 *
 * "ours, storage" is the same op with the texture path for A and the subgroup kernel switched off
 * (see `setMatmulTextureThreshold`, `setMatmulSubgroups`), its reps alternating with the default's,
 * so the gain of either is a same-run ratio.
 *
 * Flags: `--quick` (fewer shapes and reps), `--no-peers`, `--reps N`.
 */
import { parseArgs } from "node:util";
import { deviceInfo, init } from "../core/device.ts";
import { sync } from "../core/kernel.ts";
import { randomUniform, tensor } from "../core/tensor.ts";
import { addScalar, matmul, setMatmulSubgroups, setMatmulTextureThreshold } from "../ops/mod.ts";
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
  },
});
const reps = Number(flags.reps);
const targetRepMs = 400;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * GFLOP/s of our matmul with the texture path at its default threshold and switched off, reps
 * alternating between the two so a busy machine skews both alike.
 */
async function timeOurs(
  m: number,
  k: number,
  n: number,
  layout: Layout,
): Promise<{ ours: number; storage: number }> {
  const tA = layout === "TN";
  const tB = layout === "NT";
  const a = randomUniform(tA ? [k, m] : [m, k], -1, 1, { seed: 1 });
  const b = randomUniform(tB ? [n, k] : [k, n], -1, 1, { seed: 2 });
  const once = async (inner: number, storageOnly: boolean) => {
    const prev = storageOnly ? setMatmulTextureThreshold(Infinity) : 0;
    const prevSg = storageOnly ? setMatmulSubgroups(false) : true;
    const t0 = performance.now();
    for (let i = 0; i < inner; i++) matmul(a, b, { transA: tA, transB: tB }).dispose();
    await sync();
    const ms = performance.now() - t0;
    if (storageOnly) {
      setMatmulTextureThreshold(prev);
      setMatmulSubgroups(prevSg);
    }
    return ms;
  };
  await once(1, false); // compile
  await once(1, true);
  const probe = await once(1, false);
  const inner = Math.max(1, Math.min(16, Math.round(targetRepMs / probe)));
  const times: number[] = [], storageTimes: number[] = [];
  for (let r = 0; r < reps; r++) {
    times.push((await once(inner, false)) / inner);
    storageTimes.push((await once(inner, true)) / inner);
  }
  a.dispose();
  b.dispose();
  const flop = 2 * m * n * k;
  return { ours: flop / (median(times) * 1e6), storage: flop / (median(storageTimes) * 1e6) };
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

const shapes: [string, number, number, number, Layout][] = flags.quick
  ? [["1024³", 1024, 1024, 1024, "NN"], ["2048×512×1376", 2048, 512, 1376, "NT"]]
  : [
    ["256³", 256, 256, 256, "NN"],
    ["512³", 512, 512, 512, "NN"],
    ["1024³", 1024, 1024, 1024, "NN"],
    ["1024³", 1024, 1024, 1024, "NT"],
    ["1024³", 1024, 1024, 1024, "TN"],
    ["2048³", 2048, 2048, 2048, "NN"],
    ["2048×512×1376", 2048, 512, 1376, "NN"],
    ["2048×512×1376", 2048, 512, 1376, "NT"],
    ["2048×512×1376", 2048, 512, 1376, "TN"],
  ];

const peers = flags["no-peers"] ? [] : PEERS;
console.log(
  `| shape M×K×N | layout | ours GFLOP/s | ours, storage | ${
    peers.map((p) => `${p} | ours/${p}`).join(" | ")
  } |`,
);
console.log(`|---|---|---|---|${peers.map(() => "---|---|").join("")}`);
const notes: string[] = [];
// A peer's best speed so far predicts its time on bigger shapes, so hopeless cells are skipped.
const best = new Map<string, number>();
for (const [label, m, k, n, layout] of shapes) {
  const { ours, storage: storageOnly } = await timeOurs(m, k, n, layout);
  const cells: string[] = [];
  for (const p of peers) {
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
  console.log(
    `| ${label} | ${layout} | ${fmt(ours)} | ${fmt(storageOnly)} | ${cells.join(" | ")} |`,
  );
}
if (notes.length) console.log(`\n${notes.map((x) => `- ${x}`).join("\n")}`);
if (peers.length) {
  console.log(`\npeer versions: ${JSON.stringify(await peerVersions())}`);
  closePeers();
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
