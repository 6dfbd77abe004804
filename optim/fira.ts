/**
 * Fira (Chen et al. 2024, arXiv 2410.01623) as a transform around any inner transform: GaLore, plus
 * the part of the gradient outside the subspace, scaled channel by channel by how much the inner
 * transform changed the norm of the projected gradient, under a norm-growth limiter. The update is
 * full-rank; the state is GaLore's (projectors and the inner state in the small shape) plus one
 * stored norm per matrix.
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import {
  type GaLoreOptions,
  project,
  projectBack,
  type ProjectionGeometry,
  projectionGeometry,
  withProjectors,
} from "./galore.ts";
import { axpbyInPlace, scaleInPlace } from "./inplace.ts";
import {
  channelNorms,
  type Channels,
  limitNormGrowth,
  normRatioInPlace,
  scaleChannelsInPlace,
} from "./norm_scaling.ts";
import { andThen, type GradientTransformation } from "./transform.ts";

/** Options of {@link fira}: GaLore's, plus the limiter. */
export interface FiraOptions extends GaLoreOptions {
  /**
   * γ of the norm-growth limiter: the residual term's norm may grow by at most this factor per
   * step; default 1.01 (the reference's). 0 turns the limiter off (the reference's `disable_nl`).
   */
  limiter?: number;
}

/** State of {@link fira}. */
export interface FiraState {
  /** Updates since init: the refresh clock and the limiter's first step. */
  count: number;
  /** GaLore projectors per matrix (see `GaLoreState.proj`); null before the first update. */
  proj: (Tensor | null)[];
  /** State of the inner transform over the projected shapes. */
  inner: unknown;
  /**
   * The limiter's stored norm per matrix (a [1] tensor: the residual term's norm after the last
   * limit); empty when the limiter is off.
   */
  norm: Tensor[];
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
 * Fira around `inner` (e.g. `scaleByAdam()`), for 2-D weights whose smaller side exceeds the rank
 * (route the rest elsewhere with `partition`). Per matrix [m, n] and step, with P the GaLore
 * projector (refreshed from the gradient every T steps by the same rule as {@link galore}) and
 * R = project(G), N = inner(R):
 *
 * - the residual is G − α·projectBack(R), as in the reference code (α is in both terms);
 * - φ = ‖N‖ / (‖R‖ + 1e-8) per channel: per column of R [r, n] when m < n, per row of R [m, r]
 *   otherwise (the reference's `norm_dim`), so one factor per column (row) of the full matrix;
 * - the residual term S = (G − α·projectBack(R))·φ goes through the limiter (see
 *   `limitNormGrowth`): from the second step on, S is divided by max(‖S‖ / (s + 1e-8), γ) / γ,
 *   and s, the stored norm, becomes ‖S‖ after that division;
 * - the update is α·projectBack(N) + S.
 *
 * Like GaLore, the inner transform runs without parameters, so weight decay and the learning rate
 * are stages after `fira` in a chain:
 *
 * ```ts
 * chain(fira(scaleByAdam(), { rank: 128, updateProjGap: 200, scale: 0.25 }), addDecayedWeights(λ), scaleByLearningRate(lr))
 * ```
 *
 * One difference from the reference: its limiter sees Adam's raw m/(√v + eps) and multiplies by
 * the bias correction √(1−β2^t)/(1−β1^t) afterwards, while here `inner` (scaleByAdam) already
 * includes it, so the limiter sees that factor's growth too (with β = (0.9, 0.999) it grows by
 * more than 1 % per step only at steps 21 to 45 (by at most 1.2 %), where the limiter may then engage and
 * the reference's would not). Everything else equals the reference's update up to f32 rounding.
 *
 * A projector refresh reads the gradients back (a promise, as in GaLore); every other update is
 * synchronous. Transient memory per matrix: two m×n buffers besides the gradient.
 */
export function fira(
  inner: GradientTransformation,
  opts: FiraOptions,
): GradientTransformation<FiraState> {
  const { rank, updateProjGap = 200, scale = 0.25, limiter = 1.01 } = opts;
  checkScalingOptions("fira", { rank, scale, limiter, updateProjGap });
  return {
    init(params) {
      const geos = strictGeometries("fira", params, rank);
      const standIns = geos.map((g) => Tensor.empty(g.small));
      const innerState = inner.init(tree.unflatten(params, standIns));
      tree.dispose(standIns);
      return {
        count: 0,
        proj: geos.map(() => null),
        inner: innerState,
        norm: limiter > 0 ? geos.map(() => zeros([1])) : [],
      };
    },
    update(updates, state) {
      const g = tree.flatten(updates);
      const geos = strictGeometries("fira", updates, rank);
      if (state.proj.length !== g.length) {
        throw new RangeError(
          `fira: state has ${state.proj.length} projectors for ${g.length} updates`,
        );
      }
      const channels = geos.map(channelsOf);
      return withProjectors(g, state, { rank, updateProjGap, gram: opts.gram }, (proj) => {
        // Before the inner transform consumes R: its channel norms, and the residual in G's buffer.
        const den: Tensor[] = [];
        const small = g.map((gi, i) => {
          const r = project(gi, proj[i], geos[i].left);
          den.push(channelNorms(r, channels[i]));
          const sub = projectBack(r, proj[i], geos[i].left);
          g[i] = axpbyInPlace(gi, 1, sub, -scale);
          sub.dispose();
          return r;
        });
        return andThen(inner.update(tree.unflatten(updates, small), state.inner), (res) => {
          const norm: Tensor[] = [];
          const out = tree.flatten(res.updates).map((ni, i) => {
            const phi = normRatioInPlace(channelNorms(ni, channels[i]), den[i]);
            den[i].dispose();
            let resid = scaleChannelsInPlace(g[i], phi, channels[i]);
            phi.dispose();
            if (limiter > 0) {
              const l = limitNormGrowth(resid, state.norm[i], {
                gamma: limiter,
                first: state.count === 0,
              });
              resid = l.x;
              norm.push(l.prev);
            }
            const scaled = scale === 1 ? ni : scaleInPlace(ni, scale);
            const back = projectBack(scaled, proj[i], geos[i].left);
            scaled.dispose();
            const u = axpbyInPlace(back, 1, resid, 1);
            resid.dispose();
            return u;
          });
          return {
            updates: tree.unflatten(updates, out),
            state: { count: state.count + 1, proj, inner: res.state, norm },
          };
        });
      });
    },
  };
}
