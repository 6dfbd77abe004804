/**
 * Adam's moments as a transform (`scaleByAdam`), and AdamW as one fused kernel per parameter
 * (`adamw`): the fast path of `chain(scaleByAdam(), addDecayedWeights(λ), scaleByLearningRate(lr))`.
 * @module
 */
import { donate } from "../core/donate.ts";
import { dispatch } from "../core/kernel.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { assertF32 } from "../ops/elementwise.ts";
import { flatGrid, flatMain } from "../ops/wgsl.ts";
import type { TensorTree } from "../core/tree.ts";
import {
  type GradientTransformation,
  pairLeaves,
  type Schedule,
  scheduleAt,
  type TransformResult,
} from "./transform.ts";

/** Options of {@link scaleByAdam}. */
export interface AdamOptions {
  /** (β1, β2); default (0.9, 0.999). */
  betas?: readonly [number, number];
  /** Added to √v̂; default 1e-8 (PyTorch's AdamW; GaLore's code uses 1e-6). */
  eps?: number;
}

/** Options of {@link adamw}. */
export interface AdamWOptions extends AdamOptions {
  /** Learning rate, or a schedule of the update count (see `schedule.ts`). */
  lr: Schedule;
  /** Decoupled weight decay λ: the update gains −lr·λ·p; default 0. */
  weightDecay?: number;
}

/** State of {@link scaleByAdam} and {@link adamw}: the moments per parameter (leaf order). */
export interface AdamState {
  /** Updates since init: drives bias correction and the learning-rate schedule. */
  count: number;
  /** First moments, one per parameter. */
  m: Tensor[];
  /** Second moments, one per parameter. */
  v: Tensor[];
}

