/**
 * SPAM (Huang et al., ICLR 2025, "Spike-Aware Adam with Momentum Reset") as a transform: Adam whose
 * gradient entries are clipped where they spike against the second moment, whose moments are reset
 * every `resetGap` steps, and whose update is ramped up again over `warmup` steps after each reset
 * by a cosine factor. Definitions and defaults follow the benchmark's code (OptimAI-Lab
 * Memory_Efficient_Pretraining, `pt_spam/SPAM.py`, density 1 as the benchmark runs it).
 * @module
 */
import { donate } from "../core/donate.ts";
import { assertDType } from "../core/dtype.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { elementwiseInPlace, FLOAT_DTYPES } from "./elementwise_kernel.ts";
import type { GradientTransformation } from "./transform.ts";

/** Options of {@link scaleBySpam}. */
export interface SpamOptions {
  /** (β1, β2); default (0.9, 0.999). */
  betas?: readonly [number, number];
  /** Added to √v (not √v̂, as in the reference); default 1e-6 (the reference's). */
  eps?: number;
  /** Spike threshold θ: an entry with g² > θ·v is clipped to sign(g)·√(θ·v); 0 = off; default 5000. */
  threshold?: number;
  /** Steps between momentum resets (0 = never); default 500 (the benchmark's `update_gap`). */
  resetGap?: number;
  /** Steps of the cosine ramp of the update after a reset; default 150 (`warmup_epoch`). */
  warmup?: number;
  /**
   * Steps after the start and after each reset during which no entry is clipped (v is still near
   * zero, so every entry would be); default 20 (`grad_accu_steps`).
   */
  clipDelay?: number;
}

/** State of {@link scaleBySpam}: the update count and the moments per parameter (leaf order). */
export interface SpamState {
  /** Updates since init (drives bias correction, resets, clipping and the ramp). */
  count: number;
  /** First moments. */
  m: Tensor[];
  /** Second moments. */
  v: Tensor[];
}

/** The per-step scalars of SPAM at update t (1-based), as the reference computes them. */
export interface SpamScalars {
  /** Zero the moments before this step. */
  reset: boolean;
  /** Clip spikes at this step. */
  clip: boolean;
  /** The ramp factor of the update after a reset (1 once the ramp is over). */
  ramp: number;
  /** √(1−β2^t)/(1−β1^t): the reference's step-size correction (t never restarts). */
  correction: number;
}

/** Checked options with defaults filled in. */
function spamDefaults(opts: SpamOptions): Required<SpamOptions> {
  const o = {
    betas: opts.betas ?? [0.9, 0.999] as const,
    eps: opts.eps ?? 1e-6,
    threshold: opts.threshold ?? 5000,
    resetGap: opts.resetGap ?? 500,
    warmup: opts.warmup ?? 150,
    clipDelay: opts.clipDelay ?? 20,
  };
  const [b1, b2] = o.betas;
  if (!(b1 >= 0 && b1 < 1 && b2 >= 0 && b2 < 1)) {
    throw new RangeError(`spam: betas must be in [0, 1), got ${o.betas}`);
  }
  if (!(o.eps >= 0)) throw new RangeError(`spam: eps must be >= 0, got ${o.eps}`);
  if (!(o.threshold >= 0)) throw new RangeError(`spam: threshold must be >= 0, got ${o.threshold}`);
  for (const k of ["resetGap", "warmup", "clipDelay"] as const) {
    if (!Number.isInteger(o[k]) || o[k] < 0) {
      throw new RangeError(`spam: ${k} must be a non-negative integer, got ${o[k]}`);
    }
  }
  return o;
}

/**
 * The reference's schedule at update t (1-based): a reset at every multiple of `resetGap`; the
 * ramp 1 − 0.99·(1 + cos(π·c/(W + 1)))/2 for c = t − (last reset) < W (c = W + t before the first
 * reset, so no ramp at the start); clipping from t ≥ clipDelay, and not within `clipDelay` steps of
 * a reset.
 */
