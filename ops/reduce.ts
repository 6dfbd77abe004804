/**
 * Reductions over axes (sum, mean, max) with keepdims, and `sumTo`, which folds a broadcast
 * gradient back onto an input shape. Large reductions to few outputs run in two passes so they
 * spread over all workgroups instead of looping in a handful of invocations.
 * @module
 */
import { dispatch } from "../core/kernel.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, normalizeAxes, type Shape, sizeOf, stridesOf } from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { assertF32, mapN } from "./elementwise.ts";
import { flatGrid, flatMain, packUniforms, uget } from "./wgsl.ts";

type ReduceKind = "sum" | "max";

function merge(dims: number[], strides: number[]): { dims: number[]; strides: number[] } {
  const d: number[] = [];
  const s: number[] = [];
  dims.forEach((n, i) => {
    if (n === 1) return;
    const k = d.length - 1;
    if (k >= 0 && s[k] === strides[i] * n) {
      d[k] *= n;
      s[k] = strides[i];
    } else {
      d.push(n);
      s.push(strides[i]);
    }
  });
  return { dims: d, strides: s };
}

const SPLIT_MIN = 8192;
const MAX_CHUNK = 16384;

/** Reduces a flat f32 tensor described by kept/reduced (dims, strides) groups into `outShape`. */
function reduceKernel(
  kind: ReduceKind,
  x: Tensor,
  kept: { dims: number[]; strides: number[] },
  red: { dims: number[]; strides: number[] },
  outShape: Shape,
): Tensor {
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
  const { data, decl } = packUniforms({
    n: [outSize * parts, parts, chunk, redSize],
    kd: kept.dims,
    ks: kept.strides,
    rd: red.dims,
    rs: red.strides,
  });
  const keptDecode: string[] = [];
  for (let d = kept.dims.length - 1; d >= 0; d--) {
    keptDecode.push(
      `{ let c = rem % ${uget("kd", d)}; rem = rem / ${uget("kd", d)}; base += c * ${
        uget("ks", d)
      }; }`,
    );
  }
  const redDecode: string[] = [];
  for (let d = red.dims.length - 1; d >= 0; d--) {
    redDecode.push(
      `{ let c = rr % ${uget("rd", d)}; rr = rr / ${uget("rd", d)}; off += c * ${uget("rs", d)}; }`,
    );
  }
  const init = kind === "sum" ? "0.0" : "bitcast<f32>(0xff800000u)";
  const combine = kind === "sum" ? "acc = acc + x[off];" : "acc = max(acc, x[off]);";
  const code = `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
${decl}
@group(0) @binding(2) var<uniform> u: U;
${
    flatMain(`  if (i >= ${uget("n", 0)}) { return; }
  let p = i % ${uget("n", 1)};
  var rem = i / ${uget("n", 1)};
  var base = 0u;
  ${keptDecode.join("\n  ")}
  let r0 = p * ${uget("n", 2)};
  let r1 = min(r0 + ${uget("n", 2)}, ${uget("n", 3)});
  var acc = ${init};
  for (var r = r0; r < r1; r++) {
    var rr = r;
    var off = base;
    ${redDecode.join("\n    ")}
    ${combine}
  }
  out[i] = acc;`)
  }`;
  dispatch({
    name: kind,
    code,
    inputs: [x.binding()],
    outputs: [out.binding()],
    uniforms: data,
    workgroups: flatGrid(outSize * parts),
  });
  if (parts === 1) return out;
  const second = reduceKernel(kind, out, { dims: [outSize], strides: [parts] }, {
    dims: [parts],
    strides: [1],
  }, outShape);
  out.dispose();
  return second;
}

function reduceAxes(kind: ReduceKind, x: Tensor, axesList: number[], keepdims: boolean): Tensor {
  const strides = stridesOf(x.shape);
  const isRed = (d: number) => axesList.includes(d);
  const kept = merge(
    x.shape.map((n, d) => (isRed(d) ? 1 : n)),
    strides,
  );
  const red = merge(
    x.shape.map((n, d) => (isRed(d) ? n : 1)),
    strides,
  );
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
