/**
 * Elementwise ops with NumPy broadcasting, their scalar forms, and comparisons. Each op is one
 * generated kernel; a kernel is compiled once per (expression, rank) and shapes travel in a uniform.
 * @module
 */
import { dispatch } from "../core/kernel.ts";
import { DTypeError } from "../core/errors.ts";
import {
  broadcastShapes,
  fmtShape,
  type Shape,
  shapesEqual,
  sizeOf,
  stridesOf,
} from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { sumTo } from "./reduce.ts";
import { flatGrid, flatMain, packUniforms, uget } from "./wgsl.ts";

/** Throws a DTypeError unless every tensor is f32. */
export function assertF32(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    if (t.dtype !== "f32") {
      throw new DTypeError(`${op}: expected an f32 tensor, got ${t.dtype} ${fmtShape(t.shape)}`);
    }
  }
}

/**
 * Collapses runs of axes that are contiguous in the output and in every input, so most broadcasts
 * become rank 1-3 and share pipelines.
 */
function collapse(out: Shape, strides: number[][]): { dims: number[]; strides: number[][] } {
  const dims: number[] = [];
  const st: number[][] = strides.map(() => []);
  for (let d = 0; d < out.length; d++) {
    if (out[d] === 1) continue;
    const k = dims.length - 1;
    const mergeable = k >= 0 && strides.every((s, j) => st[j][k] === s[d] * out[d]);
    if (mergeable) {
      dims[k] *= out[d];
      strides.forEach((s, j) => (st[j][k] = s[d]));
    } else {
      dims.push(out[d]);
      strides.forEach((s, j) => st[j].push(s[d]));
    }
  }
  return { dims, strides: st };
}

function broadcastStrides(inShape: Shape, out: Shape): number[] {
  const s = stridesOf(inShape);
  const off = out.length - inShape.length;
  return out.map((_, d) => (d < off || inShape[d - off] === 1 ? 0 : s[d - off]));
}

/**
 * Runs an n-ary elementwise kernel: `expr` is a WGSL f32 expression over `v0, v1, ...` (the
 * broadcast input values). Inputs are read as f32 unless `inTypes` says otherwise.
 */
export function mapN(
  name: string,
  inputs: readonly Tensor[],
  expr: string,
  outShape?: Shape,
  uniformsF32: readonly number[] = [],
): Tensor {
  const shape = outShape ??
    inputs.map((t) => t.shape).reduce((a, b) => broadcastShapes(a, b, name), [] as number[]);
  const out = Tensor.empty(shape);
  const n = sizeOf(shape);
  if (n === 0) return out;
  const same = inputs.every((t) => shapesEqual(t.shape, shape));
  const k = inputs.length;
  const decls = inputs.map((t, j) =>
    `@group(0) @binding(${j}) var<storage, read> in${j}: array<${t.dtype}>;`
  ).join("\n");
  const scal = uniformsF32.map((_, j) => `let c${j} = bitcast<f32>(${uget("c", j)});`).join("\n  ");
  let body: string;
  const fields: Record<string, number[]> = {
    n: [n],
    c: uniformsF32.map((c) => new Uint32Array(new Float32Array([c]).buffer)[0]),
  };
  const cast = (j: number) => (inputs[j].dtype === "f32" ? `in${j}[o${j}]` : `f32(in${j}[o${j}])`);
  if (same) {
    body = `  if (i >= ${uget("n", 0)}) { return; }
  ${scal}
  ${inputs.map((_, j) => `let o${j} = i;`).join(" ")}
  ${inputs.map((_, j) => `let v${j} = ${cast(j)};`).join(" ")}
  out[i] = ${expr};`;
  } else {
    const { dims, strides } = collapse(shape, inputs.map((t) => broadcastStrides(t.shape, shape)));
    fields.dims = dims;
    strides.forEach((s, j) => (fields[`s${j}`] = s));
    const r = dims.length;
    const lines: string[] = [];
    for (let d = r - 1; d >= 0; d--) {
      lines.push(`  { let c = rem % ${uget("dims", d)}; rem = rem / ${uget("dims", d)};`);
      for (let j = 0; j < k; j++) lines.push(`    o${j} += c * ${uget(`s${j}`, d)};`);
      lines.push("  }");
    }
    body = `  if (i >= ${uget("n", 0)}) { return; }
  ${scal}
  var rem = i;
  ${inputs.map((_, j) => `var o${j} = 0u;`).join(" ")}
${lines.join("\n")}
  ${inputs.map((_, j) => `let v${j} = ${cast(j)};`).join(" ")}
  out[i] = ${expr};`;
  }
  const { data, decl } = packUniforms(fields);
  const code = `${decls}
@group(0) @binding(${k}) var<storage, read_write> out: array<f32>;
${decl}
@group(0) @binding(${k + 1}) var<uniform> u: U;
${flatMain(body)}`;
  dispatch({
    name,
    code,
    inputs: inputs.map((t) => t.binding()),
    outputs: [out.binding()],
    uniforms: data,
    workgroups: flatGrid(n),
  });
  return out;
}

