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

let windowOverride: number | null = null;

/**
 * Bytes of the largest window a kernel may bind: the device's binding limit (rounded to 16), or
 * less while a test has shrunk it with {@link setMaxWindowBytes}.
 */
export function maxWindowBytes(): number {
  const device = Math.floor(gpuDevice().limits.maxStorageBufferBindingSize / 16) * 16;
  return windowOverride === null ? device : Math.min(device, windowOverride);
}

/**
 * For tests: plans windows as if a binding held at most `bytes` (null restores the device's
 * limit), so window-by-window code paths run on tiny tensors. Only the planning of windowed ops
 * changes; what a dispatch may bind is still the device's limit. Returns the previous override.
 */
export function setMaxWindowBytes(bytes: number | null): number | null {
  if (bytes !== null && !(Number.isInteger(bytes) && bytes >= 16)) {
    throw new RangeError(`setMaxWindowBytes: need an integer >= 16 or null, got ${bytes}`);
  }
  const prev = windowOverride;
  windowOverride = bytes;
  return prev;
}

/**
 * The smallest row count whose byte size, for every row size in `rowBytes`, is a multiple of the
 * device's `minStorageBufferOffsetAlignment`: windows of tensors that share their row axis (a
 * weight and its gradient, a matrix and its factor) start on multiples of it.
 */
export function rowAlignment(...rowBytes: number[]): number {
  const align = gpuDevice().limits.minStorageBufferOffsetAlignment;
  return rowBytes.reduce((step, b) => lcm(step, align / gcd(align, b)), 1);
}

/**
 * Rows per window of a tensor whose rows along axis 0 have `rowBytes` bytes: as many rows as fit in
 * `maxBytes` (default: one binding), rounded down so every window starts on the device's
 * `minStorageBufferOffsetAlignment` (for `alsoAligned` row sizes too: see {@link rowAlignment}).
 * Throws when even one aligned group of rows does not fit.
 */
export function rowWindow(
  rowBytes: number,
  maxBytes = maxWindowBytes(),
  what = "a row",
  alsoAligned: readonly number[] = [],
): number {
  const step = rowAlignment(rowBytes, ...alsoAligned);
  const rows = Math.floor(maxBytes / rowBytes / step) * step;
  if (rows < 1) {
    throw new ShapeError(
      `${what} of ${rowBytes} bytes (in groups of ${step} rows for offset alignment) does not ` +
        `fit one binding window of ${maxBytes} bytes`,
    );
  }
  return rows;
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Least common multiple of two positive integers (e.g. of two row alignments). */
export function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}

/**
 * Calls `fn(r0, n)` for consecutive row windows `[r0, r0 + n)` of `rows` rows, `per` rows each
 * (the last one shorter); one call covering everything when `per >= rows`, none when rows is 0.
 */
export function forEachRowWindow(
  rows: number,
  per: number,
  fn: (r0: number, n: number) => void,
): void {
  for (let r0 = 0; r0 < rows; r0 += per) fn(r0, Math.min(per, rows - r0));
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
  const sizes = tensors.map((t) => bytesPerElement(t.dtype));
  const widest = Math.max(...sizes);
  // Every tensor's window starts on an aligned byte offset (each element is a "row" here).
  const step = lcm(rowAlignment(...sizes), multiple);
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
