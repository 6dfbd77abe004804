/**
 * APOLLO and APOLLO-Mini (Zhu et al. 2024, arXiv 2412.05270) as transforms: Adam's moments live in
 * a random rank-r projection of each gradient and serve only to measure, channel by channel (or
 * over the whole tensor), how much Adam would rescale the gradient; the update is the raw full
 * gradient scaled by that, under Fira's norm-growth limiter. The projection is regenerated from a
 * seed on the device at every step: the state holds the moments and one norm per matrix, nothing
 * else, and no step ever waits for the GPU (no SVD, no readback).
 *
 * The random matrix, exactly (the same bits on every device; {@link apolloProjectionCpu}
 * regenerates it on the CPU):
 * - side and shape: as GaLore's, the smaller side is projected: P [m, r] with R = Pᵀ·G when m < n,
 *   else P [r, n] with R = G·Pᵀ;
 * - per-refresh key: refresh k = ⌊count / T⌋ (a new matrix at count 0, T, 2T, …, as the reference's
 *   `iter % update_proj_gap == 0`); key = h(h(h(seed) ⊕ fnv1a(path)) ⊕ k), with h the 32-bit
 *   integer hash "lowbias32" (x ^= x≫16; x *= 0x7feb352d; x ^= x≫15; x *= 0x846ca68b; x ^= x≫16),
 *   fnv1a the 32-bit FNV-1a hash of the parameter's path in UTF-8 (e.g. `layers.0.attn.q.w`), ⊕
 *   XOR (a seed of 2³² or more enters as h(lo ⊕ h(hi)) of its 32-bit words). So every matrix and
 *   every refresh gets its own matrix, identical whether the parameter is updated alone
 *   (`perLayer`), in a group (`partition`) or with the whole tree;
 * - entry e (row-major index into P): x = h(key ⊕ h(e)); w_j = h(x + j·0x9e3779b9 mod 2³²) for
 *   j = 1..6; S = the sum of the twelve 16-bit halves of w_1..w_6; P[e] = (S − 393210) · c with
 *   c = f32(2⁻¹⁶/√r). S − 393210 is an Irwin–Hall sum of twelve uniforms, centred, with variance
 *   2³² − 1, so P's entries are approximately N(0, 1/r) — the reference's `randn / √r` — bounded by
 *   6/√r. Integer arithmetic up to one exact int→f32 conversion and one correctly rounded f32
 *   multiply: bit-identical on every WebGPU device and in the CPU regeneration.
 *
 * The reference draws from `torch.randn` seeded by the parameter's index and advanced by
 * `next_seed` at each refresh; its stream cannot be reproduced outside PyTorch, and only the
 * distribution matters to the method.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { fnv1a } from "../core/rng.ts";
import { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { scaleByAdam } from "./adamw.ts";
import { project } from "./galore.ts";
import {
  channelNorms,
  type Channels,
  channelsOf,
  checkScalingOptions,
  initScaled,
  scaleByNormRatio,
  strictGeometries,
} from "./norm_scaling.ts";
import { andThen, type GradientTransformation } from "./transform.ts";

/** How APOLLO shares its scaling factors: per channel (APOLLO) or one per tensor (APOLLO-Mini). */
export type Granularity = "channel" | "tensor";

/** The granularities, for messages and CLI choices. */
export const GRANULARITIES: readonly Granularity[] = Object.freeze(["channel", "tensor"]);

/** Options of {@link apollo}. */
export interface ApolloOptions {
  /** Rank r of the random projection (< min(m, n) of every matrix); APOLLO uses n/4, APOLLO-Mini 1. */
  rank: number;
  /** Steps T between projection refreshes; default 200. */
  updateProjGap?: number;
  /**
   * The reference's `scale`: the update is multiplied by √scale (after the limiter); default 1
   * (the reference's for APOLLO; APOLLO-Mini uses 128).
   */
  scale?: number;
  /** `"channel"` (default): one factor per channel; `"tensor"`: one per matrix. */
  granularity?: Granularity;
  /** Seed of the projections (a non-negative safe integer); default 0. */
  seed?: number;
  /** γ of the norm-growth limiter (see `fira`); default 1.01; 0 turns it off. */
  limiter?: number;
  /** The transform whose moments live in the projection; default `scaleByAdam()`. */
  inner?: GradientTransformation;
}

