/**
 * The strided-copy kernel behind the shape ops (internal: not re-exported from `ops/mod.ts`).
 * Copies here are never recorded on a tape, so other op families can use them for layout changes
 * that are not part of the differentiated graph.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { collapseAxes, sizeOf, stridesOf } from "../core/shape.ts";
import { Tensor } from "../core/tensor.ts";

/**
 * A copy between a contiguous side and a strided side (`off + Σ coord_d · stride_d`, coordinates
 * in `dims`). `gather` reads strided and writes contiguous; `scatter` the reverse. Each invocation
 * copies a run of `v` elements along the innermost axis, so the integer divisions that locate an
 * element (slow on CPU adapters: one per axis, not vectorized) are paid once per run. Only the rank
 * and `v` are baked in; sizes travel in the uniform so random test shapes share pipelines. Words
 * are copied as u32, so every dtype works.
 */
const stridedKernel = kernelFamily(
  (name: string, rank: number, mode: "gather" | "scatter", v: number) => {
    const lines: string[] = [];
    for (let d = rank - 2; d >= 1; d--) {
      lines.push(`  s += (r % u_dims(${d}u)) * u_strides(${d}u); r = r / u_dims(${d}u);`);
    }
    if (rank >= 2) lines.push(`  s += r * u_strides(0u);`);
    const inner = `u_dims(${rank - 1}u)`;
    return defineKernel({
      name,
      inputs: { src: "u32" },
      outputs: { dst: "u32" },
      uniforms: { off: "u32", runs: "u32", dims: ["u32", rank], strides: ["u32", rank] },
      grid: "flat",
      helpers: `const V = ${v}u;`,
      body: `  let row = i / u.runs;
  let c0 = (i % u.runs) * V;
  let si = u_strides(${rank - 1}u);
  let o = row * ${inner} + c0;
  var r = row;
  var s = u.off + c0 * si;
${lines.join("\n")}
  let m = min(V, ${inner} - c0);
  for (var e = 0u; e < m; e += 1u) { ${
        mode === "gather" ? "dst[o + e] = src[s + e * si];" : "dst[s + e * si] = src[o + e];"
      } }`,
    });
  },
);

/**
 * Records a strided copy. gather: `dst[i] = src[off + Σ coord_d(i) · strides_d]` for i over
 * `dims`; scatter: `dst[off + Σ coord_d(i) · strides_d] = src[i]`.
 */
export function stridedCopy(
  name: string,
  mode: "gather" | "scatter",
  src: Tensor,
  dst: Tensor,
  dims: readonly number[],
  strides: readonly number[],
  off: number,
): void {
  const n = sizeOf(dims);
  if (n === 0) return;
  const c = collapseAxes(dims, [strides]);
  const [cd, cs] = c.dims.length > 0 ? [c.dims, c.strides[0]] : [[1], [0]];
  const inner = cd[cd.length - 1];
  const v = inner >= 8 ? 8 : inner >= 4 ? 4 : 1;
  const runs = Math.ceil(inner / v);
  // Raw bindings: the words are copied whatever the dtype.
  stridedKernel(name, cd.length, mode, v)({ src: src.binding(), dst: dst.binding() }, {
    n: (n / inner) * runs,
    off,
    runs,
    dims: cd,
    strides: cs,
  });
}

/** `x` with its axes permuted by `perm` (a copy; not recorded on any tape). */
export function permuteCopy(x: Tensor, perm: readonly number[]): Tensor {
  const outShape = perm.map((a) => x.shape[a]);
  const xs = stridesOf(x.shape);
  const out = Tensor.empty(outShape, x.dtype);
  stridedCopy("transpose", "gather", x, out, outShape, perm.map((a) => xs[a]), 0);
  return out;
}

// acc[t, c0 + j] += part[t, j] over a [T, cols] part and a [T, width] accumulator.
const ADD_COLUMNS = defineKernel({
  name: "add_columns",
  inputs: { part: "f32" },
  outputs: { acc: "f32" },
  uniforms: { cols: "u32", width: "u32", c0: "u32" },
  grid: "flat",
  body: `  let t = i / u.cols;
  let j = i - t * u.cols;
  let o = t * u.width + u.c0 + j;
  store_acc(o, load_acc(o) + load_part(i));`,
});

/**
 * Adds `part` [T, n] (f32) into columns [c0, c0 + n) of `acc` [T, N] (f32) in place, or, with
 * `c0` omitted and equal sizes, `part` into `acc` elementwise (any shapes). Not recorded on any
 * tape: for ops that accumulate blocks of their own outputs.
 */
export function addInto(part: Tensor, acc: Tensor, c0?: number): void {
  const [cols, width] = c0 === undefined
    ? [part.size, part.size]
    : [part.shape[part.rank - 1], acc.shape[acc.rank - 1]];
  ADD_COLUMNS({ part, acc }, { n: part.size, cols, width, c0: c0 ?? 0 });
}
