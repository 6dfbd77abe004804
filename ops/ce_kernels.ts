/**
 * @internal The softmax cross-entropy kernels shared by `crossEntropy` (ops/cross_entropy.ts) and
 * `lmHeadCrossEntropy` (ops/lm_head.ts): the per-row log-sum-exp and loss, the deterministic
 * reduction to a mean or sum and a target count, the gradient with respect to the logits, and
 * their input checks. One copy of the arithmetic is what makes the two ops agree to the bit on
 * equal logits, in forward and backward.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertDType } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import type { Tensor } from "../core/tensor.ts";
import { accCombine, accDecl, checkLoopBudget, forUnrolled, unrolledEdges } from "./loop.ts";

/** Reduction modes of the kernels' `mode` uniform. */
export const CE_MODE = { mean: 0, sum: 1, none: 2 } as const;

/** Sizes and options of a cross-entropy kernel call. */
export interface CeArgs {
  /** Rows of logits (targets) the call covers. */
  rows: number;
  /** Number of classes; a target outside [0, v) that is not `ignore` gives NaN. */
  v: number;
  /** The ignore index. */
  ignore: number;
  /** A {@link CE_MODE} value (default mean). */
  mode?: number;
}

// Targets are bound as i32 (a u32 target >= 2^31 reads as negative, i.e. out of range). An
// out-of-range target that is not the ignore index gives NaN: the GPU cannot throw, and a NaN loss
// is loud. (NaN travels in the uniform: WGSL has no NaN literal.)

// One invocation per row of a block of `rows` logits rows that starts at global row `off`:
// log-sum-exp in three branch-free passes, then lse - x[target], both written at the global row so
// chunks fill shared [N] buffers without a concat.
const rowsKernel = kernelFamily((name: string) =>
  defineKernel({
    name,
    inputs: { x: "f32", tg: "i32" },
    outputs: { loss: "f32", lse: "f32" },
    uniforms: { v: "u32", off: "u32", ignore: "i32", nan: "f32" },
    grid: "row",
    body: `  let base = r * u.v;
  ${accDecl("m", "load_x(base)")}
  ${forUnrolled("j", "0u", "u.v", (i, k) => `m${k} = max(m${k}, load_x(base + ${i}));`)}
  let m = ${accCombine("m", "max")};
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.v", (i, k) => `s${k} += exp(load_x(base + ${i}) - m);`)}
  let s = ${accCombine("s", "+")};
  let l = m + log(s);
  let gr = u.off + r;
  store_lse(gr, l);
  let t = load_tg(gr);
  if (t == u.ignore) {
    store_loss(gr, 0.0);
  } else if (t < 0 || t >= i32(u.v)) {
    store_loss(gr, u.nan);
  } else {
    store_loss(gr, l - load_x(base + u32(t)));
  }`,
  })
);

// The LM head's vocabulary blocks: one invocation per row of a [rows, cols] block of logits whose
// first column is class v0 folds the block into the row's running max `mx`, its sum of exp(x - mx)
// `se` (rescaled when the max grows: the online log-sum-exp) and, when the target falls in the
// block, the target's logit `tl`. The first block starts the state (what the buffers held before
// is discarded by select). Same passes and order as rowsKernel, so a single block gives its
// log-sum-exp and loss to the bit.
const blockKernel = kernelFamily((name: string) =>
  defineKernel({
    name,
    inputs: { x: "f32", tg: "i32" },
    outputs: { mx: "f32", se: "f32", tl: "f32" },
    uniforms: { cols: "u32", v0: "u32", first: "u32" },
    grid: "row",
    body: `  let base = r * u.cols;
  ${accDecl("m", "load_x(base)")}
  ${forUnrolled("j", "0u", "u.cols", (i, k) => `m${k} = max(m${k}, load_x(base + ${i}));`)}
  let bm = ${accCombine("m", "max")};
  let first = u.first == 1u;
  let prev = load_mx(r);
  let m = select(max(prev, bm), bm, first);
  ${accDecl("s", "0.0")}
  ${forUnrolled("j", "0u", "u.cols", (i, k) => `s${k} += exp(load_x(base + ${i}) - m);`)}
  let bs = ${accCombine("s", "+")};
  store_se(r, select(load_se(r) * exp(prev - m) + bs, bs, first));
  store_mx(r, m);
  let t = load_tg(r);
  if (t >= i32(u.v0) && t - i32(u.v0) < i32(u.cols)) { store_tl(r, load_x(base + u32(t) - u.v0)); }`,
  })
);

