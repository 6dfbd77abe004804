/**
 * What Fira and APOLLO share: a full-size matrix scaled by the ratio of two norms taken in a
 * projected space — per channel (a row or a column) or over the whole tensor — Fira's norm-growth
 * limiter, and their option checks and state init. Everything stays on the device: norms, ratios
 * and the limiter's factor are small tensors, so neither method ever waits for the GPU.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { donate } from "../core/donate.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "../ops/loop.ts";
import { globalNorm } from "./clip.ts";
import { type ProjectionGeometry, projectionGeometry } from "./galore.ts";
import { scaleByTensorInPlace, scaleInPlace } from "./inplace.ts";
import type { GradientTransformation } from "./transform.ts";

/**
 * How a scaling factor is shared: `"rows"` one per row, `"columns"` one per column, `"tensor"`
 * one for the whole matrix.
 */
export type Channels = "rows" | "columns" | "tensor";

/** Added to a denominator norm, as in the reference code of Fira and APOLLO. */
export const NORM_EPS = 1e-8;

// One invocation per channel walks its `len` elements, channel c's k-th at c·cs + k·ks.
const CHANNEL_NORMS = defineKernel({
  name: "channel_norms",
  inputs: { x: "f32" },
  outputs: { y: "f32" },
  uniforms: { len: "u32", cs: "u32", ks: "u32" },
  grid: "flat",
  workgroupSize: 64,
  body: `  let base = i * u.cs;
  ${accDecl("s", "0.0")}
  ${
    forUnrolled("k", "0u", "u.len", (k, a) =>
      `{ let e = load_x(base + ${k} * u.ks); s${a} += e * e; }`)
  }
  store_y(i, sqrt(${accCombine("s", "+")}));`,
});

const RATIO = defineKernel({
  name: "norm_ratio",
  inputs: { den: "f32" },
  outputs: { num: "f32" },
  uniforms: { eps: "f32" },
  grid: "flat",
  body: `  store_num(i, load_num(i) / (load_den(i) + u.eps));`,
});

// mode 0: one factor; 1: per row (element i is in row i / cols); 2: per column (i % cols).
const SCALE_CHANNELS = defineKernel({
  name: "scale_channels",
  inputs: { phi: "f32" },
  outputs: { x: "f32" },
  uniforms: { cols: "u32", mode: "u32" },
  grid: "flat",
  body: `  let c = select(select(0u, i % u.cols, u.mode == 2u), i / u.cols, u.mode == 1u);
  store_x(i, load_x(i) * load_phi(c));`,
});

// Fira's limiter, as its reference code: the first step stores ‖x‖; later ones divide x by
// lim = max(‖x‖ / (prev + 1e-8), γ) / γ and store ‖x‖ / lim. One invocation; `factor` receives
// post / lim, which the caller multiplies x by.
const LIMITER = defineKernel({
  name: "norm_growth_limiter",
  inputs: { norm: "f32" },
  outputs: { prev: "f32", factor: "f32" },
  uniforms: { gamma: "f32", first: "u32", post: "f32", eps: "f32" },
  grid: { workgroupSize: [1] },
  body: `  let nrm = load_norm(0u);
  var lim = 1.0;
  if (u.first == 0u) { lim = max(nrm / (load_prev(0u) + u.eps), u.gamma) / u.gamma; }
  store_prev(0u, nrm / lim);
  store_factor(0u, u.post / lim);`,
});

function checkMatrix(op: string, x: Tensor): [number, number] {
  if (x.rank !== 2) throw new ShapeError(`${op}: needs a matrix, got ${fmtShape(x.shape)}`);
  return [x.shape[0], x.shape[1]];
}

/**
 * The L2 norm of each channel of matrix `x`: [rows] for `"rows"`, [cols] for `"columns"`, [1]
 * (the Frobenius norm) for `"tensor"`. A new tensor; `x` is only read.
 */
