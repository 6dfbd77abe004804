/**
 * The optimizer shape: pure `{ init, update }` transforms over trees of tensors, gradient
 * transforms that run before them (`chain`), and per-group choice (`partition`).
 *
 * Donation. `update` returns NEW parameter and state tensors. By default (`donate: true`) it also
 * disposes the old parameter and state tensors it was given, so a step never holds two copies of
 * the weights and moments: the caller must not use the old `params` or `state` after `update`.
 * Pass `{ donate: false }` to keep them alive (tests, or an EMA of the weights); then the caller
 * owns both generations. Gradients are never consumed: the caller disposes them.
 *
 * Why `update` is async: GaLore reads the gradient back once per projector refresh (every T steps)
 * for an exact SVD on the CPU. Every other step, and every AdamW step, records all its dispatches
 * synchronously before the returned promise settles, so awaiting it costs a microtask, not a GPU
 * sync.
 *
 * Per-parameter updates during backward: every optimizer here works on any tree, including a
 * single tensor, so `states[i] = opt.init(p[i])` and, in the tape's `onGrad(g, i)` hook, start
 * `opt.update(g, states[i], p[i], step)`, keep the promise, and after backward await them all and
 * dispose the gradients (a GaLore refresh step needs its gradient until its promise settles).
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import type { TensorTree } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";

/** Options of one {@link Optimizer.update} call. */
export interface UpdateOptions {
  /**
   * Dispose the old parameters and state after computing the new ones (default true), so memory
   * does not double. With donation on, the caller must not touch the old tensors afterwards.
   */
  donate?: boolean;
}

/** The result of an update: new parameters (shaped like the input tree) and the new state. */
export interface UpdateResult<S> {
  /** New parameter tensors, in a tree shaped like the `params` argument. */
  params: TensorTree;
  /** New optimizer state. */
  state: S;
}

/**
 * A functional optimizer. `step` is the global update index (0 for the first update) and drives
 * learning-rate schedules; bias correction and projector refreshes use counters kept in the state,
 * so a momentum reset (a fresh `init`) restarts them while the schedule goes on.
 */
export interface Optimizer<S = unknown> {
  /** Creates the state for `params` (moments etc.); allocates, never reads, the parameters. */
  init(params: TensorTree): S;
  /** One step; see the module doc for donation. */
  update(
    grads: TensorTree,
    state: S,
    params: TensorTree,
    step: number,
    opts?: UpdateOptions,
  ): Promise<UpdateResult<S>>;
  /** Hyperparameters other transforms may reuse (GaLore decays the full weight with these). */
  readonly hyper?: { readonly lr: Schedule; readonly weightDecay: number };
}

/** A learning rate as a function of the global step (or a constant). */
export type Schedule = number | ((step: number) => number);

/** Evaluates a {@link Schedule} at `step`. */
export function lrAt(lr: Schedule, step: number): number {
  return typeof lr === "number" ? lr : lr(step);
}

/**
 * A transform of gradients that runs before an optimizer (clipping, scaling). `apply` returns new
 * gradient tensors; the caller (usually {@link chain}) disposes them after use.
 */
export interface GradientTransform<S = unknown> {
  /** Creates the transform's state. */
  init(params: TensorTree): S;
  /** Transforms the gradients; never disposes its inputs (except its own old state). */
  apply(
    grads: TensorTree,
    state: S,
    params: TensorTree,
    step: number,
  ): { grads: TensorTree; state: S };
}

/** A parameter (or gradient) with its path in the tree, e.g. `layers.0.attn.wq`. */
export interface Leaf {
  /** Keys from the root joined by ".", array indices as numbers. */
  path: string;
  /** The tensor at that path. */
  tensor: Tensor;
}

/** The tensors of a tree in depth-first key order, with their paths. */
export function treeLeaves(tree: TensorTree, prefix = ""): Leaf[] {
  const out: Leaf[] = [];
  const walk = (t: TensorTree, path: string) => {
    if (t instanceof Tensor) out.push({ path, tensor: t });
    else if (Array.isArray(t)) t.forEach((v, i) => walk(v, path ? `${path}.${i}` : `${i}`));
    else if (t !== null && typeof t === "object") {
      for (const [k, v] of Object.entries(t)) walk(v as TensorTree, path ? `${path}.${k}` : k);
    }
  };
  walk(tree, prefix);
  return out;
}

/** Rebuilds `tree` with its tensors replaced, in {@link treeLeaves} order, by `leaves`. */
export function treeRebuild(tree: TensorTree, leaves: readonly Tensor[]): TensorTree {
  let i = 0;
  const walk = (t: TensorTree): TensorTree => {
    if (t instanceof Tensor) return leaves[i++];
    if (Array.isArray(t)) return t.map(walk);
    if (t !== null && typeof t === "object") {
      return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, walk(v as TensorTree)]));
    }
    return t;
  };
  const out = walk(tree);
  if (i !== leaves.length) {
    throw new ShapeError(`treeRebuild: tree has ${i} tensors, got ${leaves.length} replacements`);
  }
  return out;
}

/** The tensors of `grads` and `params`, checked to pair up leaf by leaf with equal shapes. */
export function pairLeaves(
  grads: TensorTree,
  params: TensorTree,
  op: string,
): [Tensor[], Tensor[]] {
  const g = treeLeaves(grads);
  const p = treeLeaves(params);
  if (g.length !== p.length) {
    throw new ShapeError(`${op}: ${g.length} gradients for ${p.length} parameters`);
  }
  g.forEach((gl, i) => {
    if (!shapesEqual(gl.tensor.shape, p[i].tensor.shape)) {
      throw new ShapeError(
        `${op}: gradient ${fmtShape(gl.tensor.shape)} does not match parameter ` +
          `${p[i].path || i} ${fmtShape(p[i].tensor.shape)}`,
      );
    }
  });
  return [g.map((l) => l.tensor), p.map((l) => l.tensor)];
}

