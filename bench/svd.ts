/**
 * GaLore projector refresh time: readback (or GPU Gram), float64 Gram, eigensolver and upload, at
 * the 60M MLP shape (512×1376, r = 128) and the 350M MLP shape (1024×2736, r = 256), both
 * orientations, for the two Gram modes. Also the largest principal-angle sine between the two
 * modes' subspaces (how much f32 Gram rounding moves the projector on a Gaussian gradient, whose
 * spectrum has almost no gap at r: a worst case).
 *
 *   DENO_WEBGPU_BACKEND=vulkan deno run -A bench/svd.ts [--reps 2]
 */
import { init } from "../core/device.ts";
import { sync } from "../core/kernel.ts";
import { randomNormal, readAll, type Tensor } from "../core/tensor.ts";
import { matmul } from "../ops/matmul.ts";
import { computeProjectors } from "../optim/galore.ts";
import { gram, svdJacobi, symEig, transpose64 } from "../ops/svd.ts";

const reps = Number(Deno.args[Deno.args.indexOf("--reps") + 1] || 2) || 2;
const info = await init();
console.log(`adapter: ${info.kind}  reps: ${reps} (best of)`);

/** Best-of wall time in ms of an async function. */
async function time(fn: () => Promise<unknown>): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t = performance.now();
    await fn();
    best = Math.min(best, performance.now() - t);
  }
  return best;
}

/** max sin θ between the spans of two orthonormal bases stored as projectors. */
function maxSine(a: Float32Array, b: Float32Array, d: number, r: number, left: boolean): number {
  const at = (x: Float32Array, i: number, j: number) => left ? x[i * r + j] : x[j * d + i];
  const m = new Float64Array(r * r);
  for (let p = 0; p < r; p++) {
    for (let q = 0; q < r; q++) {
      let s = 0;
      for (let i = 0; i < d; i++) s += at(a, i, p) * at(b, i, q);
      m[p * r + q] = s;
    }
  }
  const { s } = svdJacobi(m, r, r);
  return Math.sqrt(Math.max(0, 1 - Math.min(1, s[r - 1]) ** 2));
}

const rows: string[][] = [[
  "shape",
  "r",
  "readback",
  "gram f64",
  "eig f64",
  "refresh cpu64",
  "gpu Gram+read",
  "refresh gpu32",
  "max sin θ",
]];
for (
  const [m, n, r] of [[512, 1376, 128], [1376, 512, 128], [1024, 2736, 256], [2736, 1024, 256]]
) {
  const g: Tensor = randomNormal([m, n], 0, 1, { seed: m + n });
  await sync();
  const k = Math.min(m, n);
  const left = m < n;
  let host: Float32Array = new Float32Array();
  const tRead = await time(async () => (host = (await readAll([g]))[0] as Float32Array));
  let c: Float64Array = new Float64Array();
  const tGram = await time(() =>
    Promise.resolve(c = left ? gram(host, m, n) : gram(transpose64(host, m, n), n, m))
  );
  const tEig = await time(() => Promise.resolve(symEig(c, k)));
  const tGpuGram = await time(async () => {
    const cg = left ? matmul(g, g, { transB: true }) : matmul(g, g, { transA: true });
    await readAll([cg]);
    cg.dispose();
  });
  let pc: Tensor[] = [], pg: Tensor[] = [];
  const tCpu = await time(async () => {
    pc.forEach((t) => t.dispose());
    pc = await computeProjectors([g], r, "cpu64");
    await sync();
  });
  const tGpu = await time(async () => {
    pg.forEach((t) => t.dispose());
    pg = await computeProjectors([g], r, "gpu32");
    await sync();
  });
  const [a, b] = await readAll([pc[0], pg[0]]);
  const sine = maxSine(a as Float32Array, b as Float32Array, k, r, left);
  const ms = (x: number) => `${x.toFixed(0)} ms`;
  rows.push([
    `${m}x${n}`,
    `${r}`,
    ms(tRead),
    ms(tGram),
    ms(tEig),
    ms(tCpu),
    ms(tGpuGram),
    ms(tGpu),
    sine.toExponential(1),
  ]);
  [g, ...pc, ...pg].forEach((t) => t.dispose());
}
const widths = rows[0].map((_, j) => Math.max(...rows.map((row) => row[j].length)));
for (const row of rows) console.log(row.map((x, j) => x.padStart(widths[j])).join("  "));
