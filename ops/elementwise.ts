/**
 * Elementwise ops with NumPy broadcasting, their scalar forms, and comparisons. Each op is one
 * {@link mapN} kernel (ops/map.ts), compiled once per (expression, rank); shapes travel in a
 * uniform.
 * @module
 */
import { assertF32 } from "../core/dtype.ts";
import { recordOp } from "../core/tape.ts";
import type { Tensor } from "../core/tensor.ts";
import { mapN } from "./map.ts";
import { sumTo } from "./reduce.ts";

// Re-exported: part of the public API.
export { mapN };

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