/** Disposes every tensor in a tree (or any state object). */
export function disposeTree(tree: unknown): void {
  const walk = (t: unknown) => {
    if (t instanceof Tensor) t.dispose();
    else if (Array.isArray(t)) t.forEach(walk);
    else if (t !== null && typeof t === "object") Object.values(t).forEach(walk);
  };
  walk(tree);
}

/** Bytes of device memory held by the tensors of a tree or state (4 bytes per element). */
export function treeBytes(tree: unknown): number {
  let bytes = 0;
  const seen = new Set<Tensor>();
  const walk = (t: unknown) => {
    if (t instanceof Tensor) {
      if (!seen.has(t)) bytes += t.size * 4;
      seen.add(t);
    } else if (Array.isArray(t)) t.forEach(walk);
    else if (t !== null && typeof t === "object") Object.values(t).forEach(walk);
  };
  walk(tree);
  return bytes;
}

/** State of {@link chain}: one entry per gradient transform, then the optimizer's. */
export interface ChainState {
  /** States of the gradient transforms, in order. */
  transforms: unknown[];
  /** State of the final optimizer. */
  inner: unknown;
}

/**
 * Runs gradient transforms in order, then `optimizer`, as one optimizer (e.g.
 * `chain(clipByGlobalNorm(1), adamw({ lr }))`). Intermediate gradients are freed as soon as the next
 * stage has consumed them; the caller's gradients are left alone.
 */
export function chain(...stages: [...GradientTransform[], Optimizer]): Optimizer<ChainState> {
  const transforms = stages.slice(0, -1) as GradientTransform[];
  const optimizer = stages.at(-1) as Optimizer;
  return {
    hyper: optimizer.hyper,
    init: (params) => ({
      transforms: transforms.map((t) => t.init(params)),
      inner: optimizer.init(params),
    }),
    async update(grads, state, params, step, opts = {}) {
      let g = grads;
      const states: unknown[] = [];
      try {
        transforms.forEach((t, i) => {
          const r = t.apply(g, state.transforms[i], params, step);
          if (g !== grads) disposeTree(g);
          g = r.grads;
          states.push(r.state);
        });
        const r = await optimizer.update(g, state.inner, params, step, opts);
        return { params: r.params, state: { transforms: states, inner: r.state } };
      } finally {
        if (g !== grads) disposeTree(g);
      }
    },
  };
}

/** State of {@link partition}: each group's optimizer state, keyed by group name. */
export type PartitionState = Record<string, unknown>;

/**
 * Routes each parameter to the optimizer of its group: `selectGroup(path, tensor)` names the group
 * (paths as in {@link treeLeaves}). Each group's optimizer sees the flat list of its tensors, in tree
 * order. Typical: GaLore for 2-D block weights, AdamW for embeddings, head and norms.
 *
 * ```ts
 * const opt = partition(
 *   (path, t) => t.rank === 2 && /\.(attn|mlp)\./.test(path) ? "galore" : "adam",
 *   { galore: galore(adamw({ lr }), { rank: 128 }), adam: adamw({ lr }) },
 * );
 * ```
 */
export function partition(
  selectGroup: (path: string, tensor: Tensor) => string,
  transforms: Record<string, Optimizer>,
): Optimizer<PartitionState> {
  const groupsOf = (params: TensorTree): string[] =>
    treeLeaves(params).map(({ path, tensor }) => {
      const g = selectGroup(path, tensor);
      if (!(g in transforms)) {
        throw new ShapeError(`partition: parameter ${path} selects unknown group "${g}"`);
      }
      return g;
    });
  return {
    init(params) {
      const leaves = treeLeaves(params).map((l) => l.tensor);
      const groups = groupsOf(params);
      const state: PartitionState = {};
      for (const name of Object.keys(transforms)) {
        state[name] = transforms[name].init(leaves.filter((_, i) => groups[i] === name));
      }
      return state;
    },
    async update(grads, state, params, step, opts = {}) {
      const [g, p] = pairLeaves(grads, params, "partition");
      const groups = groupsOf(params);
      const out = new Array<Tensor>(p.length);
      const next: PartitionState = {};
      for (const name of Object.keys(transforms)) {
        const idx = groups.flatMap((gr, i) => (gr === name ? [i] : []));
        const r = await transforms[name].update(
          idx.map((i) => g[i]),
          state[name],
          idx.map((i) => p[i]),
          step,
          opts,
        );
        const np = treeLeaves(r.params).map((l) => l.tensor);
        idx.forEach((i, k) => (out[i] = np[k]));
        next[name] = r.state;
      }
      return { params: treeRebuild(params, out), state: next };
    },
  };
}

/**
 * Momentum reset: disposes `state` and returns a fresh `optimizer.init(params)`, so moments are zero
 * and the step counters (bias correction, GaLore's refresh clock) restart, as the reference code
 * does by rebuilding the optimizer. The LR schedule is not part of the state: pair it with
 * {@link quickRecovery} from `schedule.ts`.
 */
export function resetState<S>(optimizer: Optimizer<S>, state: S, params: TensorTree): S {
  disposeTree(state);
  return optimizer.init(params);
}
