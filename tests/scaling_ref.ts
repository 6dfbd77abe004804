/**
 * What the Fira and APOLLO tests share: float64 CPU references of their steps (after the reference
 * code, xichen-fy/Fira `fira_adamw.py` and zhuhanqing/APOLLO `apollo.py`), with Adam as
 * `scaleByAdam` computes it (matrices are row-major Float64Arrays), and a few-step training driver.
 */
import { memoryStats } from "../core/memory.ts";
import type { TensorData } from "../core/dtype.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { applyUpdates, type GradientTransformation } from "../optim/mod.ts";
import { mm, randomArr } from "./util.ts";

/** Uploads row-major data as an f32 tensor. */
export const up = (d: ArrayLike<number>, shape: number[]): Tensor =>
  tensor(Float32Array.from(d), shape);

/** Seeded f32-rounded random matrix data in [lo, hi]. */
export const rand = (shape: number[], seed: number, lo = -1, hi = 1): Float64Array =>
  randomArr(shape, seed, lo, hi).data;

/**
 * `steps` updates of `opt` (applied) on seeded matrices of `shapes` with seeded gradients: the
 * final parameters, the state's bytes, and the live bytes the run kept (state only, if nothing
 * leaks). Everything is disposed.
 */
export async function trainMatrices(
  opt: GradientTransformation,
  shapes: number[][],
  steps = 3,
): Promise<{ params: TensorData[]; stateBytes: number; keptBytes: number }> {
  let params = shapes.map((s, i) => up(rand(s, i), s));
  const live0 = memoryStats().liveBytes;
  let state = opt.init(params);
  for (let t = 0; t < steps; t++) {
    const grads = shapes.map((s, i) => up(rand(s, 20 + 2 * t + i), s));
    const res = await opt.update(grads, state, params);
    state = res.state;
    params = applyUpdates(params, res.updates);
  }
  const stateBytes = tree.bytes(state);
  const keptBytes = memoryStats().liveBytes - live0;
  const out = await readAll(params);
  tree.dispose([params, state]);
  return { params: out, stateBytes, keptBytes };
}

/** Projector side and shapes of an [m, n] gradient at rank r (GaLore's rule: left when m < n). */
export interface RefGeometry {
  m: number;
  n: number;
  r: number;
  left: boolean;
}

/** R = Pᵀ·G [r, n] (left, P [m, r]) or G·Pᵀ [m, r] (right, P [r, n]). */
export function projectRef(g: ArrayLike<number>, p: ArrayLike<number>, geo: RefGeometry) {
  const { m, n, r, left } = geo;
  return left ? mm(p, g, r, m, n, true) : mm(g, p, m, n, r, false, true);
}

/** P·N [m, n] (left) or N·P (right). */
export function projectBackRef(x: ArrayLike<number>, p: ArrayLike<number>, geo: RefGeometry) {
  const { m, n, r, left } = geo;
  return left ? mm(p, x, m, r, n) : mm(x, p, m, r, n);
}

/** Adam's moments and direction m̂ / (√v̂ + eps) for a flat array, as `scaleByAdam` (in place on m, v). */
export function adamDirection(
  m: Float64Array,
  v: Float64Array,
  g: ArrayLike<number>,
  t: number,
  b1 = 0.9,
  b2 = 0.999,
  eps = 1e-8,
): Float64Array {
  const out = new Float64Array(g.length);
  const bc1 = 1 - b1 ** t, bc2 = 1 - b2 ** t;
  for (let i = 0; i < g.length; i++) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    out[i] = (m[i] / bc1) / (Math.sqrt(v[i] / bc2) + eps);
  }
  return out;
}

/**
 * Norms of the channels of a [rows, cols] matrix: per row, per column, or one over all
 * ("tensor").
 */
export function channelNormsRef(
  x: ArrayLike<number>,
  rows: number,
  cols: number,
  channels: "rows" | "columns" | "tensor",
): Float64Array {
  const out = new Float64Array(channels === "rows" ? rows : channels === "columns" ? cols : 1);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const c = channels === "rows" ? i : channels === "columns" ? j : 0;
      out[c] += x[i * cols + j] ** 2;
    }
  }
  return out.map(Math.sqrt);
}

/** x·φ, one factor per channel of the [rows, cols] matrix x. */
export function scaleChannelsRef(
  x: ArrayLike<number>,
  phi: ArrayLike<number>,
  cols: number,
  channels: "rows" | "columns" | "tensor",
): Float64Array {
  return Float64Array.from(x, (v, e) => {
    const c = channels === "rows" ? Math.floor(e / cols) : channels === "columns" ? e % cols : 0;
    return v * phi[c];
  });
}

/** φ = ‖N_c‖ / (‖R_c‖ + 1e-8) per channel. */
export function phiRef(
  n: ArrayLike<number>,
  r: ArrayLike<number>,
  rows: number,
  cols: number,
  channels: "rows" | "columns" | "tensor",
): Float64Array {
  const nn = channelNormsRef(n, rows, cols, channels);
  const nr = channelNormsRef(r, rows, cols, channels);
  return nn.map((a, c) => a / (nr[c] + 1e-8));
}

/**
 * The reference's norm-growth limiter on x (in place): returns the new stored norm and whether
 * it limited. `prev` null = the first step.
 */
export function limiterRef(
  x: Float64Array,
  prev: number | null,
  gamma: number,
): { prev: number; limited: boolean } {
  let s = 0;
  for (const v of x) s += v * v;
  const norm = Math.sqrt(s);
  if (prev === null) return { prev: norm, limited: false };
  const lim = Math.max(norm / (prev + 1e-8), gamma) / gamma;
  for (let i = 0; i < x.length; i++) x[i] /= lim;
  return { prev: norm / lim, limited: lim > 1 };
}
