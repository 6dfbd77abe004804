/**
 * Reverse-mode autodiff with an explicit tape. Nothing is recorded unless a {@link Tape} is running;
 * ops call {@link recordOp} and the tape keeps what their VJPs need until backward has used it.
 * @module
 */
import { isFloat } from "./dtype.ts";
import { DTypeError, GradientError } from "./errors.ts";
import { defineKernel } from "./define_kernel.ts";
import { fmtShape, shapesEqual } from "./shape.ts";
import { convert } from "./convert.ts";
import { forEachWindow } from "./windows.ts";
import {
  adopt,
  atScopeDepth,
  captureCreated,
  keep,
  ones,
  scope,
  scopeDepth,
  Tensor,
  zeros,
} from "./tensor.ts";
import * as tree from "./tree.ts";
import type { TensorTree } from "./tree.ts";

export type { TensorTree };

/**
 * A VJP: given the gradient of the op's output, the gradients of its inputs (null = none). `ctx`
 * is the running backward's (most VJPs ignore it).
 */
export type Vjp = (g: Tensor, ctx: VjpContext) => readonly (Tensor | null | undefined)[];

/**
 * The VJP of an op with several outputs: given the gradient of each output (undefined for an
 * output nothing downstream used), the gradients of its inputs (null = none).
 */
export type MultiVjp = (
  grads: readonly (Tensor | undefined)[],
  ctx: VjpContext,
) => readonly (Tensor | null | undefined)[];

/**
 * What a VJP may ask of the running backward: whether it can hand an input's gradient over
 * itself, the moment it is final, instead of returning it. Both only ever say yes when the
 * backward's caller takes gradients as they become final (`onGrad`) and this op's contribution is
 * the input's last one (no other op adds to it).
 */
export interface VjpContext {
  /**
   * A taker of `input`'s gradient in blocks of rows, when the caller asked for them (`onGradRows`);
   * null otherwise. An op that uses it computes each block of rows of the gradient, hands it over
   * (`take`, in order, in the input's dtype) before computing the next, calls `end`, and returns
   * null for that input: the caller may update the leaf's rows in place as they arrive, so the VJP
   * must not read rows of `input` it has handed over.
   */
  gradRows(input: Tensor): GradRows | null;
  /**
   * Hands `grad` over as `input`'s whole final gradient now (consumed; the VJP then returns null
   * for it) and lets go of the op's hold on `input` first: the caller may then update it in place
   * (a tensor the tape still pins would be copied by `donate`). False, with `grad` untouched, when
   * the caller does not take it now.
   */
  handOver(input: Tensor, grad: Tensor): boolean;
}

interface TapeNode {
  name: string;
  inputs: readonly Tensor[];
  outputs: readonly Tensor[];
  saved: readonly Tensor[];
  vjp: MultiVjp;
}

let active: Tape | null = null;

/**
 * Takes one leaf's final gradient in blocks of rows (see {@link BackwardOptions.onGradRows} and
 * {@link VjpContext.gradRows}), so that the whole gradient never exists. Nothing happens until the
 * first `take` (or `end`): an op that cannot block its gradient this way returns it whole as usual.
 */
export interface GradRows {
  /** Blocks must start on multiples of this many rows (the last one may end anywhere). */
  readonly multiple: number;
  /**
   * Consumes `grad`, rows `[r0, r0 + grad.shape[0])` of the gradient, in the leaf's dtype; blocks
   * come in order, each starting where the previous one ended.
   */
  take(grad: Tensor, r0: number): void;
  /** Called once every row has been taken. */
  end(): void;
}

/** True while a tape is recording (ops may skip work that only backward needs). */
export function isRecording(): boolean {
  return active !== null;
}

/**
 * Runs `fn` without recording on the running tape: for ops whose internals (layout copies,
 * rebuilt weights) are covered by the op's own VJP and should not be kept for backward.
 */
export function untracked<T>(fn: () => T): T {
  const prev = active;
  active = null;
  try {
    return fn();
  } finally {
    active = prev;
  }
}

