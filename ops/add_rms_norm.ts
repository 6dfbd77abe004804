/**
 * The pre-norm residual step as one op: `h = x + y` and `n = rmsNorm(h) · weight` in one kernel,
 * both returned, and a backward whose row kernel also adds the gradient arriving at `h` from later
 * residual uses (one multi-output tape node: see `recordMultiOp`), so the residual stream needs
 * no separate add, norm and gradient-accumulation kernels.
 *
 * Two configurations (see ops/fused_target.ts): on software adapters one invocation per row with
 * vec4 loads (llvmpipe packs 8 rows into its SIMD lanes), on real GPUs one workgroup per row
 * with a tree reduction in workgroup memory. The weight gradient is RMSNorm's column reduction.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordMultiOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { fusedTarget } from "./fused_target.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { rmsNormWeightGrad } from "./rmsnorm.ts";

/** The result of {@link addRmsNorm}. */
export interface AddRmsNorm {
  /** `x + y`: the residual stream after this step. */
  readonly sum: Tensor;
  /** `rmsNorm(x + y) · weight`: the input of the next sublayer. */
  readonly normed: Tensor;
}

/** Threads per row of the workgroup (GPU) configuration. */
const WG = 64;

// Dispatch dimension limit: rows of the workgroup configuration wrap into y.
const MAX_X = 65535;

/**
 * A row kernel of two passes over the row's `dv` vectors: `first(i, k)` returns statements and a
 * term summed over the row, `mid` runs once with the row's sum as `total`, `second(i)` writes.
 * `i` is the vector index within the row (add `base` for the element in the tensor), `k` a
 * register suffix. Per row one invocation (cpu) or one workgroup with a tree reduction (gpu).
 */
function rowKernel(
  name: string,
  gpu: boolean,
  vt: "f32" | "vec4f",
  io: { inputs: Record<string, "f32" | "vec4f">; outputs: Record<string, "f32" | "vec4f"> },
  uniforms: Record<string, "f32" | "u32">,
  first: (i: string, k: number) => [string, string],
  mid: string,
  second: (i: string) => string,
): (bindings: Record<string, Tensor>, values: Record<string, number>) => void {
  const zero = vt === "vec4f" ? "vec4f(0.0)" : "0.0";
  const hsum = (x: string) => (vt === "vec4f" ? `dot(${x}, vec4f(1.0))` : x);
  if (!gpu) {
    const k = defineKernel({
      name,
      ...io,
      uniforms: { dv: "u32", ...uniforms },
      grid: "row",
      body: `  let base = r * u.dv;
  let lead = true;
  ${accDecl("a", zero)}
  ${
        forUnrolled("j", "0u", "u.dv", (i, k) => {
          const [stmts, term] = first(i, k);
          return `${stmts} a${k} += ${term};`;
        })
      }
  let total = ${hsum(accCombine("a", "+"))};
  ${mid}
  ${forUnrolled("j", "0u", "u.dv", second)}`,
    });
    return (b, v) => k(b, v as Parameters<typeof k>[1]);
  }
  const [stmts, term] = first("j", 0);
  const tree: string[] = [];
  for (let s = WG / 2; s >= 1; s /= 2) {
    tree.push(`if (lid.x < ${s}u) { red[lid.x] += red[lid.x + ${s}u]; }`, "workgroupBarrier();");
  }
  const k = defineKernel({
    name: `${name}_wg`,
    ...io,
    uniforms: { dv: "u32", rows: "u32", ...uniforms },
    grid: {
      workgroupSize: [WG],
      builtins: { wid: "workgroup_id", lid: "local_invocation_id" },
    },
    helpers: `var<workgroup> red: array<f32, ${WG}>;`,
    body: `  let r = wid.x + wid.y * ${MAX_X}u;
  if (r >= u.rows) { return; }
  let base = r * u.dv;
  let lead = lid.x == 0u;
  var a = ${zero};
  for (var j = lid.x; j < u.dv; j += ${WG}u) { ${stmts} a += ${term}; }
  red[lid.x] = ${hsum("a")};
  workgroupBarrier();
  ${tree.join("\n  ")}
  let total = red[0];
  ${mid}
  for (var j = lid.x; j < u.dv; j += ${WG}u) { ${second("j")} }`,
  });
  return (b, v) =>
    k(b, v as Parameters<typeof k>[1], [Math.min(v.rows, MAX_X), Math.ceil(v.rows / MAX_X)]);
}