/** State of {@link apollo}. */
export interface ApolloState {
  /** Updates since init: selects the projection (⌊count / T⌋) and the limiter's first step. */
  count: number;
  /** State of the inner transform over the projected shapes ([r, n] or [m, r]). */
  inner: unknown;
  /** The limiter's stored norm per matrix ([1] each); empty when the limiter is off. */
  norm: Tensor[];
}

/** lowbias32 (Chris Wellons' integer hash), on unsigned 32-bit integers. */
function hash32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

const HASH_WGSL = `fn hash32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}`;

/** Centre of the sum of twelve 16-bit uniforms: 12 · 65535 / 2. */
const IRWIN_HALL_MEAN = 393210;
const GOLDEN = 0x9e3779b9;

/**
 * The key of the projection of the parameter at `path` for refresh `refresh` (= ⌊count / T⌋),
 * from the transform's `seed` (see the module doc).
 */
export function apolloProjectionKey(seed: number, path: string, refresh: number): number {
  checkSeed(seed);
  // h(lo ⊕ h(hi)) = h(seed) below 2³², since h(0) = 0.
  const hs = hash32(((seed >>> 0) ^ hash32(Math.floor(seed / 2 ** 32))) >>> 0);
  return hash32((hash32((hs ^ fnv1a(path)) >>> 0) ^ refresh) >>> 0);
}

function checkSeed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new RangeError(`apollo: seed must be a non-negative safe integer, got ${seed}`);
  }
}

/** c = f32(2⁻¹⁶ / √r): the Irwin–Hall sum's unit (2¹⁶) and the reference's 1/√r in one factor. */
function entryScale(rank: number): number {
  return Math.fround(2 ** -16 / Math.sqrt(rank));
}

const PROJECTION = defineKernel({
  name: "apollo_projection",
  outputs: { p: "f32" },
  uniforms: { key: "u32", c: "f32" },
  grid: "flat",
  helpers: HASH_WGSL,
  body: `  let x = hash32(u.key ^ hash32(i));
  var s = 0u;
  for (var j = 1u; j <= 6u; j++) {
    let w = hash32(x + j * ${GOLDEN}u);
    s += (w & 0xffffu) + (w >> 16u);
  }
  store_p(i, f32(i32(s) - ${IRWIN_HALL_MEAN}) * u.c);`,
});

/** The projection matrix of `key` with `shape` for rank `rank`, generated on the device. */
export function apolloProjection(key: number, shape: [number, number], rank: number): Tensor {
  const p = Tensor.empty(shape);
  PROJECTION({ p }, { n: p.size, key: key >>> 0, c: entryScale(rank) });
  return p;
}

/** The same matrix as {@link apolloProjection}, regenerated on the CPU (bit for bit). */
export function apolloProjectionCpu(
  key: number,
  shape: [number, number],
  rank: number,
): Float32Array {
  const c = entryScale(rank);
  const out = new Float32Array(shape[0] * shape[1]);
  for (let e = 0; e < out.length; e++) {
    const x = hash32((key ^ hash32(e)) >>> 0);
    let s = 0;
    for (let j = 1; j <= 6; j++) {
      const w = hash32((x + Math.imul(j, GOLDEN)) >>> 0);
      s += (w & 0xffff) + (w >>> 16);
    }
    // (S − mean)·c is exact in float64 (at most 20 + 24 significant bits), so fround rounds once,
    // like the device's f32 multiply.
    out[e] = (s - IRWIN_HALL_MEAN) * c;
  }
  return out;
}

