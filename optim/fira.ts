/**
 * Fira (Chen et al. 2024, arXiv 2410.01623) as a transform around any inner transform: GaLore, plus
 * the part of the gradient outside the subspace, scaled channel by channel by how much the inner
 * transform changed the norm of the projected gradient, under a norm-growth limiter. The update is
 * full-rank; the state is GaLore's (projectors and the inner state in the small shape) plus one
 * stored norm per matrix.
 * @module
 */
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { type GaLoreOptions, project, projectBack, withProjectors } from "./galore.ts";
import { axpbyInPlace, scaleInPlace } from "./inplace.ts";
import {
  channelNorms,
  channelsOf,
  checkScalingOptions,
  initScaled,
  scaleByNormRatio,
  strictGeometries,
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
 * Differences from the reference, both from where Adam's bias correction sits: its limiter sees
 * Adam's raw m/(√v + eps) and multiplies by c_t = √(1−β2^t)/(1−β1^t) afterwards, while here the
 * inner transform (scaleByAdam) already includes c_t, so the limiter also sees c_t's growth; with
 * β = (0.9, 0.999) that exceeds 1 % per step only at steps 21 to 45 (at most 1.2 %), where this
 * limiter may engage when the reference's would not. And eps is added to √v̂ rather than √v (as in
 * `galore` here). Everything else equals the reference's update up to f32 rounding.
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
      const { geos, inner: innerState, norm } = initScaled("fira", inner, params, rank, limiter);
      return { count: 0, proj: geos.map(() => null), inner: innerState, norm };
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
      const keys = tree.paths(updates);
      const refreshOpts = {
        rank,
        updateProjGap,
        projector: opts.projector,
        keys,
        onRefresh: opts.onRefresh,
      };
      return withProjectors(g, state, refreshOpts, (use, proj) => {
        // Before the inner transform consumes R: its channel norms, and the residual in G's buffer.
        const den: Tensor[] = [];
        const small = g.map((gi, i) => {
          const r = project(gi, use[i], geos[i].left);
          den.push(channelNorms(r, channels[i]));
          const sub = projectBack(r, use[i], geos[i].left);
          g[i] = axpbyInPlace(gi, 1, sub, -scale);
          sub.dispose();
          return r;
        });
        return andThen(inner.update(tree.unflatten(updates, small), state.inner), (res) => {
          const norm: Tensor[] = [];
          const out = tree.flatten(res.updates).map((ni, i) => {
            const s = scaleByNormRatio(g[i], ni, den[i], channels[i], {
              gamma: limiter,
              first: state.count === 0,
              prev: state.norm[i],
            });
            if (s.prev) norm.push(s.prev);
            const scaled = scale === 1 ? ni : scaleInPlace(ni, scale);
            const back = projectBack(scaled, use[i], geos[i].left);
            scaled.dispose();
            const u = axpbyInPlace(back, 1, s.x, 1);
            s.x.dispose();
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
