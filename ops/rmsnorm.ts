/**
 * RMSNorm (LLaMA): `x * rsqrt(mean(x^2) + eps) * weight` over the last axis, with a fused forward
 * kernel that saves the per-row reciprocal RMS, a fused row kernel for dx and a deterministic
 * column-reduction kernel for dweight.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";

const FORWARD = defineKernel({
  name: "rms_norm",
  inputs: { x: "f32", w: "f32" },
  outputs: { y: "f32", rstd: "f32" },
  uniforms: { d: "u32", eps: "f32" },
  grid: "row",
  body: `  let base = r * u.d;
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += load_x(base + ${i}) * load_x(base + ${i});`)}
  let rs = inverseSqrt(${accCombine("s", "+")} / f32(u.d) + u.eps);
  store_rstd(r, rs);
  ${
    forUnrolled("j", "0u", "u.d", (i) =>
      `store_y(base + ${i}, load_x(base + ${i}) * rs * load_w(${i}));`)
  }`,
});

// dx_k = r * (g_k w_k - x_k * r^2 * mean_j(g_j w_j x_j)), r = rstd of the row.
const BACKWARD_X = defineKernel({
  name: "rms_norm_backward_x",
  inputs: { x: "f32", w: "f32", rstd: "f32", g: "f32" },
  outputs: { dx: "f32" },
  uniforms: { d: "u32" },
  grid: "row",
  body: `  let base = r * u.d;
  let rs = load_rstd(r);
  ${accDecl("s", "0.0")}
  ${
    forUnrolled("j", "0u", "u.d", (i, k) =>
      `s${k} += load_g(base + ${i}) * load_w(${i}) * load_x(base + ${i});`)
  }
  let c = rs * rs * ${accCombine("s", "+")} / f32(u.d);
  ${
    forUnrolled("j", "0u", "u.d", (i) =>
      `store_dx(base + ${i}, rs * (load_g(base + ${i}) * load_w(${i}) - load_x(base + ${i}) * c));`)
  }`,
});

// dweight_j = sum over rows of g * x * rstd: one invocation per column (four adjacent columns with
// vec4 loads where D allows: a quarter of the loads) walks the rows in order, so the sum is
// deterministic and race-free; adjacent invocations read adjacent addresses. Workgroups of 8 (one
// llvmpipe SIMD row), since there are only D (or D/4) columns to spread over the cores.
const backwardW = (t: "f32" | "vec4f") =>
  defineKernel({
    name: "rms_norm_backward_w",
    inputs: { x: t, rstd: "f32", g: t },
    outputs: { dw: t },
    uniforms: { rows: "u32" },
    grid: "flat",
    workgroupSize: 8,
    body: `  ${accDecl("s", t === "f32" ? "0.0" : "vec4f(0.0)")}
  ${
      forUnrolled(
        "r",
        "0u",
        "u.rows",
        (j, k) => `s${k} += g[${j} * u.n + i] * x[${j} * u.n + i] * rstd[${j}];`,
      )
    }
  dw[i] = ${accCombine("s", "+")};`,
  });
const BACKWARD_W = { f32: backwardW("f32"), vec4f: backwardW("vec4f") };

/**
 * @internal The weight gradient of RMSNorm, `Σ_rows g · x · rstd` per column of `x` [rows, D]
 * (`rstd` [rows] from the forward), shared with the fused residual + RMSNorm op.
 */
export function rmsNormWeightGrad(x: Tensor, rstd: Tensor, g: Tensor): Tensor {
  const d = x.shape[x.rank - 1];
  const dw = Tensor.empty([d]);
  const w = d % 4 === 0 ? 4 : 1;
  BACKWARD_W[w === 4 ? "vec4f" : "f32"]({ x, rstd, g, dw }, { n: d / w, rows: rstd.size });
  return dw;
}

/**
 * RMSNorm over the last axis: `x * rsqrt(mean(x^2, -1) + eps) * weight`, for `x` [..., D] and
 * `weight` [D] (both f32). Differentiable with respect to both.
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  const op = "rmsNorm";
  assertF32(op, ["x", x], ["weight", weight]);
  const d = x.shape[x.rank - 1];
  if (x.rank === 0 || weight.rank !== 1 || weight.shape[0] !== d) {
    throw new ShapeError(
      `${op}: weight must be [D] with D the last axis of x, got x ${fmtShape(x.shape)} and weight ${
        fmtShape(weight.shape)
      }`,
    );
  }
  if (!(eps >= 0)) throw new ShapeError(`${op}: eps must be >= 0, got ${eps}`);
  const rows = d === 0 ? 0 : x.size / d;
  checkLoopBudget(op, unrolledEdges(d, 2), `a row of ${d} elements`);
  checkLoopBudget(op, unrolledEdges(rows), `the weight gradient over ${rows} rows`);
  const y = Tensor.empty(x.shape);
  const rstd = Tensor.empty([rows]);
  FORWARD({ x, w: weight, y, rstd }, { rows, d, eps });
  if (!isRecording()) {
    rstd.dispose();
    return y;
  }
  recordOp(op, [x, weight], y, (g) => {
    const dx = Tensor.empty(x.shape);
    BACKWARD_X({ x, w: weight, rstd, g, dx }, { rows, d });
    return [dx, rmsNormWeightGrad(x, rstd, g)];
  }, [rstd]);
  return y;
}