export function channelNorms(x: Tensor, channels: Channels): Tensor {
  const op = "channelNorms";
  assertF32(op, ["x", x]);
  if (channels === "tensor") return globalNorm(x);
  const [rows, cols] = checkMatrix(op, x);
  const perRow = channels === "rows";
  const [n, len] = perRow ? [rows, cols] : [cols, rows];
  checkLoopBudget(op, unrolledEdges(len), `a channel of ${len} elements`);
  const y = Tensor.empty([n]);
  CHANNEL_NORMS({ x, y }, { n, len, cs: perRow ? cols : 1, ks: perRow ? 1 : cols });
  return y;
}

/**
 * num ← num / (den + 1e-8) elementwise, in num's buffer: the scaling factors φ from the norms of
 * the transformed and of the raw projected gradient. Consumes `num` (not `den`).
 */
export function normRatioInPlace(num: Tensor, den: Tensor): Tensor {
  assertF32("normRatioInPlace", ["num", num], ["den", den]);
  if (num.size !== den.size) {
    throw new ShapeError(
      `normRatioInPlace: ${fmtShape(num.shape)} and ${fmtShape(den.shape)} norms differ`,
    );
  }
  const out = donate(num);
  RATIO({ den, num: out }, { n: out.size, eps: NORM_EPS });
  return out;
}

/**
 * x ← x·φ with one factor per channel of the matrix `x` (φ from {@link channelNorms}' shapes),
 * in x's buffer. Consumes `x` (not `phi`).
 */
export function scaleChannelsInPlace(x: Tensor, phi: Tensor, channels: Channels): Tensor {
  const op = "scaleChannelsInPlace";
  assertF32(op, ["x", x], ["phi", phi]);
  const [rows, cols] = checkMatrix(op, x);
  const want = channels === "rows" ? rows : channels === "columns" ? cols : 1;
  if (phi.size !== want) {
    throw new ShapeError(
      `${op}: ${channels} scaling of ${fmtShape(x.shape)} needs ${want} factors, got ${
        fmtShape(phi.shape)
      }`,
    );
  }
  const out = donate(x);
  const mode = channels === "tensor" ? 0 : channels === "rows" ? 1 : 2;
  SCALE_CHANNELS({ phi, x: out }, { n: out.size, cols, mode });
  return out;
}

/** Options of {@link limitNormGrowth}. */
export interface LimiterOptions {
  /** γ: the norm may grow by this factor per step (Fira: 1.01). */
  gamma: number;
  /** True on the first step, which only records the norm. */
  first: boolean;
  /** A constant the result is multiplied by after limiting (APOLLO's √scale); default 1. */
  post?: number;
}

/**
 * Fira's norm-growth limiter on `x`, with `prev` the norm stored by the previous step (a [1]
 * tensor): x ← x / lim · post with lim = max(‖x‖ / (prev + 1e-8), γ) / γ (1 on the first step), and
 * the stored norm becomes ‖x‖ / lim (the norm after limiting, before `post`). Consumes `x` and
 * `prev` and returns both, updated in their buffers.
 */
export function limitNormGrowth(
  x: Tensor,
  prev: Tensor,
  opts: LimiterOptions,
): { x: Tensor; prev: Tensor } {
  assertF32("limitNormGrowth", ["x", x], ["prev", prev]);
  if (prev.size !== 1) {
    throw new ShapeError(`limitNormGrowth: prev must hold one norm, got ${fmtShape(prev.shape)}`);
  }
  const norm = globalNorm(x);
  const stored = donate(prev);
  const factor = Tensor.empty([1]);
  LIMITER(
    { norm, prev: stored, factor },
    { gamma: opts.gamma, first: opts.first ? 1 : 0, post: opts.post ?? 1, eps: NORM_EPS },
    [1],
  );
  norm.dispose();
  const out = scaleByTensorInPlace(x, factor);
  factor.dispose();
  return { x: out, prev: stored };
}

/** Fira's and APOLLO's channels: the columns when the left side is projected (m < n), else the rows. */
export function channelsOf(geo: ProjectionGeometry): Channels {
  return geo.left ? "columns" : "rows";
}

/**
 * Checks what Fira and APOLLO share: a positive integer rank, a positive scale, a limiter γ that
 * is 0 (off) or at least 1, and a positive integer refresh gap. Throws a RangeError naming the
 * option.
 */
