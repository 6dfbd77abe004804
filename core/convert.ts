/**
 * Conversion between f32 and bf16 storage, on the device and window by window, so tensors of any
 * size convert. Core needs it for gradients (a bf16 parameter's gradient is stored as bf16); ops
 * wraps it as a differentiable op.
 * @module
 */
import { defineKernel } from "./define_kernel.ts";
import { DTypeError } from "./errors.ts";
import { fmtShape } from "./shape.ts";
import { Tensor } from "./tensor.ts";
import { forEachWindow } from "./windows.ts";

// One invocation per output word: elements 2j and 2j+1 (the second absent when the size is odd).
const TO_BF16 = defineKernel({
  name: "to_bf16",
  inputs: { x: "f32" },
  outputs: { y: "bf16" },
  uniforms: { size: "u32" },
  grid: "flat",
  body: `  let a = load_x(2u * i);
  let b = select(0.0, load_x(min(2u * i + 1u, u.size - 1u)), 2u * i + 1u < u.size);
  store_y_pair(i, a, b);`,
});

const TO_F32 = defineKernel({
  name: "to_f32",
  inputs: { x: "bf16" },
  outputs: { y: "f32" },
  grid: "flat",
  body: "  store_y(i, load_x(i));",
});

/**
 * `x` converted to `dtype` (`f32` or `bf16`) as a new tensor: f32 → bf16 rounds to nearest even,
 * bf16 → f32 is exact. The same dtype gives a new handle to the same storage.
 */
export function convert(x: Tensor, dtype: "f32" | "bf16"): Tensor {
  if (x.dtype === dtype) return x.view(x.shape);
  checkPair(x.dtype, dtype, x);
  const y = Tensor.empty(x.shape, dtype);
  convertInto(x, y);
  return y;
}

function checkPair(from: string, to: string, x: Tensor): void {
  if (!((from === "f32" && to === "bf16") || (from === "bf16" && to === "f32"))) {
    throw new DTypeError(`convert: cannot convert ${from} ${fmtShape(x.shape)} to ${to}`);
  }
}

/**
 * Writes `x` converted to `y`'s dtype into `y` (an f32 ↔ bf16 pair of equal sizes; `y` may be a
 * {@link Tensor.rows} window of a larger tensor): how an op stores an f32 result block into a
 * bf16 tensor without a full-size f32 copy.
 */
export function convertInto(x: Tensor, y: Tensor): void {
  checkPair(x.dtype, y.dtype, x);
  if (x.size !== y.size) {
    throw new DTypeError(
      `convertInto: sizes differ, ${fmtShape(x.shape)} into ${fmtShape(y.shape)}`,
    );
  }
  // Stores write whole words: an odd-sized bf16 window inside a larger storage would clobber the
  // element after it.
  if (y.dtype === "bf16" && y.size % 2 === 1 && y.offset + y.bytes < y.storage.bytes) {
    throw new DTypeError(
      `convertInto: a bf16 window ${fmtShape(y.shape)} must end on a 32-bit word or at the end ` +
        "of its storage",
    );
  }
  // Windows start on even elements, so no output word straddles two windows.
  forEachWindow([x, y], ([xv, yv], _start, count) => {
    if (y.dtype === "bf16") TO_BF16({ x: xv, y: yv }, { n: Math.ceil(count / 2), size: count });
    else TO_F32({ x: xv, y: yv }, { n: count });
  }, 2);
}
