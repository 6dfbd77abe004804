/**
 * RMSNorm (LLaMA): `x * rsqrt(mean(x^2) + eps) * weight` over the last axis, with a fused forward
 * kernel that saves the per-row reciprocal RMS, a fused row kernel for dx and a deterministic
 * column-reduction kernel for dweight.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch, grid1d } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";
import { rowGrid, rowMain } from "./wgsl.ts";

const UNIFORM = `
struct U { rows: u32, d: u32, eps: f32 }`;

const FORWARD = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${UNIFORM}
${
  rowMain(`  let base = r * u.d;
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += x[base + ${i}] * x[base + ${i}];`)}
  let rs = inverseSqrt(${accCombine("s", "+")} / f32(u.d) + u.eps);
  rstd[r] = rs;
  ${forUnrolled("j", "0u", "u.d", (i) => `y[base + ${i}] = x[base + ${i}] * rs * w[${i}];`)}`)
}`;

// dx_k = r * (g_k w_k - x_k * r^2 * mean_j(g_j w_j x_j)), r = rstd of the row.
const BACKWARD_X = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<uniform> u: U;
${UNIFORM}
${
  rowMain(`  let base = r * u.d;
  let rs = rstd[r];
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.d", (i, k) => `s${k} += g[base + ${i}] * w[${i}] * x[base + ${i}];`)}
  let c = rs * rs * ${accCombine("s", "+")} / f32(u.d);
  ${
    forUnrolled(
      "j",
      "0u",
      "u.d",
      (i) => `dx[base + ${i}] = rs * (g[base + ${i}] * w[${i}] - x[base + ${i}] * c);`,
    )
  }`)
}`;

// dweight_j = sum over rows of g * x * rstd: one invocation per column walks the rows in order, so
// the sum is deterministic and race-free; adjacent invocations read adjacent addresses.
const BACKWARD_W = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;
@group(0) @binding(4) var<uniform> u: U;
${UNIFORM}
const WG = 64u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = gid.x + gid.y * (nwg.x * WG);
  if (c >= u.d) { return; }
  ${accDecl("s", "0.0")}
  ${
  forUnrolled("r", "0u", "u.rows", (i, k) =>
    `s${k} += g[${i} * u.d + c] * x[${i} * u.d + c] * rstd[${i}];`)
}
  dw[c] = ${accCombine("s", "+")};
}`;

function uniforms(rows: number, d: number, eps: number): Uint32Array {
  const u = new Uint32Array(4);
  u[0] = rows;
  u[1] = d;
  new Float32Array(u.buffer)[2] = eps;
  return u;
}

/**
 * RMSNorm over the last axis: `x * rsqrt(mean(x^2, -1) + eps) * weight`, for `x` [..., D] and
 * `weight` [D] (both f32). Differentiable with respect to both.
 */
export function rmsNorm(x: Tensor, weight: Tensor, eps = 1e-6): Tensor {
  const op = "rmsNorm";
  if (x.dtype !== "f32" || weight.dtype !== "f32") {
    throw new DTypeError(
      `${op}: x and weight must be f32, got ${x.dtype} ${fmtShape(x.shape)} and ${weight.dtype} ${
        fmtShape(weight.shape)
      }`,
    );
  }
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
  const u = uniforms(rows, d, eps);
  const y = Tensor.empty(x.shape);
  const rstd = Tensor.empty([rows]);
  if (rows > 0) {
    dispatch({
      name: "rms_norm",
      code: FORWARD,
      inputs: [x.binding(), weight.binding()],
      outputs: [y.binding(), rstd.binding()],
      uniforms: u,
      workgroups: rowGrid(rows),
    });
  }
  if (!isRecording()) {
    rstd.dispose();
    return y;
  }
  recordOp(op, [x, weight], y, (g) => {
    const dx = Tensor.empty(x.shape);
    const dw = Tensor.empty([d]);
    if (rows > 0) {
      dispatch({
        name: "rms_norm_backward_x",
        code: BACKWARD_X,
        inputs: [x.binding(), weight.binding(), rstd.binding(), g.binding()],
        outputs: [dx.binding()],
        uniforms: u,
        workgroups: rowGrid(rows),
      });
    }
    if (d > 0) {
      dispatch({
        name: "rms_norm_backward_w",
        code: BACKWARD_W,
        inputs: [x.binding(), rstd.binding(), g.binding()],
        outputs: [dw.binding()],
        uniforms: u,
        workgroups: grid1d(d, 64),
      });
    }
    return [dx, dw];
  }, [rstd]);
  return y;
}
