/**
 * Per-group transforms: each parameter goes to the transform its path selects (e.g. GaLore for the
 * block weights, plain AdamW for embeddings, head and norms).
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import type { Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import {
  type GradientTransformation,
  type MaybePromise,
  pairLeaves,
  type TransformResult,
} from "./transform.ts";

/** State of {@link partition}: each group's state, keyed by group name. */
export type PartitionState = Record<string, unknown>;

/**
 * Routes each parameter to the transform of its group: `label(path, tensor)` names the group (paths
 * as in `core/tree.ts`). A group's transform sees its leaves as one flat object keyed by their full
 * paths, `{ "layers.0.q.w": g, ... }`, so a nested `partition` (or `perLayer`, which hands over
 * one-leaf objects the same way) routes by the same paths. Groups without leaves are not called.
 *
 * @example
 * ```ts
 * const opt = partition((path, t) => (t.rank === 2 && path.startsWith("layers.") ? "galore" : "adam"), {
 *   galore: chain(galore(scaleByAdam(), { rank: 128 }), scaleByLearningRate(lr)),
 *   adam: adamw({ lr }),
 * });
 * ```
 */
export function partition(
  label: (path: string, tensor: Tensor) => string,
  transforms: Record<string, GradientTransformation>,
): GradientTransformation<PartitionState> {
  // Indices of each group's leaves, in leaf order.
  const groups = (t: TensorTree): Map<string, number[]> => {
    const out = new Map<string, number[]>(Object.keys(transforms).map((name) => [name, []]));
    const leaves = tree.flatten(t);
    tree.paths(t).forEach((path, i) => {
      const name = label(path, leaves[i]);
      const idx = out.get(name);
      if (!idx) {
        throw new ShapeError(`partition: parameter ${path} selects unknown group "${name}"`);
      }
      idx.push(i);
    });
    return out;
  };
  const pick = (paths: string[], leaves: Tensor[], idx: number[]) =>
    Object.fromEntries(idx.map((i) => [paths[i], leaves[i]]));
  return {
    init(params) {
      const paths = tree.paths(params);
      const leaves = tree.flatten(params);
      const state: PartitionState = {};
      for (const [name, idx] of groups(params)) {
        state[name] = transforms[name].init(pick(paths, leaves, idx));
      }
      return state;
    },
    update(updates, state, params) {
      const { updates: u, params: p } = pairLeaves(updates, params, "partition");
      const paths = tree.paths(updates);
      const parts: [string, number[], MaybePromise<TransformResult<unknown>>][] = [];
      for (const [name, idx] of groups(updates)) {
        if (idx.length === 0) continue;
        const sub = pick(paths, u, idx);
        parts.push([
          name,
          idx,
          transforms[name].update(sub, state[name], p && pick(paths, p, idx)),
        ]);
      }
      const assemble = (results: TransformResult<unknown>[]): TransformResult<PartitionState> => {
        const out = new Array<unknown>(u.length).fill(null);
        const next: PartitionState = { ...state };
        results.forEach((r, k) => {
          const [name, idx] = parts[k];
          const got = r.updates as Record<string, unknown>;
          for (const i of idx) out[i] = got[paths[i]] ?? null;
          next[name] = r.state;
        });
        return { updates: tree.unflatten(updates, out), state: next };
      };
      const results = parts.map(([, , r]) => r);
      return results.some((r) => r instanceof Promise)
        ? Promise.all(results).then(assemble)
        : assemble(results as TransformResult<unknown>[]);
    },
    updateRows(params, state) {
      const leaves = tree.flatten(params);
      if (leaves.length !== 1) return null;
      const name = label(tree.paths(params)[0], leaves[0]);
      const rows = transforms[name]?.updateRows?.(params, state[name]);
      if (!rows) return null;
      return {
        multiple: rows.multiple,
        take: (g, r0) => rows.take(g, r0),
        finish: () => ({ ...state, [name]: rows.finish() }),
      };
    },
  };
}
