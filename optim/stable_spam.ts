/**
 * Stable-SPAM (Huang et al. 2025, arXiv 2502.17055) as a transform: per tensor, adaptive spike
 * clipping against a running (bias-corrected) mean of the gradient's largest magnitude, adaptive
 * gradient-norm rescaling to a running ratio of norm moments, then Adam whose β1 follows a cosine
 * schedule and whose moments are reset every `resetGap` steps. Definitions and defaults follow the
 * benchmark's code (OptimAI-Lab Memory_Efficient_Pretraining, `pt_stable_spam/stablespam.py`).
 * Everything stays on the device: the three running scalars of a tensor live in a [3] tensor, so
 * no step waits for the GPU.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { donate } from "../core/donate.ts";
import { assertDType } from "../core/dtype.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { globalNorm } from "./clip.ts";
import { elementwiseInPlace, FLOAT_DTYPES } from "./elementwise_kernel.ts";
import { foldPartials, partialReduction, REDUCE_HELPERS, REDUCE_WG } from "./partial_reduce.ts";
import type { GradientTransformation } from "./transform.ts";

/** Options of {@link scaleByStableSpam}. */
export interface StableSpamOptions {
  /** (β1, β2) of Adam; default (0.9, 0.999). β1 is multiplied by the schedule's factor. */
  betas?: readonly [number, number];
  /** Added to √v̂ and to the norm ratio's √; default 1e-8. */
  eps?: number;
  /** γ1: decay of the running gradient norm (times the schedule's factor); default 0.85. */
  gamma1?: number;
  /** γ2: decay of the running squared gradient norm; default 0.999. */
  gamma2?: number;
  /** γ3 (θ): decay of the running maximum magnitude; default 0.999. */
  gamma3?: number;
  /** Steps between momentum resets (0 = never); default 500 (the benchmark's `update_gap`). */
  resetGap?: number;
  /**
   * Length T of the cosine schedule s(t) = η + (1 − η)·(1 + cos(π·t/(T + 1)))/2 that multiplies
   * β1 and γ1; 0 = s ≡ 1. Default 0; the benchmark passes 20000.
   */
  totalT?: number;
  /** η, the schedule's floor; default 0.5. */
  etaMin?: number;
}

/** State of {@link scaleByStableSpam}. */
export interface StableSpamState {
  /** Updates since init: the schedule's clock and the resets'. */
  count: number;
  /** Updates since the last reset (bias corrections count these, as in the reference). */
  step: number;
  /** First moments. */
  m: Tensor[];
  /** Second moments. */
  v: Tensor[];
  /** Per tensor, [3]: running max magnitude, running norm, running squared norm (raw EMAs). */
  stats: Tensor[];
}

function defaults(opts: StableSpamOptions): Required<StableSpamOptions> {
  const o = {
    betas: opts.betas ?? [0.9, 0.999] as const,
    eps: opts.eps ?? 1e-8,
    gamma1: opts.gamma1 ?? 0.85,
    gamma2: opts.gamma2 ?? 0.999,
    gamma3: opts.gamma3 ?? 0.999,
    resetGap: opts.resetGap ?? 500,
    totalT: opts.totalT ?? 0,
    etaMin: opts.etaMin ?? 0.5,
  };
  const unit = (name: string, x: number) => {
    if (!(x >= 0 && x < 1)) {
      throw new RangeError(`stable-spam: ${name} must be in [0, 1), got ${x}`);
    }
  };
  unit("beta1", o.betas[0]);
  unit("beta2", o.betas[1]);
  unit("gamma1", o.gamma1);
  unit("gamma2", o.gamma2);
  unit("gamma3", o.gamma3);
  if (!(o.etaMin >= 0 && o.etaMin <= 1)) {
    throw new RangeError(`stable-spam: etaMin must be in [0, 1], got ${o.etaMin}`);
  }
  if (!(o.eps >= 0)) throw new RangeError(`stable-spam: eps must be >= 0, got ${o.eps}`);
  for (const k of ["resetGap", "totalT"] as const) {
    if (!Number.isInteger(o[k]) || o[k] < 0) {
      throw new RangeError(`stable-spam: ${k} must be a non-negative integer, got ${o[k]}`);
    }
  }
  return o;
}

/** The schedule factor s(t) of update t (1-based); see {@link StableSpamOptions.totalT}. */
export function stableSpamFactor(opts: StableSpamOptions, t: number): number {
  const o = defaults(opts);
  if (o.totalT === 0) return 1;
  return o.etaMin + (1 - o.etaMin) * (1 + Math.cos(Math.PI * t / (o.totalT + 1))) / 2;
}

// max|g| per chunk, folded by MAX_STATS.
const maxAbsPartials = partialReduction("stable_spam_maxabs", "abs(e)", "max");

// The running max: stats[0] ← θ·stats[0] + (1−θ)·max|g|; clip = (threshold m̂ = stats[0]/(1−θ^k),
// the factor m̂/max|g| applied to the entries above it).
const MAX_STATS = defineKernel({
  name: "stable_spam_max_stats",
  inputs: { partials: "f32" },
  outputs: { stats: "f32", clip: "f32" },
  uniforms: { count: "u32", theta: "f32", bc: "f32" },
  grid: { workgroupSize: [REDUCE_WG], builtins: { lid: "local_invocation_id" } },
  helpers: REDUCE_HELPERS,
  body: `${foldPartials("max")}
  if (lid.x == 0u) {
    let mx = acc[0];
    let run = u.theta * stats[0] + (1.0 - u.theta) * mx;
    stats[0] = run;
    let hat = run / u.bc;
    clip[0] = hat;
    clip[1] = select(1.0, hat / mx, mx > 0.0);
  }`,
});

