/**
 * Optimizers as update transforms, in optax's shape. A {@link GradientTransformation} maps updates
 * (at first the gradients) to new updates and keeps its own state; {@link chain} composes them;
 * {@link applyUpdates} adds the final updates to the parameters and is the only place parameters
 * change.
 *
 * Ownership. `update(updates, state, params)` consumes `updates` and `state`: it may write its
 * results into their buffers (see `core/donate.ts`), so elementwise stages allocate nothing and the
 * caller must not use either afterwards. It only reads `params`. `applyUpdates` consumes both of
 * its arguments the same way. Copy what you want to keep.
 *
 * Synchronous unless it must wait. `update` returns its result directly whenever it can record all
 * its work without waiting for the GPU — every transform here, except a GaLore step that refreshes
 * its projector (every T steps), which reads the gradient back and returns a promise. So a
 * per-layer update inside backward (see `per_layer.ts`) has recorded its dispatches, and
 * released what it consumed, before backward moves on. Callers that do not care just `await` it.
 *
 * Counts live in the state (bias correction, schedules, projector refreshes), so a momentum reset
 * is a fresh `init`; to keep a schedule running across resets, build the new transform with a
 * schedule shifted by the steps already taken.
 *
 * @example
 * ```ts
 * const opt = chain(clipByGlobalNorm(1), scaleByAdam(), addDecayedWeights(0.1), scaleByLearningRate(1e-3));
 * let state = opt.init(params);
 * const { value, grads } = valueAndGrad(lossFn)(params);
 * const r = await opt.update(grads, state, params);
 * state = r.state;
 * params = applyUpdates(params, r.updates);
 * ```
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import { addManyEligible, addManyInPlace, axpbyInPlace } from "./inplace.ts";

/** A value, or a promise of it (see the module doc: transforms wait only when they must). */
export type MaybePromise<T> = T | Promise<T>;

/** What {@link GradientTransformation.update} returns. */
export interface TransformResult<S> {
  /**
   * The transformed updates, shaped like the input updates; a null leaf means "leave this
   * parameter as it is" (e.g. {@link multiSteps} between boundaries).
   */
  updates: TensorTree;
  /** The new state, which replaces the consumed one. */
  state: S;
}

/**
 * An update of one parameter fed its gradient in blocks of rows (see
 * {@link GradientTransformation.updateRows}): each block updates the same rows of the parameter and
 * of the state in place, so neither the whole gradient nor the whole update ever exists.
 */
export interface RowUpdate<S> {
  /** Blocks must start on multiples of this many rows (the last one may end anywhere). */
  readonly multiple: number;
  /**
   * Consumes `grad`, rows `[r0, r0 + grad.shape[0])` of the gradient (the parameter's dtype), and
   * updates those rows of the parameter and of the state.
   */
  take(grad: Tensor, r0: number): void;
  /** After every row has been taken: the new state (the parameter keeps its handle). */
  finish(): S;
}

/** An update transform: `init` builds its state, `update` maps updates to updates. */
export interface GradientTransformation<S = unknown> {
  /** Creates the state for `params` (reads shapes only: never their values). */
  init(params: TensorTree): S;
  /**
   * Transforms `updates` (consumed), given the old `state` (consumed) and, for transforms that
   * need them, the current `params` (read only).
   */
  update(updates: TensorTree, state: S, params?: TensorTree): MaybePromise<TransformResult<S>>;
  /**
   * Optional, for transforms that treat elements independently (Adam): an update of the one
   * parameter in `params`, made block of rows by block of rows in place, with the same results as
   * `update` on the whole gradient followed by {@link applyUpdates}. Null when it cannot (a
   * parameter or state that another handle shares, say). Creating it changes nothing; from the
   * first `take` on, it owns the parameter's buffer and `state` (consumed).
   */
  updateRows?(params: TensorTree, state: S): RowUpdate<S> | null;
}

/** A number, or a function of the transform's update count (0 for the first update). */
export type Schedule = number | ((count: number) => number);

/** Evaluates a {@link Schedule} at `count`. */
export function scheduleAt(s: Schedule, count: number): number {
  return typeof s === "number" ? s : s(count);
}

