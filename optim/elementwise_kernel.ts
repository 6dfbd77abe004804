/**
 * The one shape of every elementwise optimizer kernel: a tensor `x` (f32 or bf16) rewritten in
 * place from itself, same-sized operands read or updated at the same index, and small operands
 * bound whole. Each kernel is generated per dtype combination, and runs window by window over
 * tensors larger than one storage binding. A bf16 `x` is written a pair of elements (one 32-bit
 * word) per invocation, computed in f32 and rounded once to nearest even.
 * @module
 */
import { gpuDevice } from "../core/device.ts";
import { donate } from "../core/donate.ts";
import { defineKernel, kernelFamily, type StorageType } from "../core/define_kernel.ts";
import { assertDType, type DType } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import { forEachWindow } from "../core/windows.ts";

/** The float dtypes optimizer kernels read and write (bf16 computed in f32). */
export const FLOAT_DTYPES: readonly DType[] = ["f32", "bf16"];

/** Declaration of an elementwise in-place kernel; see {@link elementwiseInPlace}. */
export interface ElementwiseSpec {
  /** Op name for errors and profiles. */
  name: string;
  /** Same-sized operands read at the element's index (f32 or bf16). */
  reads?: readonly string[];
  /** Same-sized f32 operands the body also updates at the element's index (`store_m(k, …)`). */
  updates?: readonly string[];
  /** Operands bound whole (e.g. a one-element scale computed on the device), f32. */
  whole?: readonly string[];
  /** f32 uniforms besides the window's element count. */
  uniforms?: readonly string[];
  /** Module-scope WGSL placed before `elem` (functions it calls). */
  helpers?: string;
  /**
   * Statements of `fn elem(k: u32) -> f32`, returning the new value of x[k]: read operands with
   * `load_name(k)`, uniforms as `u.name`.
   */
  elem: string;
}

/**
 * Runs the kernel: checks the operands, consumes `x` (see `core/donate.ts`) and returns the handle
 * of the result, written into x's buffer. Operands are only read (or, for `updates`, written in
 * place: donate them first).
 */
export type ElementwiseInPlace = (
  x: Tensor,
  operands: Readonly<Record<string, Tensor>>,
  uniforms: Readonly<Record<string, number>>,
) => Tensor;

/**
 * Builds an elementwise kernel that rewrites `x` in place, `x[k] = elem(k)` for every k, generated
 * once per combination of operand dtypes. Same-sized operands are bound window by window with `x`
 * (windows start on even elements, so no bf16 word straddles two); `whole` operands whole.
 */
export function elementwiseInPlace(spec: ElementwiseSpec): ElementwiseInPlace {
  const reads = spec.reads ?? [];
  const updates = spec.updates ?? [];
  const whole = spec.whole ?? [];
  const make = kernelFamily((xType: DType, readTypes: DType[]) => {
    const pairs = xType === "bf16";
    const inputs: Record<string, StorageType> = {};
    reads.forEach((r, i) => (inputs[r] = readTypes[i] as StorageType));
    for (const w of whole) inputs[w] = "f32";
    const outputs: Record<string, StorageType> = { x: xType as StorageType };
    for (const m of updates) outputs[m] = "f32";
    const uniforms: Record<string, "f32" | "u32"> = { count: "u32" };
    for (const name of spec.uniforms ?? []) uniforms[name] = "f32";
    return defineKernel({
      name: spec.name,
      inputs,
      outputs,
      uniforms,
      grid: "flat",
      helpers: `${spec.helpers ?? ""}\nfn elem(k: u32) -> f32 {\n${spec.elem}\n}`,
      // A bf16 invocation owns the word of elements 2i, 2i+1 (the second absent at an odd end).
      body: pairs
        ? `  let k = 2u * i;
  let a = elem(k);
  var b = 0.0;
  if (k + 1u < u.count) { b = elem(k + 1u); }
  store_x_pair(i, a, b);`
        : "  store_x(i, elem(i));",
    });
  });
  return (x, operands, uniforms) => {
    const get = (name: string) => {
      const t = operands[name];
      if (t === undefined) throw new TypeError(`${spec.name}: missing operand ${name}`);
      return t;
    };
    const names = [...reads, ...updates];
    const same = names.map(get);
    const small = whole.map(get);
    assertDType(spec.name, FLOAT_DTYPES, ["x", x], ...reads.map((r, i) => [r, same[i]] as const));
    assertDType(spec.name, ["f32"], ...updates.map((m, i) => [m, same[reads.length + i]] as const));
    assertDType(spec.name, ["f32"], ...whole.map((w, i) => [w, small[i]] as const));
    for (const [i, t] of same.entries()) {
      if (t.size !== x.size) {
        throw new ShapeError(
          `${spec.name}: ${names[i]} ${fmtShape(t.shape)} and x ${
            fmtShape(x.shape)
          } differ in size`,
        );
      }
    }
    const kernel = make(x.dtype, reads.map((_, i) => same[i].dtype));
    const out = donate(x);
    forEachWindow([out, ...same], ([xv, ...views], _start, count) => {
      const bindings: Record<string, Tensor> = { x: xv };
      names.forEach((n, i) => (bindings[n] = views[i]));
      whole.forEach((n, i) => (bindings[n] = small[i]));
      const n = x.dtype === "bf16" ? Math.ceil(count / 2) : count;
      kernel(bindings, { ...uniforms, n, count });
    }, 2);
    return out;
  };
}

/**
 * The body of a multi-tensor kernel: k tensors laid end to end in one flat grid, with the uniform
 * array `ends` (`ends[j]` = elements of tensors 0..j). It finds the tensor `j` the flat index `i`
 * falls in and the element `e` there, then runs `step(j)`, the WGSL for element `e` of tensor j.
 */
export function multiTensorBody(k: number, step: (j: number) => string): string {
  const cases = Array.from({ length: k }, (_, j) => `    case ${j}u: {\n${step(j)}\n    }`);
  return `  var j = 0u;
  loop {
    if (j + 1u >= ${k}u || i < u_ends(j)) { break; }
    j += 1u;
  }
  let e = i - select(0u, u_ends(max(j, 1u) - 1u), j > 0u);
  switch j {
${cases.join("\n")}
    default: {}
  }`;
}

/**
 * Records a multi-tensor kernel over `count` items, at most `most` per dispatch and no more than
 * the adapter's storage bindings allow at `bindingsPerItem` each: `bind(n, j, bindings)` binds
 * item n as the dispatch's slot j and returns its element count; `run(k, bindings, uniforms)`
 * records the dispatch of k items (`uniforms` holds `ends` and the grid's `n`).
 */
export function dispatchInGroups(
  count: number,
  bindingsPerItem: number,
  most: number,
  bind: (n: number, j: number, bindings: Record<string, Tensor>) => number,
  run: (
    k: number,
    bindings: Record<string, Tensor>,
    uniforms: { ends: number[]; n: number },
  ) => void,
): void {
  const limit = Math.floor(gpuDevice().limits.maxStorageBuffersPerShaderStage / bindingsPerItem);
  const per = Math.max(1, Math.min(most, limit));
  for (let start = 0; start < count; start += per) {
    const bindings: Record<string, Tensor> = {};
    const ends: number[] = [];
    for (let n = start; n < Math.min(count, start + per); n++) {
      ends.push((ends.at(-1) ?? 0) + bind(n, n - start, bindings));
    }
    const total = ends.at(-1)!;
    if (total > 0) run(ends.length, bindings, { ends, n: total });
  }
}
