/**
 * In-place elementwise kernels for update transforms: each consumes its first tensor (see
 * `core/donate.ts`) and writes the result into that tensor's buffer, so a chain of transforms and
 * `applyUpdates` allocate nothing per step. Any operand may be f32 or bf16 (arithmetic in f32; a
 * bf16 result is rounded once, to nearest even), and tensors of any size are processed window by
 * window.
 * @module
 */
import { defineKernel, kernelFamily, type StorageType } from "../core/define_kernel.ts";
import { donate } from "../core/donate.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import { maxWindowBytes } from "../core/windows.ts";
import { dispatchInGroups, elementwiseInPlace, multiTensorBody } from "./elementwise_kernel.ts";

const SCALE = elementwiseInPlace({
  name: "scale_inplace",
  uniforms: ["a"],
  elem: "  return u.a * load_x(k);",
});

const AXPBY = elementwiseInPlace({
  name: "axpby_inplace",
  reads: ["y"],
  uniforms: ["a", "b"],
  elem: "  return u.a * load_x(k) + u.b * load_y(k);",
});

const SCALE_BY_TENSOR = elementwiseInPlace({
  name: "scale_by_tensor_inplace",
  whole: ["s"],
  elem: "  return load_x(k) * load_s(0u);",
});

/** x ← a·x, in x's buffer; consumes `x` and returns the result's handle. */
export function scaleInPlace(x: Tensor, a: number): Tensor {
  return SCALE(x, {}, { a });
}

/**
 * x ← a·x + b·y, in x's buffer; consumes `x` (not `y`) and returns the result's handle. With a
 * bf16 `x` the sum is formed in f32 and rounded once.
 */
export function axpbyInPlace(x: Tensor, a: number, y: Tensor, b: number): Tensor {
  if (x.size !== y.size) {
    throw new ShapeError(`axpbyInPlace: x ${fmtShape(x.shape)} and y ${fmtShape(y.shape)} differ`);
  }
  return AXPBY(x, { y }, { a, b });
}

/**
 * x ← x·s[0] with `s` a one-element tensor (a scale computed on the device, read by no sync), in
 * x's buffer; consumes `x` and returns the result's handle.
 */
export function scaleByTensorInPlace(x: Tensor, s: Tensor): Tensor {
  if (s.size !== 1) {
    throw new ShapeError(
      `scaleByTensorInPlace: the scale must have one element, got ${fmtShape(s.shape)}`,
    );
  }
  return SCALE_BY_TENSOR(x, { s }, {});
}

// x_j ← x_j + y_j for k pairs laid end to end in one flat grid (see `multiTensorBody`).
const ADD_MANY = kernelFamily((k: number) => {
  const inputs: Record<string, StorageType> = {};
  const outputs: Record<string, StorageType> = {};
  for (let j = 0; j < k; j++) [inputs[`y${j}`], outputs[`x${j}`]] = ["f32", "f32"];
  return defineKernel({
    name: `add_many${k}`,
    inputs,
    outputs,
    uniforms: { ends: ["u32", k] as const },
    grid: "flat",
    body: multiTensorBody(k, (j) => `      store_x${j}(e, load_x${j}(e) + load_y${j}(e));`),
  });
});

/** Whether {@link addManyInPlace} takes the pair: f32, equal sizes, within one storage binding. */
export function addManyEligible(x: Tensor, y: Tensor): boolean {
  return x.dtype === "f32" && y.dtype === "f32" && x.size === y.size &&
    x.bytes <= maxWindowBytes();
}

/**
 * x_i ← x_i + y_i for every pair (each {@link addManyEligible}), up to 16 pairs per dispatch: the
 * same bits as `axpbyInPlace(x, 1, y, 1)` pair by pair in a fraction of the dispatches. Consumes
 * each x (not y) and returns the results in order.
 */
export function addManyInPlace(xs: readonly Tensor[], ys: readonly Tensor[]): Tensor[] {
  const out: Tensor[] = [];
  dispatchInGroups(xs.length, 2, 16, (n, j, bindings) => {
    if (!addManyEligible(xs[n], ys[n])) {
      throw new ShapeError(`addManyInPlace: pair ${n} is not two f32 tensors of one size`);
    }
    const x = donate(xs[n]);
    out.push(x);
    [bindings[`x${j}`], bindings[`y${j}`]] = [x, ys[n]];
    return x.size;
  }, (k, bindings, uniforms) => ADD_MANY(k)(bindings, uniforms));
  return out;
}
