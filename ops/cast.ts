/**
 * Conversion between f32 and bf16 as a differentiable op.
 * @module
 */
import { convert } from "../core/convert.ts";
import { recordOp } from "../core/tape.ts";
import type { Tensor } from "../core/tensor.ts";

/**
 * `x` stored as `dtype` (`f32` or `bf16`): f32 → bf16 rounds to nearest even, bf16 → f32 is exact.
 * The gradient passes through unchanged (in f32; a bf16 leaf's gradient is stored as bf16 by the
 * tape).
 */
export function cast(x: Tensor, dtype: "f32" | "bf16"): Tensor {
  const y = convert(x, dtype);
  recordOp("cast", [x], y, (g) => [g]);
  return y;
}
