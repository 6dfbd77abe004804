/**
 * Reductions over axes (sum, mean, max) with keepdims, and `sumTo`, which folds a broadcast
 * gradient back onto an input shape. Large reductions to few outputs run in two passes so they
 * spread over all workgroups instead of looping in a handful of invocations.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import {
  collapseAxes,
  fmtShape,
  normalizeAxes,
  type Shape,
  sizeOf,
  stridesOf,
} from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { mapN } from "./map.ts";

type ReduceKind = "sum" | "max";

const SPLIT_MIN = 8192;
const MAX_CHUNK = 16384;

type Axes = { dims: number[]; strides: number[] };

// Invocation i computes part p = i % parts of output i / parts: the kept coordinates give the base
// offset, then the reduced elements [p·chunk, min((p+1)·chunk, total)) are walked in order.
const reduceKernelOf = kernelFamily((kind: ReduceKind, keptRank: number, redRank: number) => {
  const decode = (v: string, dims: string, strides: string, acc: string, rank: number) =>
    Array.from({ length: rank }, (_, k) => rank - 1 - k).map((d) =>
      `{ let c = ${v} % u_${dims}(${d}u); ${v} = ${v} / u_${dims}(${d}u); ${acc} += c * u_${strides}(${d}u); }`
    ).join("\n    ");
  const arrays = (names: string[], rank: number) =>
    rank === 0 ? {} : Object.fromEntries(names.map((n) => [n, ["u32", rank] as const]));
  return defineKernel({
    name: kind,
    inputs: { x: "f32" },
    outputs: { out: "f32" },
    uniforms: {
      // The identity of the reduction (0 or -inf): as a uniform, because WGSL refuses an
      // infinite constant expression (Tint does, Naga lets it pass).
      init: "f32",
      parts: "u32",
      chunk: "u32",
      total: "u32",
      ...arrays(["kd", "ks"], keptRank),
      ...arrays(["rd", "rs"], redRank),
    },
    grid: "flat",
    body: `  let p = i % u.parts;
  var rem = i / u.parts;
  var base = 0u;
  ${decode("rem", "kd", "ks", "base", keptRank)}
  let r0 = p * u.chunk;
  let r1 = min(r0 + u.chunk, u.total);
  var acc = u.init;
  for (var r = r0; r < r1; r++) {
    var rr = r;
    var off = base;
    ${decode("rr", "rd", "rs", "off", redRank)}
    ${kind === "sum" ? "acc = acc + load_x(off);" : "acc = max(acc, load_x(off));"}
  }
  store_out(i, acc);`,
  });
});

/** Reduces a flat f32 tensor described by kept/reduced (dims, strides) groups into `outShape`. */
function reduceKernel(kind: ReduceKind, x: Tensor, kept: Axes, red: Axes, outShape: Shape): Tensor {
  const outSize = sizeOf(kept.dims);
  const redSize = sizeOf(red.dims);
  if (outSize === 0) return Tensor.empty(outShape);
  if (redSize === 0) {
    if (kind === "max") throw new ShapeError(`max: cannot reduce over an empty axis`);
    return zeros(outShape);
  }
  // Two passes when few outputs each reduce many elements: P partials per output, then P -> 1.
  // Chunks also stay far below llvmpipe's silent cap of 65535 loop iterations per invocation.
  const parts = Math.max(
    outSize < 2048 && redSize > SPLIT_MIN ? Math.ceil(redSize / 2048) : 1,
    Math.ceil(redSize / MAX_CHUNK),
  );
  const chunk = Math.ceil(redSize / parts);
  const out = parts === 1 ? Tensor.empty(outShape) : Tensor.empty([outSize, parts]);
  const k = reduceKernelOf(kind, kept.dims.length, red.dims.length);
  k(
    { x, out },
    {
      n: outSize * parts,
      init: kind === "sum" ? 0 : -Infinity,
      parts,
      chunk,
      total: redSize,
      kd: kept.dims,
      ks: kept.strides,
      rd: red.dims,
      rs: red.strides,
    } as Parameters<typeof k>[1],
  );
  if (parts === 1) return out;
  const second = reduceKernel(kind, out, { dims: [outSize], strides: [parts] }, {
    dims: [parts],
    strides: [1],
  }, outShape);
  out.dispose();
  return second;
}