// After the last block: lse = mx + log(se) and the row loss, as rowsKernel writes them.
const finishKernel = kernelFamily((name: string) =>
  defineKernel({
    name,
    inputs: { mx: "f32", se: "f32", tl: "f32", tg: "i32" },
    outputs: { loss: "f32", lse: "f32" },
    uniforms: { v: "u32", ignore: "i32", nan: "f32" },
    grid: "row",
    body: `  let l = load_mx(r) + log(load_se(r));
  store_lse(r, l);
  let t = load_tg(r);
  if (t == u.ignore) {
    store_loss(r, 0.0);
  } else if (t < 0 || t >= i32(u.v)) {
    store_loss(r, u.nan);
  } else {
    store_loss(r, l - load_tl(r));
  }`,
  })
);

/** Running state of the online log-sum-exp over vocabulary blocks, one f32 per row each. */
export interface OnlineLse {
  /** Running max of the row's logits. */
  mx: Tensor;
  /** Running sum of exp(logit - mx). */
  se: Tensor;
  /** The target's logit, once its block has been seen. */
  tl: Tensor;
}

/**
 * Folds a [rows, cols] block of logits, classes [v0, v0 + cols), into the online log-sum-exp
 * `state` (rows = all targets); `first` starts it.
 */
export function ceBlock(
  name: string,
  logits: Tensor,
  targets: Tensor,
  state: OnlineLse,
  f: { rows: number; cols: number; v0: number; first: boolean },
): void {
  blockKernel(name)({ x: logits, tg: targets, ...state }, {
    rows: f.rows,
    cols: f.cols,
    v0: f.v0,
    first: f.first ? 1 : 0,
  });
}

/** Turns a finished online state into each row's log-sum-exp and loss (as {@link ceRowLosses}). */
export function ceFinish(
  name: string,
  state: OnlineLse,
  targets: Tensor,
  loss: Tensor,
  lse: Tensor,
  f: CeArgs,
): void {
  finishKernel(name)({ ...state, tg: targets, loss, lse }, {
    rows: f.rows,
    v: f.v,
    ignore: f.ignore,
    nan: NaN,
  });
}

// A single invocation sums the row losses (16 interleaved partial sums) and counts the non-ignored
// targets; a fixed order keeps the result deterministic. out = sum / count (mean, 0 if count is 0)
// or sum.
const reduceKernel = kernelFamily((name: string) =>
  defineKernel({
    name,
    inputs: { loss: "f32", tg: "i32" },
    outputs: { out: "f32", count: "f32" },
    uniforms: { rows: "u32", ignore: "i32", mode: "u32" },
    grid: { workgroupSize: [1] },
    body: `  ${accDecl("s", "0.0")}
  var c = 0u;
  ${
      forUnrolled(
        "j",
        "0u",
        "u.rows",
        (i, k) => `s${k} += load_loss(${i}); c += select(0u, 1u, load_tg(${i}) != u.ignore);`,
      )
    }
  let total = ${accCombine("s", "+")};
  store_count(0u, f32(c));
  if (u.mode == ${CE_MODE.mean}u) {
    store_out(0u, select(0.0, total / f32(c), c > 0u));
  } else {
    store_out(0u, total);
  }`,
  })
);

