/**
 * Windows of tensors larger than one storage binding: a kernel cannot bind more than the device's
 * `maxStorageBufferBindingSize` (128 MiB on software adapters) of a buffer, so an op over such a
 * tensor runs once per window, each dispatch binding aligned views of the same element range.
 * @module
 */
import { gpuDevice } from "./device.ts";
import { bytesPerElement } from "./dtype.ts";
import { ShapeError } from "./errors.ts";
import { fmtShape } from "./shape.ts";
import type { Tensor } from "./tensor.ts";

/** Bytes of the largest window a kernel may bind (the device's binding limit, rounded to 16). */
export function maxWindowBytes(): number {
  return Math.floor(gpuDevice().limits.maxStorageBufferBindingSize / 16) * 16;
}

/**
 * Rows per window of a tensor whose rows along axis 0 have `rowBytes` bytes: as many rows as fit in
 * `maxBytes` (default: one binding), rounded down so every window starts on the device's
 * `minStorageBufferOffsetAlignment`. Throws when even one aligned group of rows does not fit.
 */
export function rowWindow(rowBytes: number, maxBytes = maxWindowBytes(), what = "a row"): number {
  const align = gpuDevice().limits.minStorageBufferOffsetAlignment;
  // The smallest row count whose byte size is a multiple of the alignment.
  const step = align / gcd(align, rowBytes);
  const rows = Math.floor(maxBytes / rowBytes / step) * step;
  if (rows < 1) {
    throw new ShapeError(
      `${what} of ${rowBytes} bytes (in groups of ${step} for ${align}-byte alignment) does not ` +
        `fit one binding window of ${maxBytes} bytes`,
    );
  }
  return rows;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * Calls `fn(views, start, count)` for consecutive element windows `[start, start + count)` of
 * same-sized tensors (none when they are empty), where `views[k]` is the window of `tensors[k]`
 * flattened to 1-D. One window when everything fits a binding. Window starts are multiples
 * of `multiple` elements (e.g. 2 for kernels that store bf16 pairs) and aligned for every dtype.
 * The views are disposed after each call.
 */
export function forEachWindow(
  tensors: readonly Tensor[],
  fn: (views: Tensor[], start: number, count: number) => void,
  multiple = 1,
  maxBytes = maxWindowBytes(),
): void {
  if (tensors.length === 0 || tensors[0].size === 0) return;
  const n = tensors[0].size;
  for (const t of tensors) {
    if (t.size !== n) {
      throw new ShapeError(
        `windows need tensors of equal size, got ${
          tensors.map((x) => fmtShape(x.shape)).join(", ")
        }`,
      );
    }
  }
  const widest = Math.max(...tensors.map((t) => bytesPerElement(t.dtype)));
  const align = gpuDevice().limits.minStorageBufferOffsetAlignment;
  // Starts at multiples of `align` elements are aligned whatever the dtype (>= 1 byte each).
  const step = (align * multiple) / gcd(align, multiple);
  const fits = tensors.every((t) => t.bytes <= maxBytes);
  const per = fits ? n : Math.floor(maxBytes / widest / step) * step;
  if (per < 1) throw new ShapeError(`no aligned window of ${step} elements fits ${maxBytes} bytes`);
  const flat = tensors.map((t) => t.view([n]));
  try {
    for (let start = 0; start < n; start += per) {
      const count = Math.min(per, n - start);
      const views = flat.map((t) => t.rows(start, count));
      try {
        fn(views, start, count);
      } finally {
        for (const v of views) v.dispose();
      }
    }
  } finally {
    for (const t of flat) t.dispose();
  }
}
