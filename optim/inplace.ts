/**
 * In-place elementwise kernels for update transforms: each consumes its first tensor (see
 * `core/donate.ts`) and writes the result into that tensor's buffer, so a chain of transforms and
 * `applyUpdates` allocate nothing per step. Any operand may be f32 or bf16 (arithmetic in f32; a
 * bf16 result is rounded once, to nearest even), and tensors of any size are processed window by
 * window.
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import { elementwiseInPlace } from "./elementwise_kernel.ts";

const SCALE = elementwiseInPlace({
  name: "scale_inplace",
  uniforms: ["a"],
  elem: "  return u.a * load_x(k);",
});

const AXPBY = elementwiseInPlace({
  name: "axpby_inplace",
  reads: ["y"],
  uniforms: ["a", "b"],
  elem: "  return u.a * load_x(k) + u.b * load_y(k);",
});

const SCALE_BY_TENSOR = elementwiseInPlace({
  name: "scale_by_tensor_inplace",
  whole: ["s"],
  elem: "  return load_x(k) * load_s(0u);",
});

/** x ← a·x, in x's buffer; consumes `x` and returns the result's handle. */
export function scaleInPlace(x: Tensor, a: number): Tensor {
  return SCALE(x, {}, { a });
}

/**
 * x ← a·x + b·y, in x's buffer; consumes `x` (not `y`) and returns the result's handle. With a
 * bf16 `x` the sum is formed in f32 and rounded once.
 */
export function axpbyInPlace(x: Tensor, a: number, y: Tensor, b: number): Tensor {
  if (x.size !== y.size) {
    throw new ShapeError(`axpbyInPlace: x ${fmtShape(x.shape)} and y ${fmtShape(y.shape)} differ`);
  }
  return AXPBY(x, { y }, { a, b });
}

/**
 * x ← x·s[0] with `s` a one-element tensor (a scale computed on the device, read by no sync), in
 * x's buffer; consumes `x` and returns the result's handle.
 */
export function scaleByTensorInPlace(x: Tensor, s: Tensor): Tensor {
  if (s.size !== 1) {
    throw new ShapeError(
      `scaleByTensorInPlace: the scale must have one element, got ${fmtShape(s.shape)}`,
    );
  }
  return SCALE_BY_TENSOR(x, { s }, {});
}