const forward = kernelFamily((gpu: boolean, vec4: boolean) => {
  const vt = vec4 ? "vec4f" : "f32";
  return rowKernel(
    "add_rms_norm",
    gpu,
    vt,
    { inputs: { x: vt, y: vt, w: vt }, outputs: { h: vt, n: vt, rstd: "f32" } },
    { d: "f32", eps: "f32" },
    (
      i,
      k,
    ) => [`let h${k} = x[base + ${i}] + y[base + ${i}]; h[base + ${i}] = h${k};`, `h${k} * h${k}`],
    `let rs = inverseSqrt(total / u.d + u.eps);
  if (lead) { rstd[r] = rs; }`,
    (i) => `n[base + ${i}] = h[base + ${i}] * rs * w[${i}];`,
  );
});

// dx = gh + rs · (gn · w - h · rs² · mean(gn · w · h)); without gh when only n was used.
const backward = kernelFamily((gpu: boolean, vec4: boolean, residual: boolean) => {
  const vt = vec4 ? "vec4f" : "f32";
  return rowKernel(
    "add_rms_norm_backward",
    gpu,
    vt,
    {
      inputs: { h: vt, w: vt, rstd: "f32", gn: vt, ...(residual ? { gh: vt } : {}) },
      outputs: { dx: vt },
    },
    { d: "f32" },
    (i) => ["", `gn[base + ${i}] * w[${i}] * h[base + ${i}]`],
    `let rs = rstd[r];
  let c = rs * rs * total / u.d;`,
    (i) =>
      `dx[base + ${i}] = ${
        residual ? `gh[base + ${i}] + ` : ""
      }rs * (gn[base + ${i}] * w[${i}] - ` +
      `h[base + ${i}] * c);`,
  );
});

/**
 * The pre-norm residual step: `sum = x + y` and `normed = rmsNorm(sum) · weight` over the last
 * axis (`x`, `y` [..., D] of equal shapes, `weight` [D], all f32), as one kernel. Equals
 * `add(x, y)` and `rmsNorm(add(x, y), weight, eps)`; differentiable with respect to all three
 * inputs through either output.
 */
export function addRmsNorm(x: Tensor, y: Tensor, weight: Tensor, eps = 1e-6): AddRmsNorm {
  const op = "addRmsNorm";
  assertF32(op, ["x", x], ["y", y], ["weight", weight]);
  const d = x.shape[x.rank - 1];
  if (
    x.rank === 0 || !shapesEqual(x.shape, y.shape) || weight.rank !== 1 || weight.shape[0] !== d
  ) {
    throw new ShapeError(
      `${op}: x and y must be equal [..., D] and weight [D], got x ${fmtShape(x.shape)}, y ${
        fmtShape(y.shape)
      }, weight ${fmtShape(weight.shape)}`,
    );
  }
  if (!(eps >= 0)) throw new ShapeError(`${op}: eps must be >= 0, got ${eps}`);
  const rows = d === 0 ? 0 : x.size / d;
  const gpu = fusedTarget() === "gpu";
  const vec4 = d % 4 === 0;
  if (!gpu) checkLoopBudget(op, unrolledEdges(vec4 ? d / 4 : d, 2), `a row of ${d} elements`);
  checkLoopBudget(op, unrolledEdges(rows), `the weight gradient over ${rows} rows`);
  const sum = Tensor.empty(x.shape);
  const normed = Tensor.empty(x.shape);
  const rstd = Tensor.empty([rows]);
  const uniforms = { dv: vec4 ? d / 4 : d, d, rows };
  if (rows > 0) {
    forward(gpu, vec4)({ x, y, w: weight, h: sum, n: normed, rstd }, { ...uniforms, eps });
  }
  if (!isRecording()) {
    rstd.dispose();
    return { sum, normed };
  }
  recordMultiOp(op, [x, y, weight], [sum, normed], ([gh, gn]) => {
    if (!gn) return [gh, gh, null];
    const dx = Tensor.empty(x.shape);
    const inputs = { h: sum, w: weight, rstd, gn, ...(gh ? { gh } : {}) };
    backward(gpu, vec4, gh !== undefined)({ ...inputs, dx }, uniforms);
    return [dx, dx, rmsNormWeightGrad(sum, rstd, gn)];
  }, [rstd]);
  return { sum, normed };
}
