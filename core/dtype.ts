/**
 * Element types supported by tensors, and the dtype check ops share.
 * @module
 */
import { DTypeError } from "./errors.ts";
import { fmtShape } from "./shape.ts";
import type { Tensor } from "./tensor.ts";

/** Element type of a tensor. All are 4 bytes wide. */
export type DType = "f32" | "i32" | "u32";

/** The typed array that holds the elements of a tensor of dtype `D` on the CPU. */
export type TypedArrayFor<D extends DType> = D extends "f32" ? Float32Array
  : D extends "i32" ? Int32Array
  : Uint32Array;

/** Any typed array a tensor can be read into or created from. */
export type TensorData = Float32Array | Int32Array | Uint32Array;

/** Bytes per element of a dtype. */
export function bytesPerElement(_dtype: DType): number {
  return 4;
}

/** The WGSL scalar type of a dtype. */
export function wgslType(dtype: DType): "f32" | "i32" | "u32" {
  return dtype;
}

/** A new zero-filled typed array of the dtype's kind. */
export function allocTyped(dtype: DType, length: number): TensorData {
  if (dtype === "f32") return new Float32Array(length);
  if (dtype === "i32") return new Int32Array(length);
  return new Uint32Array(length);
}

/** The dtype matching a typed array. */
export function dtypeOf(data: TensorData): DType {
  if (data instanceof Float32Array) return "f32";
  if (data instanceof Int32Array) return "i32";
  return "u32";
}

/**
 * Throws a DTypeError naming the op (and the argument, for a `[name, tensor]` pair) unless every
 * tensor's dtype is one of `allowed`.
 */
export function assertDType(
  op: string,
  allowed: readonly DType[],
  ...ts: (Tensor | readonly [string, Tensor])[]
): void {
  for (const entry of ts) {
    const [name, t] = Array.isArray(entry) ? entry : [null, entry as Tensor];
    if (!allowed.includes(t.dtype)) {
      const want = allowed.join(" or ");
      const what = name ? `${name} must be ${want}` : `expected a ${want} tensor`;
      throw new DTypeError(`${op}: ${what}, got ${t.dtype} ${fmtShape(t.shape)}`);
    }
  }
}

/** {@link assertDType} for f32, the dtype every differentiable op needs. */
export function assertF32(op: string, ...ts: (Tensor | readonly [string, Tensor])[]): void {
  assertDType(op, ["f32"], ...ts);
}
