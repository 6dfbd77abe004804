/**
 * Shape ops: reshape, transpose, slice, concat, broadcastTo and their helpers. Every copy is one
 * strided-copy kernel over 32-bit words (ops/strided.ts), so the ops work for every dtype;
 * gradients exist for f32.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import {
  fmtShape,
  normalizeAxis,
  type Shape,
  shapesEqual,
  sizeOf,
  stridesOf,
} from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { sumTo } from "./reduce.ts";
import { permuteCopy, stridedCopy } from "./strided.ts";

// ---------------------------------------------------------------------------------------------
// reshape, expandDims, squeeze

function checkDims(op: string, shape: readonly number[]): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new ShapeError(`${op}: invalid dimension ${d} in ${fmtShape(shape)}`);
    }
  }
}

/** Resolves a target shape with at most one `-1` (inferred so the size matches). */
function resolveShape(x: Tensor, shape: readonly number[]): number[] {
  const holes = shape.filter((d) => d === -1).length;
  const fail = (why: string) =>
    new ShapeError(`reshape: cannot reshape ${fmtShape(x.shape)} to ${fmtShape(shape)}: ${why}`);
  if (holes > 1) throw fail("more than one -1");
  checkDims("reshape", shape.filter((d) => d !== -1));
  if (holes === 0) {
    if (sizeOf(shape) !== x.size) throw fail(`sizes differ (${x.size} vs ${sizeOf(shape)})`);
    return [...shape];
  }
  const known = sizeOf(shape.filter((d) => d !== -1));
  if (known === 0 || x.size % known !== 0) {
    throw fail(`${x.size} elements do not divide into the known dimensions (${known})`);
  }
  return shape.map((d) => (d === -1 ? x.size / known : d));
}

/**
 * The same elements with another shape of equal size, without a copy (the result shares storage
 * with `x`). One dimension may be `-1` and is then inferred.
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const target = resolveShape(x, shape);
  const out = x.view(target);
  recordOp("reshape", [x], out, (g) => [g.view(x.shape)]);
  return out;
}

/** Inserts a size-1 axis at `axis` (in `[-rank-1, rank]`); a reshape, so no copy. */
export function expandDims(x: Tensor, axis: number): Tensor {
  const a = normalizeAxis(axis, x.rank + 1, "expandDims");
  const shape = [...x.shape];
  shape.splice(a, 0, 1);
  return reshape(x, shape);
}

/** Removes the given size-1 axes (default: every size-1 axis); a reshape, so no copy. */
export function squeeze(x: Tensor, axes?: number | readonly number[]): Tensor {
  let drop: number[];
  if (axes === undefined) {
    drop = x.shape.flatMap((d, i) => (d === 1 ? [i] : []));
  } else {
    const list = typeof axes === "number" ? [axes] : axes;
    drop = list.map((a) => normalizeAxis(a, x.rank, "squeeze"));
    for (const a of drop) {
      if (x.shape[a] !== 1) {
        throw new ShapeError(
          `squeeze: axis ${a} of ${fmtShape(x.shape)} has size ${x.shape[a]}, not 1`,
        );
      }
    }
  }
  return reshape(x, x.shape.filter((_, i) => !drop.includes(i)));
}

// ---------------------------------------------------------------------------------------------
// transpose

/**
 * Permutes the axes: `out.shape[j] = x.shape[perm[j]]`. `perm` defaults to reversing the axes.
 * Copies (one kernel); the identity permutation returns a view.
 */
export function transpose(x: Tensor, perm?: readonly number[]): Tensor {
  const rank = x.rank;
  const p = perm ?? Array.from({ length: rank }, (_, i) => rank - 1 - i);
  const sorted = [...p].sort((a, b) => a - b);
  if (p.length !== rank || !sorted.every((v, i) => v === i)) {
    throw new ShapeError(
      `transpose: [${p.join(", ")}] is not a permutation of the ${rank} axes of ${
        fmtShape(x.shape)
      }`,
    );
  }
  const inv = new Array<number>(rank);
  p.forEach((v, j) => (inv[v] = j));
  const vjp = (g: Tensor) => [transpose(g, inv)];
  if (p.every((v, i) => v === i)) {
    const out = x.view(x.shape);
    recordOp("transpose", [x], out, vjp);
    return out;
  }
  const out = permuteCopy(x, p);
  recordOp("transpose", [x], out, vjp);
  return out;
}

/** Alias of {@link transpose} with a required permutation. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  return transpose(x, perm);
}

// ---------------------------------------------------------------------------------------------
// slice

/**
 * The block of `x` starting at `begin` with extent `size` per axis (TensorFlow's `slice`).
 * `begin` and `size` may be shorter than the rank (missing axes are taken whole); a size of `-1`
 * means "to the end of that axis". Throws a ShapeError if the block leaves `x`.
 */
