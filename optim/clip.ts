/**
 * Global-norm gradient clipping entirely on the GPU: the norm and the scale stay in device memory,
 * so clipping costs dispatches, never a readback (each sync costs >= 11 ms on software adapters).
 * @module
 */
import { dispatch } from "../core/kernel.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import { assertF32 } from "../ops/elementwise.ts";
import { scaleByTensorInPlace } from "./inplace.ts";
import type { GradientTransformation } from "./transform.ts";

// Elements per workgroup of the partial-sum pass: 256 threads x 16 elements keeps each invocation's
// loop far below llvmpipe's 65535 back-edge cap while leaving few partials to combine.
const PER_THREAD = 16;
const WG = 256;
const CHUNK = WG * PER_THREAD;

const PARTIAL_CODE = `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
struct U { n: u32, offset: u32, pad0: u32, pad1: u32 }
@group(0) @binding(2) var<uniform> u: U;
var<workgroup> acc: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let base = wid.x * ${CHUNK}u + lid.x;
  var s = 0.0;
  for (var j = 0u; j < ${PER_THREAD}u; j++) {
    let k = base + j * ${WG}u;
    if (k < u.n) { let e = x[k]; s = s + e * e; }
  }
  acc[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w = w >> 1u) {
    if (lid.x < w) { acc[lid.x] = acc[lid.x] + acc[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { partials[u.offset + wid.x] = acc[0]; }
}`;

const FINAL_CODE = `@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> norm: array<f32>;
@group(0) @binding(2) var<storage, read_write> scale: array<f32>;
struct U { n: u32, maxNorm: f32, pad0: u32, pad1: u32 }
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> acc: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var s = 0.0;
  for (var k = lid.x; k < u.n; k = k + ${WG}u) { s = s + partials[k]; }
  acc[lid.x] = s;
  workgroupBarrier();
  for (var w = ${WG / 2}u; w > 0u; w = w >> 1u) {
    if (lid.x < w) { acc[lid.x] = acc[lid.x] + acc[lid.x + w]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let nrm = sqrt(acc[0]);
    norm[0] = nrm;
    // torch.nn.utils.clip_grad_norm_: coefficient max/(norm + 1e-6), clamped to 1.
    scale[0] = min(1.0, u.maxNorm / (nrm + 1e-6));
  }
}`;

/**
 * The global L2 norm of all gradients and the clip scale min(1, maxNorm / (norm + 1e-6)), both as
 * one-element tensors computed on the GPU (two dispatch rounds, no readback).
 */
export function globalNormAndScale(
  grads: TensorTree,
  maxNorm = Infinity,
): { norm: Tensor; scale: Tensor } {
  const leaves = tree.flatten(grads);
  assertF32("globalNorm", ...leaves);
  const counts = leaves.map((t) => Math.ceil(t.size / CHUNK));
  const total = counts.reduce((a, b) => a + b, 0);
  const partials = zeros([Math.max(1, total)]);
  let offset = 0;
  leaves.forEach((t, i) => {
    if (counts[i] > 0) {
      dispatch({
        name: "clip_sumsq",
        code: PARTIAL_CODE,
        inputs: [t.binding()],
        outputs: [partials.binding()],
        uniforms: new Uint32Array([t.size, offset, 0, 0]),
        workgroups: [counts[i]],
      });
    }
    offset += counts[i];
  });
  const norm = Tensor.empty([1]);
  const scale = Tensor.empty([1]);
  const u = new ArrayBuffer(16);
  new Uint32Array(u)[0] = total;
  new Float32Array(u)[1] = Number.isFinite(maxNorm) ? maxNorm : 3.4e38;
  dispatch({
    name: "clip_finalize",
    code: FINAL_CODE,
    inputs: [partials.binding()],
    outputs: [norm.binding(), scale.binding()],
    uniforms: new Uint8Array(u),
    workgroups: [1],
  });
  partials.dispose();
  return { norm, scale };
}

/** The global L2 norm of a tree of gradients, as a one-element tensor (no readback). */
export function globalNorm(grads: TensorTree): Tensor {
  const { norm, scale } = globalNormAndScale(grads);
  scale.dispose();
  return norm;
}

/** State of {@link clipByGlobalNorm}: the latest pre-clip global norm, if asked to keep it. */
export interface ClipState {
  /** One-element tensor with the last step's global norm (for logging; read it when convenient). */
  norm: Tensor | null;
}

/**
 * Scales all updates by min(1, maxNorm / (‖g‖ + 1e-6)), like `torch.nn.utils.clip_grad_norm_`,
 * with the norm and the scale computed on the GPU and applied in place (no readback). With
 * `keepNorm`, the state holds the pre-clip norm of the latest step as a tensor (the previous one
 * is disposed), for logging without an extra sync. The norm spans every update it is given, so it
 * must not run inside `perParameter`.
 */
export function clipByGlobalNorm(
  maxNorm: number,
  opts: { keepNorm?: boolean } = {},
): GradientTransformation<ClipState> {
  if (!(maxNorm > 0)) throw new RangeError(`clipByGlobalNorm: maxNorm must be > 0, got ${maxNorm}`);
  return {
    init: () => ({ norm: null }),
    update(updates, state) {
      const { norm, scale } = globalNormAndScale(updates, maxNorm);
      const clipped = tree.map(updates, (u) => scaleByTensorInPlace(u, scale));
      scale.dispose();
      state.norm?.dispose();
      if (!opts.keepNorm) norm.dispose();
      return { updates: clipped, state: { norm: opts.keepNorm ? norm : null } };
    },
  };
}
