/**
 * @deprecated Kept only for optim/, whose kernels move to `defineKernel` (core/define_kernel.ts)
 * next; new kernels use `defineKernel({ grid: "flat", ... })`, which writes this entry point, its
 * bounds check and the bindings itself.
 * @module
 */
import { FLAT_WG } from "../core/define_kernel.ts";
import { grid1d } from "../core/kernel.ts";

/** WGSL of a 1-D kernel's entry point whose body sees the flat index `i` (unchecked). */
export function flatMain(body: string): string {
  return `const WG = ${FLAT_WG}u;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * (nwg.x * WG);
${body}
}`;
}

/** Workgroup counts of a {@link flatMain} kernel over `n` invocations. */
export function flatGrid(n: number): [number, number, number] {
  return grid1d(Math.max(n, 0), FLAT_WG);
}
