/**
 * AdamW (decoupled weight decay, bias correction) as one fused WGSL kernel per parameter.
 * @module
 */
import { dispatch } from "../core/kernel.ts";
import type { TensorTree } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { assertF32 } from "../ops/elementwise.ts";
import { flatGrid, flatMain } from "../ops/wgsl.ts";
import {
  lrAt,
  type Optimizer,
  pairLeaves,
  type Schedule,
  treeLeaves,
  treeRebuild,
} from "./transform.ts";

/** Options of {@link adamw}. */
export interface AdamWOptions {
  /** Learning rate, or a schedule `step -> lr` (see `schedule.ts`). */
  lr: Schedule;
  /** (β1, β2); default (0.9, 0.999). */
  betas?: readonly [number, number];
  /** Added to √v̂; default 1e-8 (PyTorch's AdamW; GaLore's code uses 1e-6). */
  eps?: number;
  /** Decoupled weight decay λ: p ← p − lr·λ·p before the Adam step; default 0. */
  weightDecay?: number;
}

/** State of {@link adamw}: the moments per parameter (tree order) and the Adam step count. */
export interface AdamWState {
  /** Updates taken since init (drives bias correction; a momentum reset restarts it). */
  count: number;
  /** First moments, one per parameter. */
  m: Tensor[];
  /** Second moments, one per parameter. */
  v: Tensor[];
}

// The uniform carries every per-step scalar, so one compiled pipeline serves every step and
// every parameter; baking lr or the bias corrections into the source would recompile each step.
const CODE = `@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;
@group(0) @binding(5) var<storage, read_write> v2: array<f32>;
@group(0) @binding(6) var<storage, read_write> p2: array<f32>;
struct U { b1: f32, b2: f32, eps: f32, stepSize: f32, invSqrtBc2: f32, decay: f32, n: u32, pad: u32 }
@group(0) @binding(7) var<uniform> u: U;
${
  flatMain(`  if (i >= u.n) { return; }
  let gi = g[i];
  let mi = u.b1 * m[i] + (1.0 - u.b1) * gi;
  let vi = u.b2 * v[i] + (1.0 - u.b2) * gi * gi;
  m2[i] = mi;
  v2[i] = vi;
  p2[i] = p[i] * u.decay - u.stepSize * mi / (sqrt(vi) * u.invSqrtBc2 + u.eps);`)
}`;

/** Per-step scalars of the fused kernel, computed in float64 on the CPU. */
export interface AdamScalars {
  /** β1, β2, eps as given. */
  b1: number;
  /** β2. */
  b2: number;
  /** eps. */
  eps: number;
  /** lr / (1 − β1^t). */
  stepSize: number;
  /** 1 / √(1 − β2^t). */
  invSqrtBc2: number;
  /** 1 − lr·λ. */
  decay: number;
}

/** Bias-corrected scalars of update number `t` (1-based) at learning rate `lr`. */
export function adamScalars(
  lr: number,
  t: number,
  b1: number,
  b2: number,
  eps: number,
  wd: number,
): AdamScalars {
  return {
    b1,
    b2,
    eps,
    stepSize: lr / (1 - b1 ** t),
    invSqrtBc2: 1 / Math.sqrt(1 - b2 ** t),
    decay: 1 - lr * wd,
  };
}

/**
 * One fused AdamW step on one parameter: reads g, m, v, p and returns new m, v, p (one dispatch).
 * Exposed so other optimizers (GaLore) can run it on projected shapes.
 */
export function adamStep(
  g: Tensor,
  m: Tensor,
  v: Tensor,
  p: Tensor,
  s: AdamScalars,
): { m: Tensor; v: Tensor; p: Tensor } {
  assertF32("adamw", g, m, v, p);
  const m2 = Tensor.empty(p.shape);
  const v2 = Tensor.empty(p.shape);
  const p2 = Tensor.empty(p.shape);
  const buf = new ArrayBuffer(32);
  new Float32Array(buf, 0, 6).set([s.b1, s.b2, s.eps, s.stepSize, s.invSqrtBc2, s.decay]);
  new Uint32Array(buf, 24, 1)[0] = p.size;
  dispatch({
    name: "adamw",
    code: CODE,
    inputs: [g.binding(), m.binding(), v.binding(), p.binding()],
    outputs: [m2.binding(), v2.binding(), p2.binding()],
    uniforms: new Uint8Array(buf),
    workgroups: flatGrid(p.size),
  });
  return { m: m2, v: v2, p: p2 };
}

/**
 * AdamW as in `torch.optim.AdamW`: m ← β1m + (1−β1)g, v ← β2v + (1−β2)g², p ← p(1 − lr·λ) −
 * lr/(1−β1^t) · m / (√v/√(1−β2^t) + eps), with t counted in the state. One dispatch per parameter.
 */
export function adamw(opts: AdamWOptions): Optimizer<AdamWState> {
  const [b1, b2] = opts.betas ?? [0.9, 0.999];
  const eps = opts.eps ?? 1e-8;
  const wd = opts.weightDecay ?? 0;
  return {
    hyper: { lr: opts.lr, weightDecay: wd },
    init(params: TensorTree): AdamWState {
      const ps = treeLeaves(params).map((l) => l.tensor);
      return { count: 0, m: ps.map((p) => zeros(p.shape)), v: ps.map((p) => zeros(p.shape)) };
    },
    // Async only to fit the interface: the body has no await, so all dispatches are recorded
    // before the call returns.
    // deno-lint-ignore require-await
    async update(grads, state, params, step, { donate = true } = {}) {
      const [g, p] = pairLeaves(grads, params, "adamw");
      if (state.m.length !== p.length) {
        throw new RangeError(`adamw: state has ${state.m.length} moments for ${p.length} params`);
      }
      const count = state.count + 1;
      const s = adamScalars(lrAt(opts.lr, step), count, b1, b2, eps, wd);
      const next: AdamWState = { count, m: [], v: [] };
      const out = p.map((pi, i) => {
        const r = adamStep(g[i], state.m[i], state.v[i], pi, s);
        next.m.push(r.m);
        next.v.push(r.v);
        // Donating right after each parameter's dispatch lets the pool hand its buffers to the
        // next parameter, so the transient overhead is one parameter's worth, not the model's.
        if (donate) {
          pi.dispose();
          state.m[i].dispose();
          state.v[i].dispose();
        }
        return r.p;
      });
      return { params: treeRebuild(params, out), state: next };
    },
  };
}
