/**
 * Per-layer updates as a composition: {@link perLayer} runs a transform on each parameter
 * alone, so the tape's `onGrad` hook can update a parameter the moment its gradient is final and
 * free that gradient at once; the full set of gradients is never resident.
 * @module
 */
import { GradientError } from "../core/errors.ts";
import type { GradRows } from "../core/tape.ts";
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import {
  andThen,
  applyUpdates,
  type GradientTransformation,
  type MaybePromise,
} from "./transform.ts";

/** One update made parameter by parameter during backward; see {@link PerLayer.start}. */
export interface PerLayerStep<P extends TensorTree, S> {
  /**
   * The tape's hook (pass the step as backward's options, `tape.backward(loss, leaves, step)`,
   * leaves in the order of `tree.flatten(params)`): consumes the final gradient of parameter
   * `index`, runs the transform on it and applies the update. A transform that must wait (a
   * GaLore projector refresh) keeps the gradient until it is done and finishes later.
   */
  readonly onGrad: (grad: Tensor, index: number) => void;
  /**
   * The tape's `onGradRows` hook: where the transform can update parameter `index` block of rows
   * by block of rows (see {@link GradientTransformation.updateRows}), a taker of its gradient in
   * such blocks, so that neither its whole gradient nor its whole update exists; else null (the
   * gradient then comes whole to `onGrad`).
   */
  readonly onGradRows: (index: number) => GradRows | null;
  /** Waits for the updates still in flight and returns the new parameters and state. */
  finish(): Promise<{ params: P; state: S[] }>;
}

/** A transform run on each parameter alone; also usable as an ordinary transform. */
export interface PerLayer<S> extends GradientTransformation<S[]> {
  /**
   * Starts an update made during backward: consumes `params` and `state` (use those of
   * {@link PerLayerStep.finish} afterwards). Gives the same results, bit for bit, as `update` on
   * all gradients followed by `applyUpdates`.
   */
  start<P extends TensorTree>(
    params: P,
    state: S[],
    opts?: PerLayerStartOptions,
  ): PerLayerStep<P, S>;
}

/** Options of {@link PerLayer.start}. */
export interface PerLayerStartOptions {
  /**
   * Shown each gradient (whole, or each block of rows) with its parameter's index before the update
   * consumes it: e.g. to flag non-finite values.
   */
  observe?: (grad: Tensor, index: number) => void;
}

/**
 * Per-layer updates: `inner` applied to every parameter separately, with one state per parameter
 * (leaf order), so that each can be updated inside backward (see {@link PerLayer.start}). The
 * inner transform sees one-leaf objects `{ [path]: tensor }`, so `partition` inside it routes by
 * the parameter's full path. Only transforms that treat parameters independently belong inside:
 * not `clipByGlobalNorm`, whose norm spans all gradients.
 *
 * @example
 * ```ts
 * const perLayerOpt = perLayer(adamw({ lr: 1e-3 }));
 * let state = perLayerOpt.init(params);
 * const tape = new Tape();
 * const leaves = tree.flatten(params);
 * tape.watch(...leaves);
 * const value = tape.run(() => lossOf(params));
 * const step = perLayerOpt.start(params, state);
 * tape.backward(value, leaves, step); // its onGrad and onGradRows hooks
 * ({ params, state } = await step.finish());
 * ```
 */
export function perLayer<S>(inner: GradientTransformation<S>): PerLayer<S> {
  const one = (path: string, t: Tensor | undefined) => (t ? { [path]: t } : undefined);
  const updateLeaf = (
    path: string,
    g: Tensor,
    state: S,
    p: Tensor | undefined,
  ): MaybePromise<{ update: Tensor | null; state: S }> =>
    andThen(inner.update({ [path]: g }, state, one(path, p)), (r) => ({
      update: ((r.updates as Record<string, Tensor | null>)[path]) ?? null,
      state: r.state,
    }));
  const checkCount = (state: S[], n: number) => {
    if (state.length !== n) {
      throw new RangeError(`perLayer: state holds ${state.length} entries for ${n} parameters`);
    }
  };
  return {
    init(params) {
      const leaves = tree.flatten(params);
      return tree.paths(params).map((path, i) => inner.init({ [path]: leaves[i] }));
    },
    update(updates, state, params) {
      const u = tree.flatten(updates);
      const paths = tree.paths(updates);
      const p = params === undefined ? undefined : tree.flatten(params);
      checkCount(state, u.length);
      const results = u.map((g, i) => updateLeaf(paths[i], g, state[i], p?.[i]));
      const assemble = (rs: { update: Tensor | null; state: S }[]) => ({
        updates: tree.unflatten(updates, rs.map((r) => r.update)),
        state: rs.map((r) => r.state),
      });
      return results.some((r) => r instanceof Promise)
        ? Promise.all(results).then(assemble)
        : assemble(results as { update: Tensor | null; state: S }[]);
    },
    start(params, state, { observe } = {}) {
      const paths = tree.paths(params);
      const leaves = tree.flatten(params);
      checkCount(state, leaves.length);
      const next = leaves.slice();
      const nextState = state.slice();
      const seen = leaves.map(() => false);
      const pending: Promise<void>[] = [];
      const arrives = (i: number) => {
        if (seen[i]) throw new GradientError(`perLayer: a second gradient for ${paths[i]}`);
        seen[i] = true;
      };
      const onGrad = (g: Tensor, i: number) => {
        observe?.(g, i);
        arrives(i);
        const done = andThen(updateLeaf(paths[i], g, state[i], leaves[i]), (r) => {
          nextState[i] = r.state;
          if (r.update) next[i] = applyUpdates(leaves[i], r.update);
        });
        if (done instanceof Promise) pending.push(done);
      };
      const onGradRows = (i: number): GradRows | null => {
        const rows = inner.updateRows?.({ [paths[i]]: leaves[i] }, state[i]);
        return rows
          ? {
            multiple: rows.multiple,
            take: (g, r0) => {
              observe?.(g, i);
              rows.take(g, r0);
            },
            end: () => {
              arrives(i);
              nextState[i] = rows.finish();
            },
          }
          : null;
      };
      return {
        onGrad,
        onGradRows,
        async finish() {
          await Promise.all(pending);
          const missing = paths.filter((_, i) => !seen[i]);
          if (missing.length > 0) {
            throw new GradientError(`perLayer: no gradient arrived for ${missing.join(", ")}`);
          }
          return { params: tree.unflatten(params, next), state: nextState };
        },
      };
    },
  };
}