/**
 * `f(x)` now if `x` is a value, after it resolves if it is a promise: the glue that lets a
 * composite transform stay synchronous until one of its parts has to wait.
 */
export function andThen<T, U>(
  x: MaybePromise<T>,
  f: (value: T) => MaybePromise<U>,
): MaybePromise<U> {
  return x instanceof Promise ? x.then(f) : f(x);
}

/**
 * The tensors of `updates` and, when given, of `params`, checked to pair up leaf by leaf with
 * equal shapes; `op` names the caller in errors.
 */
export function pairLeaves(
  updates: TensorTree,
  params: TensorTree | undefined,
  op: string,
): { updates: Tensor[]; params: Tensor[] | undefined } {
  const u = tree.flatten(updates);
  if (params === undefined) return { updates: u, params: undefined };
  const p = tree.flatten(params);
  if (u.length !== p.length) {
    throw new ShapeError(`${op}: ${u.length} updates for ${p.length} parameters`);
  }
  const paths = tree.paths(params);
  u.forEach((t, i) => {
    if (!shapesEqual(t.shape, p[i].shape)) {
      throw new ShapeError(
        `${op}: update ${fmtShape(t.shape)} does not match parameter ` +
          `${paths[i] || i} ${fmtShape(p[i].shape)}`,
      );
    }
  });
  return { updates: u, params: p };
}

/**
 * Runs transforms one after another as one transform: each stage's updates feed the next. The
 * state is the array of the stages' states.
 */
export function chain(...stages: GradientTransformation[]): GradientTransformation<unknown[]> {
  return {
    init: (params) => stages.map((t) => t.init(params)),
    update(updates, state, params) {
      const next: unknown[] = [];
      const from = (i: number, u: TensorTree): MaybePromise<TransformResult<unknown[]>> =>
        i === stages.length ? { updates: u, state: next } : andThen(
          stages[i].update(u, state[i], params),
          (r) => {
            next.push(r.state);
            return from(i + 1, r.updates);
          },
        );
      return from(0, updates);
    },
  };
}

/**
 * params + updates, leaf by leaf, written into the parameters' buffers: consumes both trees and
 * returns the new parameters (a null update leaves its parameter as it is, same handle). Either
 * may be f32 or bf16; a bf16 parameter's sum is formed in f32 and rounded once, to nearest even.
 * f32 pairs are added up to 16 per dispatch.
 */
export function applyUpdates<P extends TensorTree>(params: P, updates: TensorTree): P {
  const u = tree.flatten(updates);
  const paths = tree.paths(params);
  const p = tree.flatten(params);
  // Null leaves are not tensors, so updates pair with parameters by path, not by position.
  const byPath = new Map(tree.paths(updates).map((path, i) => [path, u[i]]));
  const pairs = p.map((pi, i) => {
    const ui = byPath.get(paths[i]);
    if (ui === undefined) return null;
    byPath.delete(paths[i]);
    if (!shapesEqual(ui.shape, pi.shape)) {
      throw new ShapeError(
        `applyUpdates: update ${fmtShape(ui.shape)} does not match parameter ` +
          `${paths[i] || i} ${fmtShape(pi.shape)}`,
      );
    }
    return ui;
  });
  if (byPath.size > 0) {
    throw new ShapeError(`applyUpdates: updates for unknown parameters ${[...byPath.keys()]}`);
  }
  // f32 pairs several per dispatch; the rest (bf16, past one binding) one by one.
  const many = p.flatMap((pi, i) => (pairs[i] && addManyEligible(pi, pairs[i]) ? [i] : []));
  const sums = addManyInPlace(many.map((i) => p[i]), many.map((i) => pairs[i]!));
  const summed = new Map(many.map((i, k) => [i, sums[k]]));
  const out = p.map((pi, i) => {
    const ui = pairs[i];
    if (!ui) return pi;
    const next = summed.get(i) ?? axpbyInPlace(pi, 1, ui, 1);
    ui.dispose();
    return next;
  });
  return tree.unflatten(params, out);
}