// d = scale_r·(exp(x - lse_r) - onehot(target_r)) over a [rows, cols] block of logits whose first
// column is class v0; 0 on ignored rows; scale_r = g/count (mean), g (sum) or g[r] (none: count is
// bound but not read). One body, two binding layouts: logits in, gradient out (crossEntropy), or
// the gradient written over the logits (the LM head's recomputed blocks, so no second block).
const gradKernel = kernelFamily((name: string, inPlace: boolean) => {
  const load = inPlace ? "load_d" : "load_x";
  return defineKernel({
    name,
    inputs: {
      ...(inPlace ? {} : { x: "f32" as const }),
      tg: "i32",
      lse: "f32",
      count: "f32",
      g: "f32",
    },
    outputs: { d: "f32" },
    uniforms: { cols: "u32", v: "u32", v0: "u32", ignore: "i32", nan: "f32", mode: "u32" },
    grid: "flat",
    body: `  let r = i / u.cols;
  let j = i - r * u.cols;
  let t = load_tg(r);
  if (t == u.ignore) { store_d(i, 0.0); return; }
  if (t < 0 || t >= i32(u.v)) { store_d(i, u.nan); return; }
  var scale: f32;
  if (u.mode == ${CE_MODE.mean}u) {
    scale = load_g(0u) / load_count(0u);
  } else if (u.mode == ${CE_MODE.sum}u) {
    scale = load_g(0u);
  } else {
    scale = load_g(r);
  }
  let p = exp(${load}(i) - load_lse(r));
  store_d(i, scale * (p - select(0.0, 1.0, u32(t) == u.v0 + j)));`,
  });
});

/**
 * Row log-sum-exp and loss of `logits` [rows, v] (row r is global row `off + r`) into `lse` and
 * `loss` [N] at the global rows; `targets` [N]. Nothing is dispatched for 0 rows.
 */
export function ceRowLosses(
  name: string,
  logits: Tensor,
  targets: Tensor,
  loss: Tensor,
  lse: Tensor,
  f: CeArgs & { off?: number },
): void {
  rowsKernel(name)({ x: logits, tg: targets, loss, lse }, {
    rows: f.rows,
    v: f.v,
    off: f.off ?? 0,
    ignore: f.ignore,
    nan: NaN,
  });
}

/**
 * Reduces the `f.rows` row losses into `out` (a scalar: the mean if `f.mode` is mean, else the
 * sum) and `count` (a scalar: the number of targets not equal to `f.ignore`).
 */
export function ceReduce(
  name: string,
  loss: Tensor,
  targets: Tensor,
  out: Tensor,
  count: Tensor,
  f: CeArgs,
): void {
  reduceKernel(name)({ loss, tg: targets, out, count }, {
    rows: f.rows,
    ignore: f.ignore,
    mode: f.mode ?? CE_MODE.mean,
  }, [1]);
}

/**
 * The gradient with respect to a [f.rows, cols] block of logits whose first column is class `v0`
 * (see `gradKernel` above), written into `d`. With `logits` null, `d` holds the block's logits and
 * is overwritten in place. `lse` [rows] and `targets` [rows] cover all rows; `g` is the output
 * gradient (a scalar, or [rows] for mode none).
 */
export function ceGrad(
  name: string,
  d: Tensor,
  logits: Tensor | null,
  saved: { targets: Tensor; lse: Tensor; count: Tensor; g: Tensor },
  f: CeArgs & { cols: number; v0?: number },
): void {
  const { targets: tg, lse, count, g } = saved;
  const uniforms = {
    n: f.rows * f.cols,
    cols: f.cols,
    v: f.v,
    v0: f.v0 ?? 0,
    ignore: f.ignore,
    nan: NaN,
    mode: f.mode ?? CE_MODE.mean,
  };
  if (logits) gradKernel(name, false)({ x: logits, tg, lse, count, g, d }, uniforms);
  else gradKernel(name, true)({ tg, lse, count, g, d }, uniforms);
}

/** Throws unless `targets` is i32 or u32. */
export function checkTargets(op: string, targets: Tensor): void {
  assertDType(op, ["i32", "u32"], ["targets", targets]);
}

/** Throws unless `ignoreIndex` is an i32. */
export function checkIgnore(op: string, ignoreIndex: number): void {
  if (!Number.isInteger(ignoreIndex) || ignoreIndex < -(2 ** 31) || ignoreIndex >= 2 ** 31) {
    throw new ShapeError(`${op}: ignoreIndex ${ignoreIndex} is not an i32`);
  }
}

/** Loop budgets of {@link ceRowLosses} (two passes over a row of `v`) and {@link ceReduce}. */
export function checkCeLoops(op: string, v: number, rows: number): void {
  checkLoopBudget(op, unrolledEdges(v, 2), `a row of ${v} logits`);
  checkLoopBudget(op, unrolledEdges(rows), `the reduction over ${rows} targets`);
}