// One kernel for both: g turns into the update in place, m and v are updated in place, and with
// `decay` the parameter p adds decay·p. Every per-step scalar rides in the uniform, so one compiled
// pipeline serves every step and every parameter.
function adamCode(decay: boolean): string {
  const p = decay ? 0 : -1;
  return `${decay ? "@group(0) @binding(0) var<storage, read> p: array<f32>;" : ""}
@group(0) @binding(${p + 1}) var<storage, read_write> g: array<f32>;
@group(0) @binding(${p + 2}) var<storage, read_write> m: array<f32>;
@group(0) @binding(${p + 3}) var<storage, read_write> v: array<f32>;
struct U { b1: f32, b2: f32, eps: f32, stepSize: f32, invSqrtBc2: f32, decay: f32, n: u32, pad: u32 }
@group(0) @binding(${p + 4}) var<uniform> u: U;
${
    flatMain(`  if (i >= u.n) { return; }
  let gi = g[i];
  let mi = u.b1 * m[i] + (1.0 - u.b1) * gi;
  let vi = u.b2 * v[i] + (1.0 - u.b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  g[i] = u.stepSize * mi / (sqrt(vi) * u.invSqrtBc2 + u.eps)${decay ? " + u.decay * p[i]" : ""};`)
  }`;
}
const CODE = { decay: adamCode(true), plain: adamCode(false) };

/**
 * One Adam step on one parameter, all in place: g becomes stepSize·m/(√v·invSqrtBc2 + eps) +
 * decay·p (p only when `p` is given), m and v their new moments. Consumes g, m, v.
 */
function adamStep(
  g: Tensor,
  m: Tensor,
  v: Tensor,
  p: Tensor | undefined,
  s: { b1: number; b2: number; eps: number; stepSize: number; invSqrtBc2: number; decay: number },
): { u: Tensor; m: Tensor; v: Tensor } {
  assertF32("adam", g, m, v, ...(p ? [p] : []));
  const out = { u: donate(g), m: donate(m), v: donate(v) };
  const buf = new ArrayBuffer(32);
  new Float32Array(buf, 0, 6).set([s.b1, s.b2, s.eps, s.stepSize, s.invSqrtBc2, s.decay]);
  new Uint32Array(buf, 24, 1)[0] = out.u.size;
  if (out.u.size > 0) {
    dispatch({
      name: p ? "adamw" : "adam",
      code: p ? CODE.decay : CODE.plain,
      inputs: p ? [p.binding()] : [],
      outputs: [out.u.binding(), out.m.binding(), out.v.binding()],
      uniforms: new Uint8Array(buf),
      workgroups: flatGrid(out.u.size),
    });
  }
  return out;
}

function initMoments(params: unknown): AdamState {
  const ps = tree.flatten(params);
  return { count: 0, m: ps.map((p) => zeros(p.shape)), v: ps.map((p) => zeros(p.shape)) };
}

/**
 * Runs `step(t)` (t = the 1-based update number) on every leaf with its moments; shared by both
 * transforms so they differ only in their scalars.
 */
function adamUpdate(
  name: string,
  updates: TensorTree,
  state: AdamState,
  params: Tensor[] | undefined,
  scalars: (t: number) => { stepSize: number; decay: number },
  b1: number,
  b2: number,
  eps: number,
): TransformResult<AdamState> {
  const g = tree.flatten(updates);
  if (state.m.length !== g.length) {
    throw new RangeError(`${name}: state has ${state.m.length} moments for ${g.length} updates`);
  }
  const count = state.count + 1;
  const s = { b1, b2, eps, invSqrtBc2: 1 / Math.sqrt(1 - b2 ** count), ...scalars(count) };
  const next: AdamState = { count, m: [], v: [] };
  const out = g.map((gi, i) => {
    const r = adamStep(gi, state.m[i], state.v[i], params?.[i], s);
    next.m.push(r.m);
    next.v.push(r.v);
    return r.u;
  });
  return { updates: tree.unflatten(updates, out), state: next };
}

function betasOf(opts: AdamOptions): [number, number, number] {
  const [b1, b2] = opts.betas ?? [0.9, 0.999];
  return [b1, b2, opts.eps ?? 1e-8];
}

/**
 * Adam's direction, as optax's `scale_by_adam`: m ← β1m + (1−β1)g, v ← β2v + (1−β2)g², update =
 * m̂ / (√v̂ + eps) with m̂ = m/(1−β1^t), v̂ = v/(1−β2^t), t counted in the state. One dispatch per
 * parameter, in place; needs no params (so it runs inside `galore`).
 */
export function scaleByAdam(opts: AdamOptions = {}): GradientTransformation<AdamState> {
  const [b1, b2, eps] = betasOf(opts);
  return {
    init: initMoments,
    update: (updates, state) =>
      adamUpdate(
        "scaleByAdam",
        updates,
        state,
        undefined,
        (t) => ({
          stepSize: 1 / (1 - b1 ** t),
          decay: 0,
        }),
        b1,
        b2,
        eps,
      ),
  };
}

/**
 * AdamW as in `torch.optim.AdamW`, fused: update = −lr·(m̂/(√v̂ + eps) + λ·p) with the lr schedule
 * evaluated at the update count, so `applyUpdates` gives p(1 − lr·λ) − lr/(1−β1^t)·m /
 * (√v/√(1−β2^t) + eps). Equal, up to f32 rounding, to `chain(scaleByAdam, addDecayedWeights(λ),
 * scaleByLearningRate(lr))` in one dispatch per parameter instead of three. Needs `params` when
 * λ > 0.
 */
export function adamw(opts: AdamWOptions): GradientTransformation<AdamState> {
  const [b1, b2, eps] = betasOf(opts);
  const wd = opts.weightDecay ?? 0;
  if (!(wd >= 0)) throw new RangeError(`adamw: weightDecay must be >= 0, got ${wd}`);
  return {
    init: initMoments,
    update(updates, state, params) {
      if (wd > 0 && params === undefined) {
        throw new RangeError(
          "adamw: weight decay needs the parameters (none are passed inside galore)",
        );
      }
      const p = wd > 0 ? pairLeaves(updates, params, "adamw").params : undefined;
      // Scalars in float64, rounded once to f32 in the uniform.
      const lr = scheduleAt(opts.lr, state.count);
      return adamUpdate(
        "adamw",
        updates,
        state,
        p,
        (t) => ({
          stepSize: -lr / (1 - b1 ** t),
          decay: -lr * wd,
        }),
        b1,
        b2,
        eps,
      );
    },
  };
}
