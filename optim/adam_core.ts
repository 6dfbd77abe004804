/**
 * What every Adam variant shares: the options, the per-step scalars and the two transforms
 * (`scaleByAdam`-shaped and fused AdamW) built over a way of storing the moments (f32 tensors in
 * `adam_f32.ts`, block-quantized 8-bit codes in `adam8bit.ts`). Internal: `mod.ts` exports the
 * variants, not this.
 * @module
 */
import { inPlaceWindow, ownedAlone } from "../core/donate.ts";
import { bytesPerElement } from "../core/dtype.ts";
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import { lcm, rowAlignment } from "../core/windows.ts";
import { axpbyInPlace } from "./inplace.ts";
import {
  type GradientTransformation,
  pairLeaves,
  type Schedule,
  scheduleAt,
  type TransformResult,
} from "./transform.ts";

/** Options of `scaleByAdam` and `scaleByAdam8bit`. */
export interface AdamOptions {
  /** (β1, β2); default (0.9, 0.999). */
  betas?: readonly [number, number];
  /** Added to √v̂; default 1e-8 (PyTorch's AdamW; GaLore's code uses 1e-6). */
  eps?: number;
}

/** Options of `adamw` and `adamw8bit`. */
export interface AdamWOptions extends AdamOptions {
  /** Learning rate, or a schedule of the update count (see `schedule.ts`). */
  lr: Schedule;
  /** Decoupled weight decay λ: the update gains −lr·λ·p; default 0. */
  weightDecay?: number;
}

/**
 * The per-step scalars of an Adam kernel, in float64 here and rounded once to f32 in the uniform:
 * update = stepSize·m/(√v·invSqrtBc2 + eps) + decay·p.
 */
export interface AdamScalars {
  /** β1. */
  b1: number;
  /** β2. */
  b2: number;
  /** eps. */
  eps: number;
  /** 1/(1−β1^t), times −lr for the fused form. */
  stepSize: number;
  /** 1/√(1−β2^t). */
  invSqrtBc2: number;
  /** −lr·λ for the fused form, else 0. */
  decay: number;
}

/** How a variant stores one parameter's moments and runs one step on them. */
export interface MomentStore<M> {
  /** Zero moments for a parameter of this shape (reads the shape only). */
  init(p: Tensor): { m: M; v: M };
  /**
   * One step, in place: consumes g, m and v, returns the update (in g's buffer and dtype) and the
   * new moments; `p` (read only) is given when decay ≠ 0.
   */
  step(g: Tensor, m: M, v: M, p: Tensor | undefined, s: AdamScalars): { u: Tensor; m: M; v: M };
  /**
   * Optionally, several steps at once (fewer dispatches; the same results as `step` one by one):
   * steps the parameters it takes and returns their results by index; the caller runs `step` on
   * the rest.
   */
  stepMany?(
    g: readonly Tensor[],
    m: readonly M[],
    v: readonly M[],
    p: readonly (Tensor | undefined)[] | undefined,
    s: AdamScalars,
  ): Map<number, { u: Tensor; m: M; v: M }>;
  /** Optionally, windows of moments, for updates made block of rows by block of rows. */
  windows?: MomentWindows<M>;
}

/** Windows of one parameter's moments (see {@link MomentStore.windows}). */
export interface MomentWindows<M> {
  /** Rows a window of `m` must start on a multiple of, for a parameter with `rowElems` per row. */
  rowMultiple(m: M, rowElems: number): number;
  /**
   * Elements `[start, start + count)` of `m` as moments that `step` updates in place, inside m
   * (see `inPlaceWindow`); `m` must be the only handle to its tensors.
   */
  window(m: M, start: number, count: number): M;
}

/** State of an Adam variant: the update count and the moments per parameter (leaf order). */
export interface MomentsState<M> {
  /** Updates since init: drives bias correction and the learning-rate schedule. */
  count: number;
  /** First moments, one per parameter. */
  m: M[];
  /** Second moments, one per parameter. */
  v: M[];
}

/**
 * The Adam arithmetic every kernel shares, in WGSL over the uniforms of {@link AdamScalars}:
 * `adam_moments(g, m, v)` gives the new (m, v), `adam_direction(mv)` the step without decay.
 */
export const ADAM_WGSL = `fn adam_moments(g: f32, m: f32, v: f32) -> vec2f {
  return vec2f(u.b1 * m + (1.0 - u.b1) * g, u.b2 * v + (1.0 - u.b2) * g * g);
}
fn adam_direction(mv: vec2f) -> f32 {
  return u.stepSize * mv.x / (sqrt(mv.y) * u.invSqrtBc2 + u.eps);
}`;

/** The f32 uniforms of {@link AdamScalars}, in order. */
export const ADAM_SCALARS = ["b1", "b2", "eps", "stepSize", "invSqrtBc2", "decay"] as const;

