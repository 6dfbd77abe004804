/**
 * Trees of tensors: the one walker behind parameters, gradients, optimizer states, checkpoints and
 * `scope`. A tree is a {@link Tensor}, an array of trees, or a plain object of trees; any other
 * value (number, string, boolean, null, undefined, a class instance) is kept as it is and is not a
 * leaf.
 *
 * Leaf order, the same in every function here: depth first; arrays by index; plain objects in
 * `Object.keys` order (integer-like keys ascending, then the other keys in insertion order, the
 * order `JSON.stringify` writes them). A leaf's path joins its keys with "." (array indices as
 * numbers), e.g. `layers.0.q.w`; the root itself has the path "".
 *
 * @example
 * ```ts
 * import { mulScalar, tree, zeros } from "jsr:@sltrain/sltrain";
 *
 * const params = { w: zeros([2, 3]), layers: [{ b: zeros([3]) }] };
 * tree.paths(params); // ["w", "layers.0.b"]
 * const doubled = tree.map(params, (t) => mulScalar(t, 2));
 * tree.dispose([params, doubled]);
 * ```
 * @module
 */
import type { Tensor } from "./tensor.ts";

/** A tree of tensors: a tensor, or arrays / plain objects of trees. Other values pass through. */
export type TensorTree =
  | Tensor
  | readonly TensorTree[]
  | { readonly [key: string]: TensorTree }
  | number
  | string
  | boolean
  | null
  | undefined;

// tensor.ts cannot be imported here (its `scope` walks trees through this module), so tensors
// carry a brand that tensor.ts sets on Tensor.prototype under the same registered symbol.
const TENSOR_BRAND = Symbol.for("@sltrain/tensor");

/** True for a {@link Tensor} handle (live or disposed). */
export function isTensor(value: unknown): value is Tensor {
  return typeof value === "object" && value !== null &&
    (value as { [TENSOR_BRAND]?: unknown })[TENSOR_BRAND] === true;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || isTensor(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function walk(node: unknown, path: string, visit: (t: Tensor, path: string) => void): void {
  if (isTensor(node)) visit(node, path);
  else if (Array.isArray(node)) node.forEach((v, i) => walk(v, join(path, i), visit));
  else if (isPlainObject(node)) {
    for (const k of Object.keys(node)) walk(node[k], join(path, k), visit);
  }
}

function join(path: string, key: string | number): string {
  return path === "" ? String(key) : `${path}.${key}`;
}

/** The tensors of a tree, in leaf order. */
export function flatten(tree: unknown): Tensor[] {
  const out: Tensor[] = [];
  walk(tree, "", (t) => out.push(t));
  return out;
}

/** The path of every tensor of a tree, in leaf order (`flatten(tree)[i]` is at `paths(tree)[i]`). */
export function paths(tree: unknown): string[] {
  const out: string[] = [];
  walk(tree, "", (_, p) => out.push(p));
  return out;
}

/**
 * A tree shaped like `tree` whose i-th tensor is replaced by `fn(tensor, path, i)`; everything else
 * is copied as it is (arrays and plain objects are rebuilt, never mutated).
 */
export function map<T>(
  tree: T,
  fn: (tensor: Tensor, path: string, index: number) => Tensor | null | undefined,
): T;
/** The same walk with `fn` returning any value (e.g. a JSON placeholder per tensor). */
export function map(
  tree: unknown,
  fn: (tensor: Tensor, path: string, index: number) => unknown,
): unknown;
export function map(
  tree: unknown,
  fn: (tensor: Tensor, path: string, index: number) => unknown,
): unknown {
  let i = 0;
  const rec = (node: unknown, path: string): unknown => {
    if (isTensor(node)) return fn(node, path, i++);
    if (Array.isArray(node)) return node.map((v, k) => rec(v, join(path, k)));
    if (isPlainObject(node)) {
      const out: Record<string, unknown> = {};
      for (const k of Object.keys(node)) out[k] = rec(node[k], join(path, k));
      return out;
    }
    return node;
  };
  return rec(tree, "");
}

/**
 * `template` with its tensors replaced, in leaf order, by `leaves` (which may hold null for "no
 * tensor here"). Throws a RangeError when the counts differ.
 */
export function unflatten<T>(template: T, leaves: readonly unknown[]): T {
  const n = flatten(template).length;
  if (n !== leaves.length) {
    throw new RangeError(`tree.unflatten: the tree has ${n} tensors, got ${leaves.length} leaves`);
  }
  return map(template, (_, __, i) => leaves[i]) as T;
}

/** Disposes every tensor of a tree (idempotent: disposed tensors are skipped). */
export function dispose(tree: unknown): void {
  walk(tree, "", (t) => t.dispose());
}

/**
 * Device bytes held by the tensors of a tree, each storage counted once (a tensor and its views
 * share one). Disposed tensors count nothing.
 */
export function bytes(tree: unknown): number {
  const seen = new Set<unknown>();
  let total = 0;
  walk(tree, "", (t) => {
    if (t.isDisposed || seen.has(t.storage)) return;
    seen.add(t.storage);
    total += t.storage.bytes;
  });
  return total;
}
