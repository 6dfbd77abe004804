/**
 * SwiGLU's gating, `silu(gate) · up`, as one fused kernel forward and one backward (both input
 * gradients in one pass), in place of the silu, mul and their three VJP kernels of the
 * composition. vec4 loads wherever the size allows (on llvmpipe loads are what costs; on GPUs a
 * vec4 flat kernel is the usual elementwise configuration), scalar otherwise; tensors larger than
 * one storage binding run window by window.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { forEachWindow } from "../core/windows.ts";

// Stable sigmoid with one exp: e = exp(-|x|) never overflows.
const sigmoid = (t: string) =>
  `fn sig(x: ${t}) -> ${t} { let e = exp(-abs(x)); ` +
  `return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= ${t}(0.0)); }`;

const forward = kernelFamily((vec4: boolean) => {
  const t = vec4 ? "vec4f" : "f32";
  return defineKernel({
    name: "swiglu",
    inputs: { gate: t, up: t },
    outputs: { y: t },
    grid: "flat",
    helpers: sigmoid(t),
    body: `  let a = gate[i];
  y[i] = a * sig(a) * up[i];`,
  });
});

// d/dgate = g · up · s · (1 + a · (1 - s)), d/dup = g · a · s, with s = sigmoid(a).
const backward = kernelFamily((vec4: boolean) => {
  const t = vec4 ? "vec4f" : "f32";
  return defineKernel({
    name: "swiglu_backward",
    inputs: { gate: t, up: t, g: t },
    outputs: { dgate: t, dup: t },
    grid: "flat",
    helpers: sigmoid(t),
    body: `  let a = gate[i];
  let s = sig(a);
  let gi = g[i];
  dup[i] = gi * a * s;
  dgate[i] = gi * up[i] * s * (1.0 + a * (1.0 - s));`,
  });
});

/**
 * SwiGLU's gating `silu(gate) · up` (f32, equal shapes), with `silu(x) = x · sigmoid(x)`: one
 * kernel forward, one backward for both gradients. Equals `mul(silu(gate), up)`.
 */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const op = "swiglu";
  assertF32(op, ["gate", gate], ["up", up]);
  if (!shapesEqual(gate.shape, up.shape)) {
    throw new ShapeError(
      `${op}: gate and up must have equal shapes, got ${fmtShape(gate.shape)} and ${
        fmtShape(up.shape)
      }`,
    );
  }
  const vec4 = gate.size % 4 === 0;
  const w = vec4 ? 4 : 1;
  const y = Tensor.empty(gate.shape);
  forEachWindow([gate, up, y], ([a, b, out], _, n) => {
    forward(vec4)({ gate: a, up: b, y: out }, { n: n / w });
  }, w);
  if (isRecording()) {
    recordOp(op, [gate, up], y, (g) => {
      const [dgate, dup] = [Tensor.empty(gate.shape), Tensor.empty(up.shape)];
      forEachWindow([gate, up, g, dgate, dup], ([a, b, gv, da, db], _, n) => {
        backward(vec4)({ gate: a, up: b, g: gv, dgate: da, dup: db }, { n: n / w });
      }, w);
      return [dgate, dup];
    });
  }
  return y;
}