// Kept and reduced axes as separate (dims, strides) groups, each collapsed.
function split(shape: Shape, isRed: (d: number) => boolean): { kept: Axes; red: Axes } {
  const strides = stridesOf(shape);
  const group = (red: boolean): Axes => {
    const c = collapseAxes(shape.map((n, d) => (isRed(d) === red ? n : 1)), [strides]);
    return { dims: c.dims, strides: c.strides[0] };
  };
  return { kept: group(false), red: group(true) };
}

function reduceAxes(kind: ReduceKind, x: Tensor, axesList: number[], keepdims: boolean): Tensor {
  const isRed = (d: number) => axesList.includes(d);
  const { kept, red } = split(x.shape, isRed);
  const outShape = keepdims
    ? x.shape.map((n, d) => (isRed(d) ? 1 : n))
    : x.shape.filter((_, d) => !isRed(d));
  return reduceKernel(kind, x, kept, red, outShape);
}

function keepShape(x: Tensor, axes: number[]): number[] {
  return x.shape.map((n, d) => (axes.includes(d) ? 1 : n));
}

/** Sum over `axes` (default: all). */
export function sum(x: Tensor, axes?: number | readonly number[], keepdims = false): Tensor {
  assertF32("sum", x);
  const ax = normalizeAxes(axes, x.rank, "sum");
  const y = reduceAxes("sum", x, ax, keepdims);
  recordOp("sum", [x], y, (g) => [mapN("sum_grad", [g.view(keepShape(x, ax))], "v0", x.shape)]);
  return y;
}

/** Mean over `axes` (default: all). */
export function mean(x: Tensor, axes?: number | readonly number[], keepdims = false): Tensor {
  assertF32("mean", x);
  const ax = normalizeAxes(axes, x.rank, "mean");
  const count = ax.reduce((c, d) => c * x.shape[d], 1);
  const s = reduceAxes("sum", x, ax, keepdims);
  const y = mapN("mean", [s], "v0 * c0", undefined, [1 / count]);
  s.dispose();
  recordOp("mean", [x], y, (g) => [
    mapN("mean_grad", [g.view(keepShape(x, ax))], "v0 * c0", x.shape, [1 / count]),
  ]);
  return y;
}

/** Maximum over `axes` (default: all). The gradient is shared equally among tied maxima. */
export function max(x: Tensor, axes?: number | readonly number[], keepdims = false): Tensor {
  assertF32("max", x);
  const ax = normalizeAxes(axes, x.rank, "max");
  const y = reduceAxes("max", x, ax, keepdims);
  recordOp("max", [x], y, (g) => {
    const ks = keepShape(x, ax);
    const mask = mapN("max_mask", [x, y.view(ks)], "select(0.0, 1.0, v0 == v1)");
    const count = reduceAxes("sum", mask, ax, true);
    const gx = mapN("max_grad", [mask, g.view(ks), count], "v0 * v1 / v2");
    mask.dispose();
    count.dispose();
    return [gx];
  });
  return y;
}

/**
 * Sums `x` down to `shape`, the inverse of broadcasting `shape` up to `x.shape`: axes that `shape`
 * lacks or has as 1 are summed. Always returns a new handle.
 */
export function sumTo(x: Tensor, shape: Shape): Tensor {
  const off = x.rank - shape.length;
  const bad = off < 0 || shape.some((n, i) => n !== 1 && n !== x.shape[i + off]);
  if (bad) {
    throw new ShapeError(`sumTo: cannot sum ${fmtShape(x.shape)} down to ${fmtShape(shape)}`);
  }
  const axes = x.shape.map((_, d) => d).filter((d) =>
    d < off || shape[d - off] === 1 && x.shape[d] !== 1
  );
  if (axes.length === 0) return x.view(shape);
  const s = sum(x, axes, true);
  const y = s.view(shape);
  s.dispose();
  return y;
}