export function slice(x: Tensor, begin: readonly number[], size?: readonly number[]): Tensor {
  const rank = x.rank;
  const bad = (why: string) =>
    new ShapeError(
      `slice: begin [${begin.join(", ")}] size [${(size ?? []).join(", ")}] ${why} for ${
        fmtShape(x.shape)
      }`,
    );
  if (begin.length > rank || (size && size.length > rank)) {
    throw bad("has more axes than the tensor");
  }
  const b: number[] = [];
  const sz: number[] = [];
  for (let d = 0; d < rank; d++) {
    const bd = begin[d] ?? 0;
    const sd0 = size?.[d] ?? -1;
    if (!Number.isSafeInteger(bd) || bd < 0 || bd > x.shape[d]) {
      throw bad(`is out of range on axis ${d}`);
    }
    const sd = sd0 === -1 ? x.shape[d] - bd : sd0;
    if (!Number.isSafeInteger(sd) || sd < 0 || bd + sd > x.shape[d]) {
      throw bad(`is out of range on axis ${d}`);
    }
    b.push(bd);
    sz.push(sd);
  }
  const xs = stridesOf(x.shape);
  const off = b.reduce((acc, bd, d) => acc + bd * xs[d], 0);
  const vjp = (g: Tensor) => [padInto(g, x.shape, off)];
  if (shapesEqual(sz, x.shape)) {
    const out = x.view(x.shape);
    recordOp("slice", [x], out, vjp);
    return out;
  }
  const out = Tensor.empty(sz, x.dtype);
  stridedCopy("slice", "gather", x, out, sz, xs, off);
  recordOp("slice", [x], out, vjp);
  return out;
}

/** Zeros of `shape` with `g` written at flat offset `off` (the VJP of slice). */
function padInto(g: Tensor, shape: Shape, off: number): Tensor {
  const out = zeros(shape, g.dtype);
  stridedCopy("slice_vjp", "scatter", g, out, g.shape, stridesOf(shape), off);
  return out;
}

// ---------------------------------------------------------------------------------------------
// concat

/**
 * Joins tensors along `axis`; all must have the same dtype and rank and agree on every other
 * axis. A single input is returned as a view.
 */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new ShapeError("concat: needs at least one tensor");
  const first = xs[0];
  const a = normalizeAxis(axis, first.rank, "concat");
  const shapes = xs.map((x) => fmtShape(x.shape)).join(", ");
  for (const x of xs) {
    if (x.dtype !== first.dtype) {
      throw new DTypeError(`concat: mixed dtypes ${xs.map((t) => t.dtype).join(", ")}`);
    }
    if (x.rank !== first.rank || x.shape.some((d, i) => i !== a && d !== first.shape[i])) {
      throw new ShapeError(`concat: shapes ${shapes} do not agree outside axis ${a}`);
    }
  }
  const outShape = [...first.shape];
  outShape[a] = xs.reduce((acc, x) => acc + x.shape[a], 0);
  const starts: number[] = [];
  let acc = 0;
  for (const x of xs) {
    starts.push(acc);
    acc += x.shape[a];
  }
  const vjp = (g: Tensor) =>
    xs.map((x, i) => {
      const begin = new Array<number>(x.rank).fill(0);
      begin[a] = starts[i];
      return slice(g, begin, x.shape);
    });
  if (xs.length === 1) {
    const out = first.view(first.shape);
    recordOp("concat", xs, out, vjp);
    return out;
  }
  const out = Tensor.empty(outShape, first.dtype);
  const os = stridesOf(outShape);
  xs.forEach((x, i) => stridedCopy("concat", "scatter", x, out, x.shape, os, starts[i] * os[a]));
  recordOp("concat", xs, out, vjp);
  return out;
}

/** Stacks equal-shaped tensors along a new axis `axis` (concat of `expandDims`). */
export function stack(xs: readonly Tensor[], axis = 0): Tensor {
  if (xs.length === 0) throw new ShapeError("stack: needs at least one tensor");
  const a = normalizeAxis(axis, xs[0].rank + 1, "stack");
  for (const x of xs) {
    if (!shapesEqual(x.shape, xs[0].shape)) {
      throw new ShapeError(`stack: shapes ${xs.map((t) => fmtShape(t.shape)).join(", ")} differ`);
    }
  }
  const parts = xs.map((x) => expandDims(x, a));
  const out = concat(parts, a);
  if (parts.length > 1) { for (const p of parts) p.dispose(); }
  return out;
}

// ---------------------------------------------------------------------------------------------
// broadcastTo

/**
 * Broadcasts `x` to `shape` by NumPy rules (axes aligned on the right; each of `x`'s axes must be 1
 * or equal to the target's). Copies (one kernel); an equal shape returns a view. The VJP sums the
 * gradient back with `sumTo`.
 */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  checkDims("broadcastTo", shape);
  const lead = shape.length - x.rank;
  const fail = () =>
    new ShapeError(`broadcastTo: cannot broadcast ${fmtShape(x.shape)} to ${fmtShape(shape)}`);
  if (lead < 0) throw fail();
  const xs = stridesOf(x.shape);
  const strides = shape.map((d, j) => {
    if (j < lead) return 0;
    const xd = x.shape[j - lead];
    if (xd === d) return xs[j - lead];
    if (xd === 1) return 0;
    throw fail();
  });
  const vjp = (g: Tensor) => [sumTo(g, x.shape)];
  if (shapesEqual(shape, x.shape)) {
    const out = x.view(x.shape);
    recordOp("broadcastTo", [x], out, vjp);
    return out;
  }
  const out = Tensor.empty(shape, x.dtype);
  stridedCopy("broadcastTo", "gather", x, out, shape, strides, 0);
  recordOp("broadcastTo", [x], out, vjp);
  return out;
}