export function checkScalingOptions(
  op: string,
  o: { rank: number; scale: number; limiter: number; updateProjGap: number },
): void {
  if (!Number.isSafeInteger(o.rank) || o.rank < 1) {
    throw new RangeError(`${op}: rank must be a positive integer, got ${o.rank}`);
  }
  if (!(o.scale > 0) || !Number.isFinite(o.scale)) {
    throw new RangeError(`${op}: scale must be a finite number > 0, got ${o.scale}`);
  }
  if (!(o.limiter === 0 || (o.limiter >= 1 && Number.isFinite(o.limiter)))) {
    throw new RangeError(
      `${op}: limiter must be 0 (off) or a growth factor >= 1, got ${o.limiter}`,
    );
  }
  if (!Number.isSafeInteger(o.updateProjGap) || o.updateProjGap < 1) {
    throw new RangeError(
      `${op}: updateProjGap must be a positive integer, got ${o.updateProjGap}`,
    );
  }
}

/**
 * The projection geometry of each tensor of `t`, refusing any that is not 2-D or whose smaller side
 * is not above the rank (a full-rank "projection" leaves nothing for Fira's residual and makes
 * APOLLO's projection pointless): a ShapeError naming the parameter's path and shape.
 */
export function strictGeometries(op: string, t: unknown, rank: number): ProjectionGeometry[] {
  const paths = tree.paths(t);
  return tree.flatten(t).map((x, i) => {
    const geo = projectionGeometry(x, rank, op);
    if (rank >= Math.min(geo.m, geo.n)) {
      throw new ShapeError(
        `${op}: rank ${rank} must be < min(m, n) = ${Math.min(geo.m, geo.n)} of ${
          paths[i] || "the parameter"
        } ${fmtShape(x.shape)}`,
      );
    }
    return geo;
  });
}

/**
 * Init shared by Fira and APOLLO: the geometries of `params` (see {@link strictGeometries}), the
 * inner transform's state over the projected shapes, and one zero limiter norm per matrix (none
 * when `limiter` is 0).
 */
export function initScaled(
  op: string,
  inner: GradientTransformation,
  params: TensorTree,
  rank: number,
  limiter: number,
): { geos: ProjectionGeometry[]; inner: unknown; norm: Tensor[] } {
  const geos = strictGeometries(op, params, rank);
  // Shape stand-ins for the inner init (which reads shapes only), freed at once.
  const standIns = geos.map((g) => Tensor.empty(g.small));
  const innerState = inner.init(tree.unflatten(params, standIns));
  tree.dispose(standIns);
  return { geos, inner: innerState, norm: limiter > 0 ? geos.map(() => zeros([1])) : [] };
}

/** The limiter settings of one {@link scaleByNormRatio} call. */
export interface RatioLimit {
  /** γ, or 0 for no limiter. */
  gamma: number;
  /** True on the transform's first update. */
  first: boolean;
  /** The stored norm (consumed); required when γ > 0. */
  prev?: Tensor;
  /** Multiplies the result after the limiter; default 1. */
  post?: number;
}

/**
 * The step Fira and APOLLO share once the inner transform has mapped R to N: x ← x·φ with
 * φ = ‖N‖ / (‖R‖ + 1e-8) per channel (`den` = {@link channelNorms} of R), then the norm-growth
 * limiter and `post`. Consumes `x`, `den` and `limit.prev`; only reads `n`. Returns x and the new
 * stored norm (null without a limiter).
 */
export function scaleByNormRatio(
  x: Tensor,
  n: Tensor,
  den: Tensor,
  channels: Channels,
  limit: RatioLimit,
): { x: Tensor; prev: Tensor | null } {
  const phi = normRatioInPlace(channelNorms(n, channels), den);
  den.dispose();
  const scaled = scaleChannelsInPlace(x, phi, channels);
  phi.dispose();
  const post = limit.post ?? 1;
  if (limit.gamma > 0) {
    if (!limit.prev) throw new RangeError("scaleByNormRatio: the limiter needs the stored norm");
    return limitNormGrowth(scaled, limit.prev, { gamma: limit.gamma, first: limit.first, post });
  }
  return { x: post === 1 ? scaled : scaleInPlace(scaled, post), prev: null };
}
