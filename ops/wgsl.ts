/**
 * Small WGSL-generation helpers shared by op families: uniform packing, flat 1-D grids and
 * one-invocation-per-row grids.
 * @module
 */
import { grid1d } from "../core/kernel.ts";

/** Workgroup size of the library's 1-D kernels. */
export const WG = 256;

/** WGSL prelude of a 1-D kernel: entry point header whose body sees the flat index `i`. */
export function flatMain(body: string): string {
  return `const WG = ${WG}u;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * WG);
${body}
}`;
}

/** Workgroup counts of a 1-D kernel over `n` invocations. */
export function flatGrid(n: number): [number, number, number] {
  return grid1d(Math.max(n, 0), WG);
}

/**
 * Rows per workgroup of the per-row kernels ({@link rowMain}). A workgroup runs on one CPU thread on
 * software adapters, so keep it small enough that a few long rows still spread over the cores.
 */
export const ROW_WG = 16;

/**
 * WGSL prelude of a per-row kernel, one invocation per row: entry point header whose body sees the
 * row index `r`, already checked against `u.rows` (the uniform struct needs a `rows: u32` field).
 */
export function rowMain(body: string): string {
  return `const WG = ${ROW_WG}u;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * (nwg.x * WG);
  if (r >= u.rows) { return; }
${body}
}`;
}

/** Workgroup counts of a {@link rowMain} kernel over `rows` rows. */
export function rowGrid(rows: number): [number, number, number] {
  return grid1d(Math.max(rows, 0), ROW_WG);
}

/**
 * Packs named u32 vectors into one uniform block: each vector starts on a 16-byte boundary and is
 * declared as `array<vec4u, Q>` so WGSL's uniform layout rules hold. Returns the data and the WGSL
 * struct fields; read element `j` of field `f` with {@link uget}.
 */
export function packUniforms(fields: Record<string, readonly number[]>): {
  data: Uint32Array;
  decl: string;
} {
  const parts: number[] = [];
  const decl: string[] = [];
  for (const [name, values] of Object.entries(fields)) {
    const q = Math.max(1, Math.ceil(values.length / 4));
    decl.push(`${name}: array<vec4u, ${q}>,`);
    const padded = new Array(q * 4).fill(0);
    values.forEach((v, i) => (padded[i] = v >>> 0));
    parts.push(...padded);
  }
  return { data: Uint32Array.from(parts), decl: `struct U {\n  ${decl.join("\n  ")}\n}` };
}

/** WGSL expression reading element `j` of a packed uniform field. */
export function uget(field: string, j: number): string {
  return `u.${field}[${j >> 2}][${j & 3}]`;
}
