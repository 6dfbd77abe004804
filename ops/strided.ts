/**
 * The strided-copy kernel behind the shape ops (internal: not re-exported from `ops/mod.ts`).
 * Copies here are never recorded on a tape, so other op families can use them for layout changes
 * that are not part of the differentiated graph.
 * @module
 */
import { dispatch, grid1d } from "../core/kernel.ts";
import { sizeOf, stridesOf } from "../core/shape.ts";
import { Tensor } from "../core/tensor.ts";

/**
 * Drops size-1 axes and merges neighbours that are contiguous on the strided side, so a transpose
 * of [B, T, H, D] by [0, 2, 1, 3] runs as a rank-3 copy (fewer divisions per element, fewer
 * distinct pipelines).
 */
export function collapse(
  dims: readonly number[],
  strides: readonly number[],
): [number[], number[]] {
  const d: number[] = [];
  const s: number[] = [];
  for (let i = 0; i < dims.length; i++) {
    if (dims[i] === 1) continue;
    const last = d.length - 1;
    if (last >= 0 && s[last] === strides[i] * dims[i]) {
      d[last] *= dims[i];
      s[last] = strides[i];
    } else {
      d.push(dims[i]);
      s.push(strides[i]);
    }
  }
  if (d.length === 0) return [[1], [0]];
  return [d, s];
}

const stridedCodes = new Map<string, string>();

/**
 * WGSL of a copy between a contiguous side and a strided side (`off + Σ coord_d · stride_d`,
 * coordinates in `dims`). `gather` reads strided and writes contiguous; `scatter` the reverse.
 * Each invocation copies a run of `v` elements along the innermost axis, so the integer divisions
 * that locate an element (slow on CPU adapters: one per axis, not vectorized) are paid once per
 * run. Only the rank and `v` are baked in; sizes travel in the uniform so random test shapes share
 * pipelines.
 */
function stridedCode(rank: number, mode: "gather" | "scatter", v: number): string {
  const key = `${rank}:${mode}:${v}`;
  let code = stridedCodes.get(key);
  if (code) return code;
  const q = Math.ceil(rank / 4);
  const c = (d: number) => `[${d >> 2}].${"xyzw"[d & 3]}`;
  const inner = `u.dims${c(rank - 1)}`;
  const lines: string[] = [];
  for (let d = rank - 2; d >= 1; d--) {
    lines.push(`  s += (r % u.dims${c(d)}) * u.strides${c(d)}; r = r / u.dims${c(d)};`);
  }
  if (rank >= 2) lines.push(`  s += r * u.strides${c(0)};`);
  const move = mode === "gather"
    ? "dst[o + e] = src[s + e * si];"
    : "dst[s + e * si] = src[o + e];";
  code = `
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
struct U { n: u32, off: u32, runs: u32, p1: u32, dims: array<vec4u, ${q}>, strides: array<vec4u, ${q}> }
@group(0) @binding(2) var<uniform> u: U;
const WG = 256u;
const V = ${v}u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * WG);
  if (i >= u.n) { return; }
  let row = i / u.runs;
  let c0 = (i % u.runs) * V;
  let si = u.strides${c(rank - 1)};
  let o = row * ${inner} + c0;
  var r = row;
  var s = u.off + c0 * si;
${lines.join("\n")}
  let m = min(V, ${inner} - c0);
  for (var e = 0u; e < m; e += 1u) { ${move} }
}`;
  stridedCodes.set(key, code);
  return code;
}

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
  const [cd, cs] = collapse(dims, strides);
  const inner = cd[cd.length - 1];
  const v = inner >= 8 ? 8 : inner >= 4 ? 4 : 1;
  const runs = Math.ceil(inner / v);
  const invocations = (n / inner) * runs;
  const q = Math.ceil(cd.length / 4);
  const u = new Uint32Array(4 + 8 * q);
  u[0] = invocations;
  u[1] = off;
  u[2] = runs;
  u.set(cd, 4);
  u.set(cs, 4 + 4 * q);
  dispatch({
    name,
    code: stridedCode(cd.length, mode, v),
    inputs: [src.binding()],
    outputs: [dst.binding()],
    uniforms: u,
    workgroups: grid1d(invocations, 256),
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
