/**
 * In-place elementwise kernels for update transforms: each consumes its first tensor (see
 * `core/donate.ts`) and writes the result into that tensor's buffer, so a chain of transforms and
 * `applyUpdates` allocate nothing per step.
 * @module
 */
import { donate } from "../core/donate.ts";
import { ShapeError } from "../core/errors.ts";
import { dispatch } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import { assertF32 } from "../ops/elementwise.ts";
import { flatGrid, flatMain } from "../ops/wgsl.ts";

const SCALE = `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
struct U { a: f32, n: u32, p0: u32, p1: u32 }
@group(0) @binding(1) var<uniform> u: U;
${
  flatMain(`  if (i >= u.n) { return; }
  x[i] = u.a * x[i];`)
}`;

const AXPBY = `@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
struct U { a: f32, b: f32, n: u32, p0: u32 }
@group(0) @binding(2) var<uniform> u: U;
${
  flatMain(`  if (i >= u.n) { return; }
  x[i] = u.a * x[i] + u.b * y[i];`)
}`;

const SCALE_BY_TENSOR = `@group(0) @binding(0) var<storage, read> s: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
struct U { n: u32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(2) var<uniform> u: U;
${
  flatMain(`  if (i >= u.n) { return; }
  x[i] = x[i] * s[0];`)
}`;

function uniforms(floats: number[], n: number): Uint8Array {
  const buf = new ArrayBuffer(16);
  new Float32Array(buf, 0, floats.length).set(floats);
  new Uint32Array(buf, 4 * floats.length, 1)[0] = n;
  return new Uint8Array(buf);
}

function run(name: string, code: string, x: Tensor, input: Tensor | null, floats: number[]) {
  const out = donate(x);
  if (out.size > 0) {
    dispatch({
      name,
      code,
      inputs: input ? [input.binding()] : [],
      outputs: [out.binding()],
      uniforms: uniforms(floats, out.size),
      workgroups: flatGrid(out.size),
    });
  }
  return out;
}

/** x ← a·x, in x's buffer; consumes `x` and returns the result's handle. */
export function scaleInPlace(x: Tensor, a: number): Tensor {
  assertF32("scaleInPlace", x);
  return run("scale_inplace", SCALE, x, null, [a]);
}

/** x ← a·x + b·y, in x's buffer; consumes `x` (not `y`) and returns the result's handle. */
export function axpbyInPlace(x: Tensor, a: number, y: Tensor, b: number): Tensor {
  assertF32("axpbyInPlace", x, y);
  if (x.size !== y.size) {
    throw new ShapeError(`axpbyInPlace: x ${fmtShape(x.shape)} and y ${fmtShape(y.shape)} differ`);
  }
  return run("axpby_inplace", AXPBY, x, y, [a, b]);
}

/**
 * x ← x·s[0] with `s` a one-element tensor (a scale computed on the device, read by no sync), in
 * x's buffer; consumes `x` and returns the result's handle.
 */
export function scaleByTensorInPlace(x: Tensor, s: Tensor): Tensor {
  assertF32("scaleByTensorInPlace", x, s);
  if (s.size !== 1) {
    throw new ShapeError(
      `scaleByTensorInPlace: the scale must have one element, got ${fmtShape(s.shape)}`,
    );
  }
  return run("scale_by_tensor_inplace", SCALE_BY_TENSOR, x, s, []);
}