const CLIP = elementwiseInPlace({
  name: "stable_spam_clip",
  whole: ["clip"],
  elem: `  let g = load_x(k);
  return select(g, g * clip[1], abs(g) > clip[0]);`,
});

// The running norms and the rescaling factor c/‖g‖ (1 when ‖g‖ = 0), into scale[0].
const NORM_STATS = defineKernel({
  name: "stable_spam_norm_stats",
  inputs: { norm: "f32" },
  outputs: { stats: "f32", scale: "f32" },
  uniforms: { g1: "f32", g2: "f32", bc1: "f32", bc2: "f32", eps: "f32" },
  grid: { workgroupSize: [1] },
  body: `  let n = norm[0];
  let mn = u.g1 * stats[1] + (1.0 - u.g1) * n;
  let vn = u.g2 * stats[2] + (1.0 - u.g2) * n * n;
  stats[1] = mn;
  stats[2] = vn;
  let c = (mn / u.bc1) / (sqrt(vn / u.bc2) + u.eps);
  scale[0] = select(1.0, c / n, n > 0.0);`,
});

const ADAM = elementwiseInPlace({
  name: "stable_spam_adam",
  updates: ["mt", "vt"],
  whole: ["scale"],
  uniforms: ["b1", "b2", "eps", "stepSize", "invSqrtBc2"],
  elem: `  let g = load_x(k) * scale[0];
  let m = u.b1 * load_mt(k) + (1.0 - u.b1) * g;
  let v = u.b2 * load_vt(k) + (1.0 - u.b2) * g * g;
  store_mt(k, m);
  store_vt(k, v);
  return u.stepSize * m / (sqrt(v) * u.invSqrtBc2 + u.eps);`,
});

/**
 * Stable-SPAM's direction, without the learning rate (chain `addDecayedWeights` and
 * `scaleByLearningRate` after it). Per tensor and update t, with s = s(t) (see
 * {@link StableSpamOptions.totalT}) and k the updates since the last reset (1 at a reset):
 *
 * 1. at a reset (t a multiple of `resetGap`): m = v = 0 and k = 1, before this step's update;
 * 2. M ← γ3·M + (1−γ3)·max|g|, M̂ = M/(1−γ3^k); entries with |g| > M̂ become g·M̂/max|g|;
 * 3. with n = ‖g‖ (after clipping): N ← γ1s·N + (1−γ1s)·n, Q ← γ2·Q + (1−γ2)·n²,
 *    c = (N/(1−(γ1s)^k)) / (√(Q/(1−γ2^k)) + eps), and g ← g·c/n when n > 0;
 * 4. Adam with β1' = β1·s: m ← β1'·m + (1−β1')·g, v ← β2·v + (1−β2)·g²; the update is
 *    m/(1−β1'^k) / (√v/√(1−β2^k) + eps).
 *
 * Difference from the reference: at a reset step it replaces the stored moments with zeros but
 * updates (and uses) the old ones for that one step, starting from zeros at the next; here the
 * reset takes effect at its own step. Its weight decay multiplies the weights by (1 − lr·λ) before
 * the step, which is what a chain with `addDecayedWeights` does. f32 moments.
 */
export function scaleByStableSpam(
  opts: StableSpamOptions = {},
): GradientTransformation<StableSpamState> {
  const o = defaults(opts);
  const [beta1, b2] = o.betas;
  return {
    init(params) {
      const ps = tree.flatten(params);
      return {
        count: 0,
        step: 0,
        m: ps.map((p) => zeros(p.shape)),
        v: ps.map((p) => zeros(p.shape)),
        stats: ps.map(() => zeros([3])),
      };
    },
    update(updates, state) {
      const g = tree.flatten(updates);
      if (state.m.length !== g.length || state.stats.length !== g.length) {
        throw new RangeError(
          `stable-spam: state has ${state.m.length} moments for ${g.length} updates`,
        );
      }
      const t = state.count + 1;
      const reset = o.resetGap > 0 && t % o.resetGap === 0;
      const k = reset ? 1 : state.step + 1;
      const s = stableSpamFactor(o, t);
      const b1 = beta1 * s;
      const g1 = o.gamma1 * s;
      const next: StableSpamState = { count: t, step: k, m: [], v: [], stats: [] };
      const out = g.map((gi, i) => {
        assertDType("stable-spam", FLOAT_DTYPES, ["g", gi]);
        let [m, v] = [state.m[i], state.v[i]];
        if (reset) {
          tree.dispose([m, v]);
          [m, v] = [zeros(gi.shape), zeros(gi.shape)];
        }
        const stats = donate(state.stats[i]);
        const { partials, count } = maxAbsPartials([gi]);
        const clip = Tensor.empty([2]);
        MAX_STATS({ partials, stats, clip }, { count, theta: o.gamma3, bc: 1 - o.gamma3 ** k }, [
          1,
        ]);
        partials.dispose();
        const clipped = CLIP(gi, { clip }, {});
        clip.dispose();
        const norm = globalNorm(clipped);
        const scale = Tensor.empty([1]);
        NORM_STATS({ norm, stats, scale }, {
          g1,
          g2: o.gamma2,
          bc1: 1 - g1 ** k,
          bc2: 1 - o.gamma2 ** k,
          eps: o.eps,
        }, [1]);
        norm.dispose();
        const moments = { mt: donate(m), vt: donate(v) };
        const u = ADAM(clipped, { ...moments, scale }, {
          b1,
          b2,
          eps: o.eps,
          stepSize: 1 / (1 - b1 ** k),
          invSqrtBc2: 1 / Math.sqrt(1 - b2 ** k),
        });
        scale.dispose();
        next.m.push(moments.mt);
        next.v.push(moments.vt);
        next.stats.push(stats);
        return u;
      });
      return { updates: tree.unflatten(updates, out), state: next };
    },
  };
}