function betasOf(opts: AdamOptions): [number, number, number] {
  const [b1, b2] = opts.betas ?? [0.9, 0.999];
  return [b1, b2, opts.eps ?? 1e-8];
}

/**
 * The two transforms of a variant: `direction` (optax's `scale_by_adam`, no parameters needed, so
 * it runs inside `galore`) and `fused` (AdamW's whole update in one kernel per parameter).
 */
export function adamTransforms<M>(store: MomentStore<M>, names: [string, string]): {
  direction(opts?: AdamOptions): GradientTransformation<MomentsState<M>>;
  fused(opts: AdamWOptions): GradientTransformation<MomentsState<M>>;
} {
  const init = (params: TensorTree): MomentsState<M> => {
    const state: MomentsState<M> = { count: 0, m: [], v: [] };
    for (const p of tree.flatten(params)) {
      const { m, v } = store.init(p);
      state.m.push(m);
      state.v.push(v);
    }
    return state;
  };
  // Runs one step on every leaf with its moments; the variants differ only in their scalars.
  const update = (
    name: string,
    updates: TensorTree,
    state: MomentsState<M>,
    params: Tensor[] | undefined,
    scalars: (t: number) => AdamScalars,
  ): TransformResult<MomentsState<M>> => {
    const g = tree.flatten(updates);
    if (state.m.length !== g.length) {
      throw new RangeError(`${name}: state has ${state.m.length} moments for ${g.length} updates`);
    }
    const count = state.count + 1;
    const s = scalars(count);
    const next: MomentsState<M> = { count, m: [], v: [] };
    const many = store.stepMany?.(g, state.m, state.v, params, s);
    const out = g.map((gi, i) => {
      const r = many?.get(i) ?? store.step(gi, state.m[i], state.v[i], params?.[i], s);
      next.m.push(r.m);
      next.v.push(r.v);
      return r.u;
    });
    return { updates: tree.unflatten(updates, out), state: next };
  };
  const scalarsOf = (b1: number, b2: number, eps: number, t: number, lr: number, wd: number) => ({
    b1,
    b2,
    eps,
    stepSize: lr / (1 - b1 ** t),
    invSqrtBc2: 1 / Math.sqrt(1 - b2 ** t),
    decay: lr * wd,
  });
  return {
    direction(opts = {}) {
      const [b1, b2, eps] = betasOf(opts);
      return {
        init,
        update: (updates, state) =>
          update(names[0], updates, state, undefined, (t) => scalarsOf(b1, b2, eps, t, 1, 0)),
      };
    },
    fused(opts) {
      const [b1, b2, eps] = betasOf(opts);
      const wd = opts.weightDecay ?? 0;
      const name = names[1];
      if (!(wd >= 0)) throw new RangeError(`${name}: weightDecay must be >= 0, got ${wd}`);
      return {
        init,
        update(updates, state, params) {
          if (wd > 0 && params === undefined) {
            throw new RangeError(
              `${name}: weight decay needs the parameters (none are passed inside galore)`,
            );
          }
          const p = wd > 0 ? pairLeaves(updates, params, name).params : undefined;
          const lr = scheduleAt(opts.lr, state.count);
          return update(name, updates, state, p, (t) => scalarsOf(b1, b2, eps, t, -lr, wd));
        },
        updateRows(params, state) {
          const w = store.windows;
          const leaves = tree.flatten(params);
          if (!w || leaves.length !== 1 || state.m.length !== 1 || leaves[0].rank === 0) {
            return null;
          }
          const [p, m, v] = [leaves[0], state.m[0], state.v[0]];
          // In place only where nothing else can see it, as `donate` would have it.
          if (!tree.flatten([p, m, v]).every(ownedAlone)) return null;
          const rowElems = p.size / p.shape[0];
          const count = state.count + 1;
          const s = scalarsOf(b1, b2, eps, count, -scheduleAt(opts.lr, state.count), wd);
          return {
            multiple: lcm(
              rowAlignment(rowElems * bytesPerElement(p.dtype)),
              w.rowMultiple(m, rowElems),
            ),
            take(g, r0) {
              const [start, size] = [r0 * rowElems, g.size];
              const pw = inPlaceWindow(p, start, size);
              const [mw, vw] = [w.window(m, start, size), w.window(v, start, size)];
              const r = store.step(g, mw, vw, wd > 0 ? pw : undefined, s);
              // The same sum as applyUpdates', into the parameter's rows.
              tree.dispose([axpbyInPlace(pw, 1, r.u, 1), r.u, r.m, r.v]);
            },
            finish: () => ({ count, m: [m], v: [v] }),
          };
        },
      };
    },
  };
}