function unary(
  name: string,
  x: Tensor,
  expr: string,
  vjp: (g: Tensor, y: Tensor) => Tensor,
): Tensor {
  assertF32(name, x);
  const y = mapN(name, [x], expr);
  recordOp(name, [x], y, (g) => [vjp(g, y)]);
  return y;
}

/** a + b (broadcasting). */
export function add(a: Tensor, b: Tensor): Tensor {
  assertF32("add", a, b);
  const y = mapN("add", [a, b], "v0 + v1");
  recordOp("add", [a, b], y, (g) => [sumTo(g, a.shape), sumTo(g, b.shape)]);
  return y;
}

/** a - b (broadcasting). */
export function sub(a: Tensor, b: Tensor): Tensor {
  assertF32("sub", a, b);
  const y = mapN("sub", [a, b], "v0 - v1");
  recordOp("sub", [a, b], y, (g) => [sumTo(g, a.shape), sumTo(neg(g), b.shape)]);
  return y;
}

/** a * b (broadcasting). */
export function mul(a: Tensor, b: Tensor): Tensor {
  assertF32("mul", a, b);
  const y = mapN("mul", [a, b], "v0 * v1");
  recordOp("mul", [a, b], y, (g) => [sumTo(mul(g, b), a.shape), sumTo(mul(g, a), b.shape)]);
  return y;
}

/** a / b (broadcasting). */
export function div(a: Tensor, b: Tensor): Tensor {
  assertF32("div", a, b);
  const y = mapN("div", [a, b], "v0 / v1");
  recordOp("div", [a, b], y, (g) => [
    sumTo(div(g, b), a.shape),
    sumTo(mapN("div_grad_b", [g, a, b], "-v0 * v1 / (v2 * v2)"), b.shape),
  ]);
  return y;
}

/** -x. */
export function neg(x: Tensor): Tensor {
  return unary("neg", x, "-v0", (g) => neg(g));
}

/** e^x. */
export function exp(x: Tensor): Tensor {
  return unary("exp", x, "exp(v0)", (g, y) => mul(g, y));
}

/** Natural logarithm. */
export function log(x: Tensor): Tensor {
  return unary("log", x, "log(v0)", (g) => div(g, x));
}

/** Square root. */
export function sqrt(x: Tensor): Tensor {
  return unary("sqrt", x, "sqrt(v0)", (g, y) => mapN("sqrt_grad", [g, y], "0.5 * v0 / v1"));
}

/** 1 / sqrt(x). */
export function rsqrt(x: Tensor): Tensor {
  return unary(
    "rsqrt",
    x,
    "inverseSqrt(v0)",
    (g, y) => mapN("rsqrt_grad", [g, y], "-0.5 * v0 * v1 * v1 * v1"),
  );
}

