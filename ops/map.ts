/**
 * The n-ary elementwise kernel behind every elementwise op, with NumPy broadcasting: one generated
 * kernel per (expression, input dtypes, rank); shapes and strides travel in the uniform. Its own
 * module so that elementwise ops (which need `sumTo`) and reductions (which need `mapN`) import it
 * one way.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import type { DType } from "../core/dtype.ts";
import {
  broadcastShapes,
  collapseAxes,
  fmtShape,
  type Shape,
  shapesEqual,
  sizeOf,
  stridesOf,
} from "../core/shape.ts";
import { DeviceLimitError } from "../core/errors.ts";
import { Tensor } from "../core/tensor.ts";
import { forEachWindow, maxWindowBytes } from "../core/windows.ts";

function broadcastStrides(inShape: Shape, out: Shape): number[] {
  const s = stridesOf(inShape);
  const off = out.length - inShape.length;
  return out.map((_, d) => (d < off || inShape[d - off] === 1 ? 0 : s[d - off]));
}

type MapKernel = (
  bindings: Record<string, Tensor>,
  uniforms: Record<string, number | number[]>,
) => void;

/**
 * The kernel of `expr` over inputs of these dtypes, `consts` f32 constants and, unless `rank` is
 * -1 (all inputs shaped like the output), broadcast index decoding over `rank` collapsed axes.
 */
const mapKernel = kernelFamily((
  name: string,
  dtypes: readonly DType[],
  expr: string,
  consts: number,
  rank: number,
): MapKernel => {
  const inputs = Object.fromEntries(dtypes.map((t, j) => [`in${j}`, t]));
  const uniforms: Record<string, ["f32" | "u32", number]> = {};
  if (consts > 0) uniforms.c = ["f32", consts];
  if (rank > 0) {
    uniforms.dims = ["u32", rank];
    dtypes.forEach((_, j) => (uniforms[`s${j}`] = ["u32", rank]));
  }
  const ids = dtypes.map((_, j) => j);
  const decode: string[] = [];
  for (let d = rank - 1; d >= 0; d--) {
    decode.push(`  { let c = rem % u_dims(${d}u); rem = rem / u_dims(${d}u);`);
    for (const j of ids) decode.push(`    o${j} += c * u_s${j}(${d}u);`);
    decode.push("  }");
  }
  const offsets = rank === -1
    ? ids.map((j) => `let o${j} = i;`).join(" ")
    : `var rem = i;\n  ${ids.map((j) => `var o${j} = 0u;`).join(" ")}\n${decode.join("\n")}`;
  const load = (j: number) =>
    dtypes[j] === "f32" ? `load_in${j}(o${j})` : `f32(load_in${j}(o${j}))`;
  return defineKernel({
    name,
    inputs,
    outputs: { out: "f32" },
    uniforms,
    grid: "flat",
    body: `  ${Array.from({ length: consts }, (_, j) => `let c${j} = u_c(${j}u);`).join(" ")}
  ${offsets}
  ${ids.map((j) => `let v${j} = ${load(j)};`).join(" ")}
  store_out(i, ${expr});`,
  }) as unknown as MapKernel;
});

/**
 * Runs an n-ary elementwise kernel: `expr` is a WGSL f32 expression over `v0, v1, ...` (the
 * broadcast input values, integer and bf16 inputs converted to f32) and `c0, c1, ...` (the numbers
 * in `consts`). The output is f32, shaped `outShape` or the broadcast of the inputs' shapes.
 *
 * An output or input larger than one storage binding is processed in windows of the flat range:
 * inputs shaped like the output are bound window by window, one-element inputs (broadcast
 * scalars) whole. Other broadcasts at that size throw a DeviceLimitError.
 */
export function mapN(
  name: string,
  inputs: readonly Tensor[],
  expr: string,
  outShape?: Shape,
  consts: readonly number[] = [],
): Tensor {
  const shape = outShape ??
    inputs.map((t) => t.shape).reduce((a, b) => broadcastShapes(a, b, name), [] as number[]);
  const out = Tensor.empty(shape);
  const n = sizeOf(shape);
  if (n === 0) return out;
  const limit = maxWindowBytes();
  if (out.bytes > limit || inputs.some((t) => t.bytes > limit)) {
    mapWindows(name, inputs, out, expr, consts, limit);
    return out;
  }
  const bindings: Record<string, Tensor> = { out };
  inputs.forEach((t, j) => (bindings[`in${j}`] = t));
  const uniforms: Record<string, number | number[]> = { n, c: [...consts] };
  let rank = -1;
  if (!inputs.every((t) => shapesEqual(t.shape, shape))) {
    const { dims, strides } = collapseAxes(
      shape,
      inputs.map((t) => broadcastStrides(t.shape, shape)),
    );
    rank = dims.length;
    uniforms.dims = dims;
    strides.forEach((s, j) => (uniforms[`s${j}`] = s));
  }
  mapKernel(name, inputs.map((t) => t.dtype), expr, consts.length, rank)(bindings, uniforms);
  return out;
}

// Window by window over the flat range: full-size operands as views of each window, broadcast
// scalars whole (rank-1 decoding with stride 0).
function mapWindows(
  name: string,
  inputs: readonly Tensor[],
  out: Tensor,
  expr: string,
  consts: readonly number[],
  limit: number,
): void {
  const full = inputs.map((t) => t.size === out.size && t.size > 1);
  const bad = inputs.find((t, j) => !full[j] && t.size !== 1);
  if (bad) {
    out.dispose();
    throw new DeviceLimitError(
      `${name}: output ${fmtShape(out.shape)} (${out.bytes} bytes) exceeds one storage binding ` +
        `(${limit} bytes) and input ${fmtShape(bad.shape)} broadcasts into it; windows need ` +
        "inputs of the output's size or single elements",
    );
  }
  const big = inputs.filter((_, j) => full[j]);
  const kernel = mapKernel(name, inputs.map((t) => t.dtype), expr, consts.length, 1);
  // Window starts are multiples of the offset alignment (>= 4 elements): packed inputs start on
  // whole words.
  forEachWindow(
    [out, ...big],
    ([ov, ...views], _start, count) => {
      const bindings: Record<string, Tensor> = { out: ov };
      const uniforms: Record<string, number | number[]> = {
        n: count,
        c: [...consts],
        dims: [count],
      };
      let k = 0;
      inputs.forEach((t, j) => {
        bindings[`in${j}`] = full[j] ? views[k++] : t;
        uniforms[`s${j}`] = [full[j] ? 1 : 0];
      });
      kernel(bindings, uniforms);
    },
    1,
    limit,
  );
}