/**
 * Records an op on the running tape, if any, when at least one input is differentiable. `saved`
 * lists extra tensors (besides inputs and output) that the VJP reads; the tape keeps all of them
 * alive until the VJP has run.
 */
export function recordOp(
  name: string,
  inputs: readonly Tensor[],
  output: Tensor,
  vjp: Vjp,
  saved: readonly Tensor[] = [],
): void {
  active?.record({ name, inputs, outputs: [output], saved, vjp: (gs, ctx) => vjp(gs[0]!, ctx) });
}

/**
 * Records an op with several outputs (e.g. a fused residual add and norm, whose sum and normed
 * value are both used downstream), so that its VJP sees every output's gradient at once and can
 * fuse their use (e.g. add the residual gradient inside the norm's backward kernel). Like
 * {@link recordOp} otherwise; the outputs must be distinct tensors.
 */
export function recordMultiOp(
  name: string,
  inputs: readonly Tensor[],
  outputs: readonly Tensor[],
  vjp: MultiVjp,
  saved: readonly Tensor[] = [],
): void {
  active?.record({ name, inputs, outputs, saved, vjp });
}

/** Options of {@link Tape.backward}. */
export interface BackwardOptions {
  /**
   * Called as soon as the gradient of `wrt[index]` is final (no later op can add to it), in reverse
   * order of first use. The hook owns `grad` and must dispose it; backward then returns `undefined`
   * for that entry. This is what lets an optimizer update each parameter during backward.
   */
  onGrad?: (grad: Tensor, index: number) => void;
  /**
   * With `onGrad`: asked when an op can hand over the final gradient of `wrt[index]` in blocks of
   * rows (see {@link VjpContext.gradRows}). A {@link GradRows} gets every block instead of
   * `onGrad` getting the whole gradient; null (or an op that declines) leaves it to `onGrad`.
   */
  onGradRows?: (index: number) => GradRows | null;
  /**
   * The gradient of `output` to start from (its shape; not consumed). Default: one, which needs a
   * scalar output. A vector-Jacobian product of a non-scalar output, e.g. a recomputed segment's
   * (see {@link recompute}).
   */
  outputGrad?: Tensor;
}

/**
 * An explicit autodiff tape. Typical use is {@link valueAndGrad}; advanced code drives it directly:
 * `watch` the leaves, `run` the forward, `backward` once, then `dispose`.
 */
export class Tape {
  #nodes: TapeNode[] = [];
  #tracked = new Set<Tensor>();
  #leaves = new Set<Tensor>();
  #owned = new Set<Tensor>();
  #refs = new Map<Tensor, number>();
  // Inputs a node let go of before its own release (see #releaseInput).
  #releasedInputs = new Map<TapeNode, Set<Tensor>>();
  #used = false;

  /** Marks f32 tensors as differentiable leaves. */
  watch(...tensors: Tensor[]): void {
    for (const t of tensors) {
      if (!isFloat(t.dtype)) {
        throw new DTypeError(
          `cannot differentiate with respect to a ${t.dtype} tensor ${fmtShape(t.shape)}`,
        );
      }
      t.storage; // throws if disposed
      this.#tracked.add(t);
      this.#leaves.add(t);
    }
  }

  /** Number of recorded ops. */
  get size(): number {
    return this.#nodes.length;
  }

