/**
 * SDDMM benchmark at SLTrain's dV shape: out[k] = Σ_t a[t, row_k] · b[t, col_k] with
 * a = g [T, rows], b = x [T, cols], nnz = δ·rows·cols sorted unique indices.
 *
 * Variants (each checked against a float64 CPU dot product on 64 sampled entries):
 * * `sddmm (T-major in)`: the public op on [T, rows] / [T, cols] inputs (it transposes both, then
 *   runs the contiguous kernel); this is what SLTrain calls.
 * * `sddmm (aT, bT in)`: the contiguous kernel alone, inputs already [rows, T] / [cols, T].
 * * `transposes only`: the two transposes the first variant pays for.
 * * `strided direct`: one invocation per k reading two strided columns of the T-major inputs (the
 *   obvious kernel, kept here only to show why the op does not use it).
 * * `dense aᵀ·b + gather`: matmul TN to the dense [rows, cols] product, then gatherFlat.
 *
 * Timing: each rep records `inner` calls, then one sync; time = rep / inner; median of reps.
 * GFLOP/s counts the useful work 2·T·nnz for every variant.
 *
 * Usage: `deno run -A bench/sddmm.ts [T rows cols density]` (default 2048 1376 512 0.03).
 * @module
 */
import { init } from "../core/device.ts";
import { defineKernel } from "../core/define_kernel.ts";
import { sync } from "../core/kernel.ts";
import { readAll, Tensor, tensor } from "../core/tensor.ts";
import { gatherFlat, matmul, sddmm, transpose } from "../ops/mod.ts";

const [T, rows, cols] = [2048, 1376, 512].map((d, i) => Number(Deno.args[i] ?? d));
const density = Number(Deno.args[3] ?? 0.03);
const nnz = Math.floor(density * rows * cols);
const info = await init();

let seed = 12345;
const rnd = () => {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 2 ** 32;
};
const aData = Float32Array.from({ length: T * rows }, () => rnd() * 2 - 1);
const bData = Float32Array.from({ length: T * cols }, () => rnd() * 2 - 1);
const all = Uint32Array.from({ length: rows * cols }, (_, i) => i);
for (let i = 0; i < nnz; i++) {
  const j = i + Math.floor(rnd() * (all.length - i));
  [all[i], all[j]] = [all[j], all[i]];
}
const idxData = all.slice(0, nnz).sort();

const a = tensor(aData, [T, rows]);
const b = tensor(bData, [T, cols]);
const aT = transpose(a);
const bT = transpose(b);
const I = tensor(idxData, [nnz], "u32");
await sync();

// The strided layout read directly, without the transposes sddmm makes first.
const STRIDED_DIRECT = defineKernel({
  name: "sddmm_strided_bench",
  inputs: { a: "f32", b: "f32", idx: "u32" },
  outputs: { out: "f32" },
  uniforms: { tv: "u32", rows: "u32", cols: "u32" },
  grid: "flat",
  body: `  let j = idx[i];
  let r = j / u.cols;
  let c = j % u.cols;
  var acc = 0.0;
  for (var t = 0u; t < u.tv; t += 1u) { acc += a[t * u.rows + r] * b[t * u.cols + c]; }
  out[i] = acc;`,
});

function stridedDirect(a: Tensor, b: Tensor, idx: Tensor): Tensor {
  const out = Tensor.empty([nnz]);
  STRIDED_DIRECT({ a, b, idx, out }, { n: nnz, tv: T, rows, cols });
  return out;
}

/** Float64 check of 64 sampled outputs. */
function check(name: string, out: Float32Array): string {
  let worst = 0;
  for (let s = 0; s < 64; s++) {
    const k = Math.floor((s / 64) * nnz);
    const r = Math.floor(idxData[k] / cols), c = idxData[k] % cols;
    let ref = 0, mag = 0;
    for (let t = 0; t < T; t++) {
      const p = aData[t * rows + r] * bData[t * cols + c];
      ref += p;
      mag += Math.abs(p);
    }
    const err = Math.abs(out[k] - ref) / (mag + 1e-30);
    worst = Math.max(worst, err);
  }
  if (worst > 1e-5) throw new Error(`${name}: relative error ${worst} on sampled entries`);
  return worst.toExponential(1);
}

interface Variant {
  name: string;
  f: () => Tensor | null;
  inner: number;
  times: number[];
  err: string;
}
const variants: Variant[] = [];
const add = (name: string, f: () => Tensor | null, inner = 3) =>
  variants.push({ name, f, inner, times: [], err: "-" });

add("sddmm (T-major in)", () => sddmm(a, b, I));
add("sddmm (aT, bT in)", () => sddmm(aT, bT, I, { aT: true, bT: true }));
add("  same, group 1", () => sddmm(aT, bT, I, { aT: true, bT: true, group: 1 }));
add("  same, group 8", () => sddmm(aT, bT, I, { aT: true, bT: true, group: 8 }));
add("transposes only", () => {
  transpose(a).dispose();
  transpose(b).dispose();
  return null;
});
add("strided direct", () => stridedDirect(a, b, I), 1);
add("dense aᵀ·b + gather", () => {
  const d = matmul(a, b, { transA: true });
  const y = gatherFlat(d, I);
  d.dispose();
  return y;
}, 1);

const reps = Number(Deno.env.get("REPS") ?? 7);
console.log(
  `sddmm T=${T} rows=${rows} cols=${cols} density=${density} nnz=${nnz} on ${info.description}` +
    ` (${info.kind}); ${reps} reps, variants interleaved; each rep = inner calls + one sync (~11 ms)`,
);
for (const v of variants) {
  const y = v.f();
  if (y) {
    v.err = check(v.name, (await readAll([y]))[0] as Float32Array);
    y.dispose();
  } else await sync();
}
for (let r = 0; r < reps; r++) {
  for (const v of variants) {
    const t0 = performance.now();
    const made: Tensor[] = [];
    for (let i = 0; i < v.inner; i++) {
      const y = v.f();
      if (y) made.push(y);
    }
    await sync();
    v.times.push((performance.now() - t0) / v.inner);
    for (const y of made) y.dispose();
  }
}
for (const v of variants) {
  const times = v.times.sort((x, y) => x - y);
  const med = times[Math.floor(times.length / 2)];
  const gflops = (2 * T * nnz) / (med * 1e-3) / 1e9;
  console.log(
    `${v.name.padEnd(24)} median ${med.toFixed(2).padStart(8)} ms  ` +
      `(min ${times[0].toFixed(2).padStart(7)}, max ${times.at(-1)!.toFixed(2).padStart(7)})  ` +
      `${gflops.toFixed(2).padStart(6)} GFLOP/s  max rel err ${v.err}`,
  );
}
