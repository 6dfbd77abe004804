/**
 * Pure shape arithmetic: sizes, strides, broadcasting and axis normalization.
 * @module
 */
import { ShapeError } from "./errors.ts";

/** A tensor shape: one non-negative integer per axis; `[]` is a scalar. */
export type Shape = readonly number[];

/** Number of elements of a shape (1 for a scalar). */
export function sizeOf(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides of a shape, in elements. */
export function stridesOf(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** Formats a shape as `[2, 3]` for error messages. */
export function fmtShape(shape: Shape): string {
  return `[${shape.join(", ")}]`;
}

/** Throws unless every dimension is a non-negative safe integer. */
export function checkShape(shape: Shape, what = "shape"): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new ShapeError(`${what} ${fmtShape(shape)} has an invalid dimension ${d}`);
    }
  }
}

/** True when both shapes have the same rank and dimensions. */
export function shapesEqual(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** The NumPy broadcast of two shapes; throws a ShapeError naming the op when incompatible. */
export function broadcastShapes(a: Shape, b: Shape, op = "broadcast"): number[] {
  const n = Math.max(a.length, b.length);
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(
        `${op}: shapes ${fmtShape(a)} and ${
          fmtShape(b)
        } cannot be broadcast (axis ${i}: ${da} vs ${db})`,
      );
    }
    out[i] = da === 1 ? db : da;
  }
  return out;
}

/** Normalizes a possibly negative axis into `[0, rank)`; throws a ShapeError naming the op. */
export function normalizeAxis(axis: number, rank: number, op: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(axis) || a < 0 || a >= rank) {
    throw new ShapeError(`${op}: axis ${axis} is out of range for a tensor of rank ${rank}`);
  }
  return a;
}

/** Normalizes an axis list (undefined = all axes), sorted and without duplicates. */
export function normalizeAxes(
  axes: number | readonly number[] | undefined,
  rank: number,
  op: string,
): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === "number" ? [axes] : axes;
  const norm = list.map((a) => normalizeAxis(a, rank, op));
  if (new Set(norm).size !== norm.length) {
    throw new ShapeError(`${op}: repeated axis in [${list.join(", ")}]`);
  }
  return norm.sort((x, y) => x - y);
}

/**
 * Drops size-1 axes and merges neighbours that are contiguous in every stride list (the outer
 * stride equals the inner stride times the inner size), so a broadcast, reduction or transpose of
 * [B, T, H, D] usually runs at rank 1-3: fewer index divisions per element and fewer distinct
 * pipelines. Returns the merged sizes and one merged stride list per input list (empty when every
 * axis has size 1).
 */
export function collapseAxes(
  dims: Shape,
  strides: readonly (readonly number[])[],
): { dims: number[]; strides: number[][] } {
  const d: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let a = 0; a < dims.length; a++) {
    if (dims[a] === 1) continue;
    const k = d.length - 1;
    if (k >= 0 && strides.every((s, j) => st[j][k] === s[a] * dims[a])) {
      d[k] *= dims[a];
      strides.forEach((s, j) => (st[j][k] = s[a]));
    } else {
      d.push(dims[a]);
      strides.forEach((s, j) => st[j].push(s[a]));
    }
  }
  return { dims: d, strides: st };
}