/** x². */
export function square(x: Tensor): Tensor {
  return unary("square", x, "v0 * v0", (g) => mapN("square_grad", [g, x], "2.0 * v0 * v1"));
}

/** Logistic sigmoid 1 / (1 + e^-x), stable for large |x|. */
export function sigmoid(x: Tensor): Tensor {
  return unary(
    "sigmoid",
    x,
    "select(exp(v0) / (1.0 + exp(v0)), 1.0 / (1.0 + exp(-v0)), v0 >= 0.0)",
    (g, y) => mapN("sigmoid_grad", [g, y], "v0 * v1 * (1.0 - v1)"),
  );
}

const SIG = "select(exp(v1) / (1.0 + exp(v1)), 1.0 / (1.0 + exp(-v1)), v1 >= 0.0)";

/** SiLU (swish): x · sigmoid(x). */
export function silu(x: Tensor): Tensor {
  return unary(
    "silu",
    x,
    SIG.replaceAll("v1", "v0") + " * v0",
    (g) => mapN("silu_grad", [g, x], `v0 * ${SIG} * (1.0 + v1 * (1.0 - ${SIG}))`),
  );
}

/** max(x, 0). */
export function relu(x: Tensor): Tensor {
  return unary(
    "relu",
    x,
    "max(v0, 0.0)",
    (g) => mapN("relu_grad", [g, x], "select(0.0, v0, v1 > 0.0)"),
  );
}

/** x + c for a number c. */
export function addScalar(x: Tensor, c: number): Tensor {
  assertF32("addScalar", x);
  const y = mapN("addScalar", [x], "v0 + c0", undefined, [c]);
  recordOp("addScalar", [x], y, (g) => [g]);
  return y;
}

/** x · c for a number c. */
export function mulScalar(x: Tensor, c: number): Tensor {
  assertF32("mulScalar", x);
  const y = mapN("mulScalar", [x], "v0 * c0", undefined, [c]);
  recordOp("mulScalar", [x], y, (g) => [mulScalar(g, c)]);
  return y;
}

/** x^p for a number p (x ≥ 0 unless p is an integer). */
export function powScalar(x: Tensor, p: number): Tensor {
  assertF32("powScalar", x);
  const expr = Number.isInteger(p)
    ? "select(1.0, -1.0, v0 < 0.0 && (i32(c0) & 1) == 1) * pow(abs(v0), c0)"
    : "pow(v0, c0)";
  const y = mapN("powScalar", [x], expr, undefined, [p]);
  recordOp("powScalar", [x], y, (g) => [mulScalar(mul(g, powScalar(x, p - 1)), p)]);
  return y;
}

/** Elementwise choice: `a` where `cond` is nonzero, else `b` (all three broadcast). */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  assertF32("where", a, b);
  const y = mapN("where", [cond, a, b], "select(v2, v1, v0 != 0.0)");
  recordOp("where", [cond, a, b], y, (g) => [
    null,
    sumTo(mapN("where_grad_a", [cond, g], "select(0.0, v1, v0 != 0.0)"), a.shape),
    sumTo(mapN("where_grad_b", [cond, g], "select(v1, 0.0, v0 != 0.0)"), b.shape),
  ]);
  return y;
}

/** 1.0 where a > b, else 0.0 (broadcasting; not differentiable). */
export function greater(a: Tensor, b: Tensor): Tensor {
  return mapN("greater", [a, b], "select(0.0, 1.0, v0 > v1)");
}

/** 1.0 where a == b, else 0.0 (broadcasting; not differentiable). */
export function equal(a: Tensor, b: Tensor): Tensor {
  return mapN("equal", [a, b], "select(0.0, 1.0, v0 == v1)");
}

/** A copy of x (a new storage). */
export function copy(x: Tensor): Tensor {
  assertF32("copy", x);
  const y = mapN("copy", [x], "v0");
  recordOp("copy", [x], y, (g) => [g]);
  return y;
}
