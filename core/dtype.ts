/**
 * Element types supported by tensors, and the dtype check ops share.
 * @module
 */
import { DTypeError } from "./errors.ts";
import { fmtShape } from "./shape.ts";
import type { Tensor } from "./tensor.ts";

/**
 * Element type of a tensor. `f32`, `i32`, `u32` take 4 bytes; `bf16` (bfloat16 storage, two per
 * 32-bit word, element 2k in the low half) takes 2; `u8` (8-bit codes, four per word, element 4k
 * in the lowest byte) takes 1. Kernels compute in f32 and read packed types through accessors.
 */
export type DType = "f32" | "i32" | "u32" | "bf16" | "u8";

/** The typed array that holds the elements of a tensor of dtype `D` on the CPU (bf16 reads as f32). */
export type TypedArrayFor<D extends DType> = D extends "f32" | "bf16" ? Float32Array
  : D extends "i32" ? Int32Array
  : D extends "u8" ? Uint8Array
  : Uint32Array;

/** Any typed array a tensor can be read into or created from. */
export type TensorData = Float32Array | Int32Array | Uint32Array | Uint8Array;

/** Bytes per element of a dtype. */
export function bytesPerElement(dtype: DType): number {
  return dtype === "bf16" ? 2 : dtype === "u8" ? 1 : 4;
}

/** Bytes of device storage a tensor of `size` elements takes: whole 32-bit words. */
export function storageBytes(dtype: DType, size: number): number {
  return Math.ceil((size * bytesPerElement(dtype)) / 4) * 4;
}

/** A new zero-filled typed array of the dtype's kind. */
export function allocTyped(dtype: DType, length: number): TensorData {
  if (isFloat(dtype)) return new Float32Array(length);
  if (dtype === "i32") return new Int32Array(length);
  if (dtype === "u8") return new Uint8Array(length);
  return new Uint32Array(length);
}

/** The dtype matching a typed array (f32 for a Float32Array). */
export function dtypeOf(data: TensorData): DType {
  if (data instanceof Float32Array) return "f32";
  if (data instanceof Int32Array) return "i32";
  if (data instanceof Uint8Array) return "u8";
  return "u32";
}

/** True for the dtypes that hold real numbers (what a differentiable op or an optimizer reads). */
export function isFloat(dtype: DType): dtype is "f32" | "bf16" {
  return dtype === "f32" || dtype === "bf16";
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
