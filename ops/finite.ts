/**
 * Non-finite detection on the device: a kernel marks a slot of a u32 flag tensor when a tensor
 * holds a NaN or ±Infinity, so a training loop learns of a bad loss or gradient when it next reads
 * the flags (with the loss it reads anyway), without a GPU→CPU sync of its own.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { isFloat } from "../core/dtype.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import { forEachWindow } from "../core/windows.ts";

// Each invocation checks PER consecutive elements and writes only when one is bad, so a clean
// tensor costs reads alone.
const PER = 8;

const markKernel = kernelFamily((dtype: "f32" | "bf16") =>
  defineKernel({
    name: "flag_nonfinite",
    inputs: { x: dtype },
    outputs: { flags: "u32" },
    uniforms: { count: "u32", slot: "u32" },
    grid: "flat",
    body: `  var bad = false;
  for (var k = 0u; k < ${PER}u; k++) {
    let e = i * ${PER}u + k;
    if (e < u.count && (bitcast<u32>(load_x(e)) & 0x7f800000u) == 0x7f800000u) { bad = true; }
  }
  if (bad) { flags[u.slot] = 1u; }`,
  })
);

/**
 * Sets `flags[slot]` to 1 when `x` (f32 or bf16) holds a NaN or ±Infinity, and leaves it as it is
 * otherwise: flags accumulate until the caller clears or replaces them. Records dispatches only
 * (one per binding window of `x`); nothing is read back.
 */
export function flagNonFinite(x: Tensor, flags: Tensor, slot: number): void {
  if (!isFloat(x.dtype)) {
    throw new DTypeError(`flagNonFinite: needs an f32 or bf16 tensor, got ${x.dtype}`);
  }
  if (flags.dtype !== "u32" || !(Number.isInteger(slot) && slot >= 0 && slot < flags.size)) {
    throw new ShapeError(
      `flagNonFinite: slot ${slot} is not an element of the u32 flags ${fmtShape(flags.shape)} ` +
        `${flags.dtype}`,
    );
  }
  const kernel = markKernel(x.dtype);
  forEachWindow([x], ([w], _start, count) => {
    kernel({ x: w, flags }, { n: Math.ceil(count / PER), count, slot });
  }, PER);
}