/**
 * APOLLO, for 2-D weights whose smaller side exceeds the rank (route the rest elsewhere with
 * `partition`). Per matrix G [m, n] and step, with P the projection of this refresh (module doc):
 * R = project(G); N = inner(R) (Adam's direction in the projection, its moments kept across
 * refreshes as in the reference); φ = ‖N‖ / (‖R‖ + 1e-8) per channel — per column when m < n,
 * per row otherwise (the reference's `norm_dim`) — or over the whole tensor; S = G·φ through the
 * norm-growth limiter (see `limitNormGrowth`); the update is √scale·S. The learning rate and
 * weight decay are stages after it:
 *
 * ```ts
 * chain(apollo({ rank: 128, granularity: "channel" }), addDecayedWeights(λ), scaleByLearningRate(lr))
 * ```
 *
 * As in `fira`, the limiter sees the inner transform's output, which for `scaleByAdam` includes
 * Adam's bias correction (the reference applies it after the limiter), and eps is added to √v̂.
 * The reference's `scale_front` (limiter after the scale instead of before) changes nothing but
 * the 1e-8 in the limiter's ratio, so it is not an option. Dispatches per matrix and step: the
 * projection, one matmul, the inner transform's, and about eight small kernels.
 */
export function apollo(opts: ApolloOptions): GradientTransformation<ApolloState> {
  const {
    rank,
    updateProjGap = 200,
    scale = 1,
    granularity = "channel",
    seed = 0,
    limiter = 1.01,
  } = opts;
  checkScalingOptions("apollo", { rank, scale, limiter, updateProjGap });
  if (!GRANULARITIES.includes(granularity)) {
    throw new RangeError(
      `apollo: granularity must be one of ${GRANULARITIES.join(", ")}, got ${
        JSON.stringify(granularity)
      }`,
    );
  }
  checkSeed(seed);
  const inner = opts.inner ?? scaleByAdam();
  const post = Math.sqrt(scale);
  return {
    init(params) {
      const { inner: innerState, norm } = initScaled("apollo", inner, params, rank, limiter);
      return { count: 0, inner: innerState, norm };
    },
    update(updates, state) {
      const g = tree.flatten(updates);
      const geos = strictGeometries("apollo", updates, rank);
      if (state.norm.length !== (limiter > 0 ? g.length : 0)) {
        throw new RangeError(
          `apollo: state has ${state.norm.length} norms for ${g.length} updates`,
        );
      }
      const paths = tree.paths(updates);
      const refresh = Math.floor(state.count / updateProjGap);
      const channels: Channels[] = geos.map((geo) =>
        granularity === "tensor" ? "tensor" : channelsOf(geo)
      );
      const den: Tensor[] = [];
      const small = g.map((gi, i) => {
        const key = apolloProjectionKey(seed, paths[i], refresh);
        const p = apolloProjection(key, geos[i].projShape, rank);
        const r = project(gi, p, geos[i].left);
        p.dispose();
        den.push(channelNorms(r, channels[i]));
        return r;
      });
      return andThen(inner.update(tree.unflatten(updates, small), state.inner), (res) => {
        const norm: Tensor[] = [];
        const out = tree.flatten(res.updates).map((ni, i) => {
          const s = scaleByNormRatio(g[i], ni, den[i], channels[i], {
            gamma: limiter,
            first: state.count === 0,
            prev: state.norm[i],
            post,
          });
          ni.dispose();
          if (s.prev) norm.push(s.prev);
          return s.x;
        });
        return {
          updates: tree.unflatten(updates, out),
          state: { count: state.count + 1, inner: res.state, norm },
        };
      });
    },
  };
}

/**
 * APOLLO-Mini: {@link apollo} at rank 1 with one scaling factor per tensor and the reference's
 * scale 128 (the update is multiplied by √128); the state is 2·max(m, n) values per matrix.
 */
export function apolloMini(
  opts: Omit<ApolloOptions, "rank" | "granularity"> = {},
): GradientTransformation<ApolloState> {
  return apollo({ scale: 128, ...opts, rank: 1, granularity: "tensor" });
}