  /** @internal Called by {@link recordOp}. */
  record(node: TapeNode): void {
    if (!node.inputs.some((t) => this.#tracked.has(t))) return;
    this.#nodes.push(node);
    for (const o of node.outputs) this.#tracked.add(o);
    for (const t of new Set([...node.inputs, ...node.outputs, ...node.saved])) {
      const n = this.#refs.get(t) ?? 0;
      if (n === 0) t.pin();
      this.#refs.set(t, n + 1);
    }
  }

  /**
   * Runs `fn` while recording. Tensors `fn` creates and does not return become the tape's: those
   * a VJP needs live until backward has used them, the rest are disposed now.
   */
  run<T>(fn: () => T): T {
    if (active) {
      throw new GradientError("another tape is already recording; nested tapes are not supported");
    }
    if (this.#used) throw new GradientError("this tape has already been used for backward");
    const { result, created } = captureCreated(() => {
      active = this;
      try {
        return fn();
      } finally {
        active = null;
      }
    });
    const returned = new Set(tree.flatten(result));
    for (const t of created) {
      if (returned.has(t)) adopt(t);
      else if (this.#refs.has(t)) this.#owned.add(t);
      else t.dispose();
    }
    return result;
  }

  /**
   * Gradients of the scalar `output` with respect to each watched tensor in `wrt` (zeros for those it
   * does not depend on). Frees what the tape saved as it goes; a tape supports one backward.
   */
  backward(
    output: Tensor,
    wrt: readonly Tensor[],
    opts: BackwardOptions = {},
  ): (Tensor | undefined)[] {
    this.#checkBackward(output, wrt, opts);
    this.#used = true;
    const nodes = this.#nodes;
    const slots = new Map<Tensor, Tensor>();
    const handOver = new HandOver(nodes, wrt, opts, slots);
    try {
      slots.set(output, opts.outputGrad?.view(output.shape) ?? ones(output.shape));
      for (let i = nodes.length - 1; i >= 0; i--) {
        const node = nodes[i];
        const gs = node.outputs.map((o) => slots.get(o));
        if (gs.some((g) => g)) {
          for (const o of node.outputs) slots.delete(o);
          const ctx = handOver.during(i, (input) => this.#releaseInput(node, input));
          try {
            this.#applyVjp(node, gs, ctx, slots);
          } finally {
            for (const g of gs) g?.dispose();
          }
        }
        this.#release(node);
        handOver.after(i);
      }
      handOver.after(-1);
      return handOver.grads;
    } catch (e) {
      for (const g of handOver.grads) g?.dispose();
      throw e;
    } finally {
      for (const g of slots.values()) g.dispose();
      this.dispose();
    }
  }

  #checkBackward(output: Tensor, wrt: readonly Tensor[], opts: BackwardOptions): void {
    if (this.#used) throw new GradientError("this tape has already been used for backward");
    const seed = opts.outputGrad;
    if (seed ? !shapesEqual(seed.shape, output.shape) : output.size !== 1) {
      throw new GradientError(
        seed
          ? `backward: outputGrad ${fmtShape(seed.shape)} does not match the output ${
            fmtShape(output.shape)
          }`
          : `backward needs a scalar output, got shape ${fmtShape(output.shape)}`,
      );
    }
    if (!this.#tracked.has(output)) {
      throw new GradientError(
        "the output is not on this tape: it does not depend on any watched tensor",
      );
    }
    for (const w of wrt) {
      if (!this.#leaves.has(w)) {
        throw new GradientError(`tensor ${fmtShape(w.shape)} is not watched by this tape`);
      }
    }
    if (opts.onGrad && new Set(wrt).size < wrt.length) {
      throw new GradientError("backward with onGrad needs distinct wrt tensors");
    }
  }

  #applyVjp(
    node: TapeNode,
    gs: (Tensor | undefined)[],
    ctx: VjpContext,
    slots: Map<Tensor, Tensor>,
  ): void {
    const { result, created } = captureCreated(() => node.vjp(gs, ctx));
    const fresh = new Set(created);
    const claimed = new Set<Tensor>();
    node.inputs.forEach((x, j) => {
      let gi = result[j];
      if (!gi || !this.#tracked.has(x)) return;
      if (!shapesEqual(gi.shape, x.shape)) {
        throw new GradientError(
          `${node.name}: VJP returned a gradient of shape ${
            fmtShape(gi.shape)
          } for an input of shape ${fmtShape(x.shape)}`,
        );
      }
      // Every slot must own a distinct handle, so a VJP that passes g through (or returns one
      // tensor for two inputs) gets views rather than shared handles.
      if (!fresh.has(gi) || claimed.has(gi)) gi = gi.view(gi.shape);
      claimed.add(gi);
      adopt(gi);
      const prev = slots.get(x);
      if (prev) {
        slots.set(x, accumulate(prev, gi));
        prev.dispose();
        gi.dispose();
      } else {
        slots.set(x, gi);
      }
    });
    for (const t of created) if (!claimed.has(t)) t.dispose();
  }

  #release(node: TapeNode): void {
    const done = this.#releasedInputs.get(node);
    for (const t of new Set([...node.inputs, ...node.outputs, ...node.saved])) {
      if (!done?.has(t)) this.#drop(t);
    }
  }

  /** Releases `node`'s hold on one of its inputs before the node's own release. */
  #releaseInput(node: TapeNode, t: Tensor): void {
    const done = this.#releasedInputs.get(node) ?? new Set<Tensor>();
    if (done.has(t)) return;
    done.add(t);
    this.#releasedInputs.set(node, done);
    this.#drop(t);
  }

  /** One node's hold on `t` ends: at the last, the pin goes and an owned tensor is freed. */
  #drop(t: Tensor): void {
    const n = (this.#refs.get(t) ?? 1) - 1;
    if (n > 0) {
      this.#refs.set(t, n);
      return;
    }
    this.#refs.delete(t);
    t.unpin();
    if (this.#owned.delete(t)) t.dispose();
  }

  /** Frees everything the tape still holds. Safe to call more than once. */
  dispose(): void {
    for (const t of this.#refs.keys()) {
      t.unpin();
      if (this.#owned.has(t)) t.dispose();
    }
    this.#refs.clear();
    this.#releasedInputs.clear();
    this.#owned.clear();
    this.#nodes = [];
    this.#used = true;
  }
}

/**
 * Where one backward's gradients go once final: returned, or, under an `onGrad` hook, handed to the
 * caller the moment no later op can add to them: whole, or by rows where an op can (`onGradRows`),
 * from inside the last VJP that contributes (see {@link VjpContext}) or right after it. What the
 * caller gets, and what its hooks create, is the caller's: never the VJP's frame's.
 */
class HandOver {
  /** What backward returns: `undefined` for the gradients handed over. */
  readonly grads: (Tensor | undefined)[];
  // wrt indices by the node whose VJP makes them final (its first user; -1: none uses it).
  readonly #finalAt = new Map<number, number[]>();
  // wrt indices a VJP has claimed, handing their gradients over itself (whole or by rows).
  readonly #claimed = new Set<number>();
  readonly #depth = scopeDepth();

  constructor(
    nodes: readonly TapeNode[],
    readonly wrt: readonly Tensor[],
    readonly opts: BackwardOptions,
    readonly slots: Map<Tensor, Tensor>,
  ) {
    this.grads = wrt.map(() => undefined);
    const firstUse = new Map<Tensor, number>();
    nodes.forEach((n, i) => n.inputs.forEach((t) => firstUse.has(t) || firstUse.set(t, i)));
    wrt.forEach((w, k) => {
      const i = firstUse.get(w) ?? -1;
      this.#finalAt.set(i, [...(this.#finalAt.get(i) ?? []), k]);
    });
  }

  /** Hands out the gradients final once node `i`'s VJP has run (-1: those no node touched). */
  after(i: number): void {
    for (const k of this.#finalAt.get(i) ?? []) {
      if (this.#claimed.has(k)) continue;
      const w = this.wrt[k];
      const earlier = this.wrt.indexOf(w);
      // A leaf listed twice: the second entry gets its own handle to the same gradient.
      if (earlier < k) this.grads[k] = this.grads[earlier]!.view(w.shape);
      else this.#deliver(k, this.slots.get(w) ?? zeros(w.shape, w.dtype), false);
      this.slots.delete(w);
    }
  }

  /** The context of node `i`'s VJP; `release` ends the node's hold on one of its inputs. */
  during(i: number, release: (input: Tensor) => void): VjpContext {
    if (!this.opts.onGrad) return NO_HAND_OVER;
    return {
      gradRows: (input) => this.#rows(i, input),
      handOver: (input, grad) => {
        const k = this.#finalWith(i, input);
        if (k === undefined) return false;
        this.#claimed.add(k);
        release(input);
        this.#deliver(k, grad, true);
        return true;
      },
    };
  }

  // wrt's index of `input` if node i's VJP makes its gradient final: its last user, with nothing
  // added to its slot yet (by an earlier output's VJP) and not handed over already.
  #finalWith(i: number, input: Tensor): number | undefined {
    const k = this.#finalAt.get(i)?.find((j) => this.wrt[j] === input);
    return k !== undefined && !this.#claimed.has(k) && !this.slots.has(input) ? k : undefined;
  }

  /**
   * The final gradient of `wrt[k]` (consumed), in the leaf's dtype, to the caller: returned, or to
   * `onGrad`, from inside a VJP (`inVjp`) as the caller's.
   */
  #deliver(k: number, grad: Tensor, inVjp: boolean): void {
    const w = this.wrt[k];
    // A bf16 parameter gets a bf16 gradient (ops may already produce one; f32 ones convert).
    let g = grad;
    if (g.dtype !== w.dtype) {
      g = convert(grad, w.dtype as "f32" | "bf16");
      grad.dispose();
    }
    const onGrad = this.opts.onGrad;
    if (!onGrad) this.grads[k] = g;
    else if (inVjp) this.#asCaller(g, () => onGrad(g, k));
    else onGrad(g, k);
  }

  /** Runs a hook from inside a VJP as the backward's caller: `t` and what it creates are theirs. */
  #asCaller(t: Tensor | null, hook: () => void): void {
    if (t) keep(t);
    atScopeDepth(this.#depth, hook);
  }

  /**
   * The caller's taker of `input`'s gradient by rows, checked: blocks in the leaf's dtype and row
   * shape, in order, aligned, every row once. The first block (or the end) claims the gradient
   * from `after`.
   */
  #rows(i: number, input: Tensor): GradRows | null {
    const k = input.rank > 0 ? this.#finalWith(i, input) : undefined;
    const sink = k === undefined ? null : this.opts.onGradRows?.(k);
    if (!sink) return null;
    const rows = input.shape[0];
    let next = 0;
    const what = `gradient rows of ${fmtShape(input.shape)} ${input.dtype}`;
    return {
      multiple: sink.multiple,
      take: (grad, r0) => {
        const n = grad.shape[0];
        if (
          grad.dtype !== input.dtype || grad.rank !== input.rank ||
          !shapesEqual(grad.shape.slice(1), input.shape.slice(1)) || r0 !== next ||
          r0 % sink.multiple !== 0 || r0 + n > rows
        ) {
          throw new GradientError(
            `${what}: got a block ${fmtShape(grad.shape)} ${grad.dtype} at row ${r0}, expected ` +
              `row ${next} (a multiple of ${sink.multiple}) in the leaf's dtype and row shape`,
          );
        }
        this.#claimed.add(k!);
        next += n;
        this.#asCaller(grad, () => sink.take(grad, r0));
      },
      end: () => {
        if (next !== rows) throw new GradientError(`${what}: ended after ${next} of ${rows} rows`);
        this.#claimed.add(k!);
        this.#asCaller(null, () => sink.end());
      },
    };
  }
}

/** The context of a VJP when the backward's caller takes no gradient before backward returns. */
const NO_HAND_OVER: VjpContext = { gradRows: () => null, handOver: () => false };

// Core cannot use the ops' add (ops import core), so the tape keeps this one kernel, read four
// at a time where the size allows (on llvmpipe each load costs the same whatever its width).
const add = (t: "f32" | "vec4f") =>
  defineKernel({
    name: "grad_accumulate",
    inputs: { a: t, b: t },
    outputs: { out: t },
    grid: "flat",
    body: "  out[i] = a[i] + b[i];",
  });
const ADD = { f32: add("f32"), vec4f: add("vec4f") };

// Gradients add in f32 (a bf16 one, e.g. an op's gradient for a bf16 weight, is widened first),
// window by window so any size adds.
function accumulate(a: Tensor, b: Tensor): Tensor {
  const [a32, b32] = [convert(a, "f32"), convert(b, "f32")];
  const out = Tensor.empty(a.shape);
  const w = a.size % 4 === 0 ? 4 : 1;
  forEachWindow([a32, b32, out], ([av, bv, ov], _start, count) => {
    ADD[w === 4 ? "vec4f" : "f32"]({ a: av, b: bv, out: ov }, { n: count / w });
  }, w);
  a32.dispose();
  b32.dispose();
  return out;
}

/**
 * Activation recomputation: `fn(inputs)` as ONE tape node that saves nothing of its insides.
 * Forward runs `fn` without recording and frees its intermediates at once; the VJP runs `fn`
 * again under a fresh tape and backpropagates the output gradient through it, returning the
 * gradients of the float `inputs` (null for the others). So the tape holds a segment's inputs and
 * output instead of all its activations, for one extra forward of the segment in backward.
 *
 * `inputs` must list every tensor of `fn` that needs a gradient (the segment's input and its
 * parameters); tensors `fn` closes over are constants to it. `fn` must be deterministic (every
 * kernel here is), which makes the gradients equal to the unsegmented ones bit for bit (for a bf16
 * input also used outside the segment, its parts are rounded before they are added). Under a
 * backward with an `onGrad` hook, a parameter used only by the segment is handed to the hook as
 * soon as its gradient is final inside the recomputed backward. Without a running tape this is
 * just `fn(inputs)`.
 */
export function recompute(
  fn: (inputs: readonly Tensor[]) => Tensor,
  inputs: readonly Tensor[],
): Tensor {
  if (!active) return fn(inputs);
  const y = untracked(() => scope(() => fn(inputs)));
  recordOp("recompute", inputs, y, (g, ctx) => {
    const tape = new Tape();
    const wrt = [...new Set(inputs.filter((t) => isFloat(t.dtype)))];
    const grads: (Tensor | null)[] = wrt.map(() => null);
    try {
      tape.watch(...wrt);
      const again = tape.run(() => fn(inputs));
      tape.backward(again, wrt, {
        outputGrad: g,
        // Under an outer onGrad hook (per-layer updates) each parameter's gradient goes to the
        // hook as soon as it is final here, not all together when the segment's backward ends.
        onGrad: (grad, k) => {
          if (!ctx.handOver(wrt[k], grad)) grads[k] = grad;
        },
      });
      again.dispose();
      // A tensor listed twice gets its whole gradient once.
      return inputs.map((t, j) => (inputs.indexOf(t) === j ? grads[wrt.indexOf(t)] ?? null : null));
    } finally {
      tape.dispose();
    }
  });
  return y;
}

/**
 * Turns `f(params) -> scalar tensor` into a function returning the value and the gradient with
 * respect to every tensor in `params`, shaped like `params`. A tape exists only during the call,
 * and everything it saved is freed before returning.
 */
export function valueAndGrad<P extends TensorTree>(
  f: (params: P) => Tensor,
): (params: P) => { value: Tensor; grads: P } {
  return (params: P) => {
    const leaves = tree.flatten(params);
    const tape = new Tape();
    try {
      tape.watch(...leaves);
      const value = tape.run(() => f(params));
      if (!(value instanceof Tensor)) {
        throw new GradientError("valueAndGrad: f must return a Tensor");
      }
      let grads: (Tensor | undefined)[];
      try {
        grads = tape.backward(value, leaves);
      } catch (e) {
        value.dispose();
        throw e;
      }
      return { value, grads: tree.unflatten(params, grads) };
    } finally {
      tape.dispose();
    }
  };
}
