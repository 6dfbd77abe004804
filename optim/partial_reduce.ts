/**
 * Whole-tensor reductions on the GPU without a readback, in two passes: a kernel family reduces
 * each chunk of CHUNK elements to one partial, and a second kernel folds the partials (with
 * {@link foldPartials}) into whatever it computes from the result — a clip scale, a running max.
 * Shared by global-norm clipping (sums of squares) and Stable-SPAM (max of |g|).
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import { forEachWindow } from "../core/windows.ts";

/** Invocations per workgroup of both passes. */
export const REDUCE_WG = 256;
// 256 threads x 16 elements keeps each invocation's loop far below llvmpipe's 65535 back-edge cap
// while leaving few partials to combine.
const PER_THREAD = 16;
const CHUNK = REDUCE_WG * PER_THREAD;

/** How values combine: their sum, or their maximum (of non-negative values: 0 is the identity). */
export type Combine = "sum" | "max";

const combine = (c: Combine, a: string, b: string) =>
  c === "sum" ? `${a} + ${b}` : `max(${a}, ${b})`;

/** The workgroup memory the reductions use (a kernel's `helpers`). */
export const REDUCE_HELPERS = `var<workgroup> acc: array<f32, ${REDUCE_WG}>;`;

/** WGSL: each invocation's `s` combined across the workgroup into `acc[0]` (needs `lid`). */
function workgroupReduce(c: Combine): string {
  return `  acc[lid.x] = s;
  workgroupBarrier();
  for (var w = ${REDUCE_WG / 2}u; w > 0u; w = w >> 1u) {
    if (lid.x < w) { acc[lid.x] = ${combine(c, "acc[lid.x]", "acc[lid.x + w]")}; }
    workgroupBarrier();
  }`;
}

/**
 * WGSL for a one-workgroup kernel with input `partials` and uniform `count`: folds the first
 * `count` partials into `acc[0]` (read it under `if (lid.x == 0u)`).
 */
export function foldPartials(c: Combine): string {
  return `  var s = 0.0;
  for (var k = lid.x; k < u.count; k = k + ${REDUCE_WG}u) { s = ${combine(c, "s", "partials[k]")}; }
${workgroupReduce(c)}`;
}

/** The partials of some tensors, `count` of them (the tensor has at least one element). */
export interface Partials {
  /** f32 partials, one per chunk of each input. */
  partials: Tensor;
  /** How many partials were written. */
  count: number;
}

/**
 * A reduction of tensors into partials: `element` is the WGSL expression of one element's value
 * from `e` (the loaded element, e.g. `e * e` or `abs(e)`), combined by `c`. Returns the function
 * that reduces f32 or bf16 tensors (each window a whole number of chunks).
 */
export function partialReduction(
  name: string,
  element: string,
  c: Combine,
): (leaves: readonly Tensor[]) => Partials {
  const kernels = kernelFamily((dtype: "f32" | "bf16") =>
    defineKernel({
      name,
      inputs: { x: dtype },
      outputs: { partials: "f32" },
      uniforms: { count: "u32", offset: "u32" },
      grid: {
        workgroupSize: [REDUCE_WG],
        builtins: { lid: "local_invocation_id", wid: "workgroup_id" },
      },
      helpers: REDUCE_HELPERS,
      body: `  let base = wid.x * ${CHUNK}u + lid.x;
  var s = 0.0;
  for (var j = 0u; j < ${PER_THREAD}u; j++) {
    let k = base + j * ${REDUCE_WG}u;
    if (k < u.count) { let e = load_x(k); s = ${combine(c, "s", element)}; }
  }
${workgroupReduce(c)}
  if (lid.x == 0u) { partials[u.offset + wid.x] = acc[0]; }`,
    })
  );
  return (leaves) => {
    const count = leaves.reduce((a, t) => a + Math.ceil(t.size / CHUNK), 0);
    const partials = zeros([Math.max(1, count)]);
    let offset = 0;
    for (const t of leaves) {
      const kernel = kernels(t.dtype as "f32" | "bf16");
      forEachWindow([t], ([x], _start, n) => {
        const groups = Math.ceil(n / CHUNK);
        kernel({ x, partials }, { count: n, offset }, [groups]);
        offset += groups;
      }, CHUNK);
    }
    return { partials, count };
  };
}