export function spamScalars(opts: SpamOptions, t: number): SpamScalars {
  const o = spamDefaults(opts);
  const gap = o.resetGap;
  const since = gap > 0 && t >= gap ? t % gap : o.warmup + t;
  const ramp = since >= o.warmup
    ? 1
    : 1 - 0.99 * (1 + Math.cos(Math.PI * since / (o.warmup + 1))) / 2;
  const [b1, b2] = o.betas;
  return {
    reset: gap > 0 && t % gap === 0,
    clip: o.threshold > 0 && t >= o.clipDelay && (gap === 0 || t % gap >= o.clipDelay),
    ramp,
    correction: Math.sqrt(1 - b2 ** t) / (1 - b1 ** t),
  };
}

const SPAM = elementwiseInPlace({
  name: "spam",
  updates: ["mt", "vt"],
  uniforms: ["b1", "b2", "eps", "stepSize", "thres", "clip"],
  elem: `  var g = load_x(k);
  let v0 = load_vt(k);
  if (u.clip > 0.5 && g * g > u.thres * v0) { g = sign(g) * sqrt(u.thres * v0); }
  let m = u.b1 * load_mt(k) + (1.0 - u.b1) * g;
  let v = u.b2 * v0 + (1.0 - u.b2) * g * g;
  store_mt(k, m);
  store_vt(k, v);
  return u.stepSize * m / (sqrt(v) + u.eps);`,
});

/**
 * SPAM's direction, without the learning rate (chain `addDecayedWeights` and
 * `scaleByLearningRate` after it, as for `scaleByAdam`). Per parameter and update t:
 * after a reset (t a multiple of `resetGap`) m = v = 0; where clipping is on (see
 * {@link spamScalars}), g ← sign(g)·√(θ·v) for entries with g² > θ·v (v before this step);
 * m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g²; the update is
 * ramp·√(1−β2^t)/(1−β1^t)·m/(√v + eps). The bias-correction count t does not restart at a reset,
 * as in the reference. One kernel per parameter; f32 moments (the spike test reads v entrywise).
 *
 * Differences from the reference: its weight decay is applied to the already updated weights
 * (p ← p' − lr·λ·p'), a chain's to the weights before the step (p' − lr·λ·p), which differs by
 * lr²·λ·|update|.
 */
export function scaleBySpam(opts: SpamOptions = {}): GradientTransformation<SpamState> {
  const o = spamDefaults(opts);
  const [b1, b2] = o.betas;
  return {
    init: (params) => {
      const ps = tree.flatten(params);
      return { count: 0, m: ps.map((p) => zeros(p.shape)), v: ps.map((p) => zeros(p.shape)) };
    },
    update(updates, state) {
      const g = tree.flatten(updates);
      if (state.m.length !== g.length) {
        throw new RangeError(`spam: state has ${state.m.length} moments for ${g.length} updates`);
      }
      const t = state.count + 1;
      const s = spamScalars(o, t);
      const next: SpamState = { count: t, m: [], v: [] };
      const out = g.map((gi, i) => {
        assertDType("spam", FLOAT_DTYPES, ["g", gi]);
        let [m, v] = [state.m[i], state.v[i]];
        if (s.reset) {
          tree.dispose([m, v]);
          [m, v] = [zeros(gi.shape), zeros(gi.shape)];
        }
        const moments = { mt: donate(m), vt: donate(v) };
        const u = SPAM(gi, moments, {
          b1,
          b2,
          eps: o.eps,
          stepSize: s.ramp * s.correction,
          thres: o.threshold,
          clip: s.clip ? 1 : 0,
        });
        next.m.push(moments.mt);
        next.v.push(moments.vt);
        return u;
      });
      return { updates: tree.unflatten(updates, out), state: next };
    },
  };
}
