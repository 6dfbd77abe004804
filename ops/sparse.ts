/**
 * Sparse support ops for SLTrain: a sparse matrix is a list of flat u32 indices into a row-major
 * dense matrix (`idx = row * cols + col`) plus one f32 value per index.
 *
 * Index contract, shared by every op here:
 * - indices are `u32` and 1-D; an index `>= dense.size` is ignored (it scatters nothing and gathers
 *   0), so a bad index can never write outside the tensor;
 * - duplicates are allowed: {@link scatterAdd} adds every value (deterministically, in index-list
 *   order), and {@link gatherFlat} / {@link sddmm} simply produce one output per listed index.
 * SLTrain's supports are sorted and unique, which takes the fast paths.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertDType, assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, type Shape, sizeOf } from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { matmul } from "./matmul.ts";
import { permuteCopy } from "./strided.ts";

function checkIndices(op: string, indices: Tensor): void {
  assertDType(op, ["u32"], ["indices", indices]);
  if (indices.rank !== 1) {
    throw new ShapeError(`${op}: indices must be 1-D, got ${fmtShape(indices.shape)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// scatterAdd

/*
 * Deterministic scatter-add without float atomics, in three kinds of dispatch, all in one compute pass:
 *  1. init: out = dense (or 0), and clear a one-word flag;
 *  2. check: flag = 1 if some idx[k] > idx[k + 1] (the list is not non-decreasing);
 *  3. scatter, per chunk of SCATTER_CHUNK entries: if the list is sorted, every index whose
 *     predecessor (in the chunk) differs is the head of a run of equal indices; its invocation adds
 *     the whole run in list order, so no two invocations touch the same element. If it is not
 *     sorted, the chunk's first invocation adds the chunk serially in list order: correct and
 *     deterministic for any indices, slow only for lists nobody should pass.
 */

// Dispatched over max(size, 1) invocations, so the flag is cleared even for an empty output.
const init = (fromDense: boolean) =>
  defineKernel({
    name: "scatterAdd_init",
    inputs: fromDense ? { dense: "f32" } : {},
    outputs: { out: "f32", flag: "u32" },
    uniforms: { size: "u32" },
    grid: "flat",
    body: `  if (i == 0u) { store_flag(0u, 0u); }
  if (i < u.size) { store_out(i, ${fromDense ? "load_dense(i)" : "0.0"}); }`,
  });
const INIT = { dense: init(true), zeros: init(false) };

const CHECK = defineKernel({
  name: "scatterAdd_check",
  inputs: { idx: "u32" },
  outputs: { flag: "atomic<u32>" },
  grid: "flat", // over nnz - 1 neighbour pairs
  body: "  if (load_idx(i) > load_idx(i + 1u)) { atomicStore(&flag[0], 1u); }",
});

// Over the entries k0 + i < k1 of one chunk.
const SCATTER = defineKernel({
  name: "scatterAdd",
  inputs: { idx: "u32", vals: "f32", flag: "u32" },
  outputs: { out: "f32" },
  uniforms: { size: "u32", k0: "u32", k1: "u32" },
  grid: "flat",
  body: `  let i0 = i + u.k0;
  if (load_flag(0u) == 0u) {
    let j = load_idx(i0);
    if ((i0 > u.k0 && load_idx(i0 - 1u) == j) || j >= u.size) { return; }
    var acc = load_out(j);
    var k = i0;
    loop {
      acc += load_vals(k);
      k += 1u;
      if (k >= u.k1 || load_idx(k) != j) { break; }
    }
    store_out(j, acc);
  } else if (i0 == u.k0) {
    for (var k = u.k0; k < u.k1; k += 1u) {
      let j = load_idx(k);
      if (j < u.size) { store_out(j, load_out(j) + load_vals(k)); }
    }
  }`,
});

/**
 * List entries per scatter dispatch. llvmpipe silently stops any invocation after 65535 loop
 * iterations in total, so neither a run of duplicates nor the serial path may loop longer; chunks
 * run as ordered dispatches, which keeps list order (and so determinism) across chunk borders.
 */
const SCATTER_CHUNK = 32768;

/** Scatter-adds `values` at `indices` into a copy of `dense`, or into zeros of `shape`. */
function scatterAddKernel(
  dense: Tensor | null,
  shape: Shape,
  indices: Tensor,
  values: Tensor,
): Tensor {
  const out = Tensor.empty(shape);
  const n = sizeOf(shape);
  const nnz = indices.size;
  const flag = Tensor.empty([1], "u32");
  const size = { n: Math.max(n, 1), size: n };
  if (dense) INIT.dense({ dense, out, flag }, size);
  else INIT.zeros({ out, flag }, size);
  CHECK({ idx: indices, flag }, { n: Math.max(nnz - 1, 0) });
  for (let k0 = 0; k0 < nnz; k0 += SCATTER_CHUNK) {
    const k1 = Math.min(nnz, k0 + SCATTER_CHUNK);
    SCATTER({ idx: indices, vals: values, flag, out }, { n: k1 - k0, size: n, k0, k1 });
  }
  flag.dispose();
  return out;
}

/**
 * `dense` with `values[k]` added at flat index `indices[k]` (out of place). Any index list is
 * correct: duplicates accumulate in list order, indices `>= dense.size` are ignored. Sorted lists
 * (SLTrain's) scatter in parallel; unsorted ones fall back to one serial invocation.
 * VJPs: dense gets g, values get `gatherFlat(g, indices)`.
 */
export function scatterAdd(dense: Tensor, indices: Tensor, values: Tensor): Tensor {
  assertF32("scatterAdd", ["dense", dense], ["values", values]);
  checkIndices("scatterAdd", indices);
  if (values.rank !== 1 || values.size !== indices.size) {
    throw new ShapeError(
      `scatterAdd: values ${fmtShape(values.shape)} must be 1-D with one value per index ` +
        `(indices ${fmtShape(indices.shape)})`,
    );
  }
  const out = scatterAddKernel(dense, dense.shape, indices, values);
  recordOp("scatterAdd", [dense, indices, values], out, (g) => [g, null, gatherFlat(g, indices)]);
  return out;
}

/**
 * A dense f32 tensor of `shape` that is zero except for `values` added at `indices` (the sparse
 * matrix made dense). Same index contract as {@link scatterAdd}.
 */
export function scatterToDense(shape: Shape, indices: Tensor, values: Tensor): Tensor {
  assertF32("scatterToDense", ["values", values]);
  checkIndices("scatterToDense", indices);
  if (values.rank !== 1 || values.size !== indices.size) {
    throw new ShapeError(
      `scatterToDense: values ${fmtShape(values.shape)} must be 1-D with one value per index ` +
        `(indices ${fmtShape(indices.shape)})`,
    );
  }
  const out = scatterAddKernel(null, shape, indices, values);
  recordOp("scatterToDense", [indices, values], out, (g) => [null, gatherFlat(g, indices)]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// gatherFlat

const GATHER = defineKernel({
  name: "gatherFlat",
  inputs: { dense: "f32", idx: "u32" },
  outputs: { out: "f32" },
  uniforms: { size: "u32" },
  grid: "flat",
  body: `  let j = load_idx(i);
  store_out(i, select(0.0, load_dense(min(j, u.size - 1u)), j < u.size));`,
});

/**
 * `out[k] = dense.flat[indices[k]]` as a 1-D tensor of `indices.size` values (0 for an index
 * `>= dense.size`). `dense` may have any shape. VJP: the gradient scatter-added into zeros.
 */
export function gatherFlat(dense: Tensor, indices: Tensor): Tensor {
  assertF32("gatherFlat", ["dense", dense]);
  checkIndices("gatherFlat", indices);
  const out = Tensor.empty([indices.size]);
  if (dense.size > 0) {
    GATHER({ dense, idx: indices, out }, { n: indices.size, size: dense.size });
  } else if (indices.size > 0) {
    throw new ShapeError(`gatherFlat: cannot gather ${indices.size} values from an empty tensor`);
  }
  recordOp("gatherFlat", [dense, indices], out, (g) => [
    scatterAddKernel(null, dense.shape, indices, g),
    null,
  ]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// sddmm

/** Options of {@link sddmm}. */
export interface SddmmOptions {
  /** `a` is given as [rows, T] instead of [T, rows]. */
  aT?: boolean;
  /** `b` is given as [cols, T] instead of [T, cols]. */
  bT?: boolean;
  /**
   * List entries per invocation (1, 2, 4 or 8; default 4). Entries that share a row share the
   * loads of `a`; more per invocation means fewer invocations to spread over the device.
   */
  group?: number;
}

/*
 * Each invocation handles G consecutive list entries and loops over T. Layout matters most on a CPU
 * adapter, where every storage load is a per-lane scalar load: with [rows, T] / [cols, T] operands
 * an invocation streams contiguous rows (read as vec4 when T % 4 == 0), while [T, rows] /
 * [T, cols] operands touch one cache line per element. So T-major operands are transposed first
 * (see bench/sddmm.ts for the numbers). When the G entries share a row (the common case for a
 * sorted support: a 3% row of 512 columns has ~15 entries), the a-row is loaded once per step for
 * all G dot products, which cuts the loads per FMA from 2 to (1 + G) / G. On a contended 2-core
 * lavapipe that was within noise of G = 1 (bench/sddmm.ts): the b-row stream dominates.
 */
const sddmmKernel = kernelFamily((vec4: boolean, G: number) => {
  const prod = (x: string, y: string) => (vec4 ? `dot(${x}, ${y})` : `${x} * ${y}`);
  const rng = (f: (g: number) => string) => Array.from({ length: G }, (_, g) => f(g)).join("\n");
  return defineKernel({
    name: "sddmm",
    inputs: { a: vec4 ? "vec4f" : "f32", b: vec4 ? "vec4f" : "f32", idx: "u32" },
    outputs: { out: "f32" },
    uniforms: {
      tv: "u32",
      rows: "u32",
      cols: "u32",
      nnz: "u32",
      t0: "u32",
      t1: "u32",
      accumulate: "u32",
    },
    grid: "flat", // over ceil(nnz / G) groups of entries
    helpers: `const G = ${G}u;

fn one(k: u32) -> f32 {
  let j = load_idx(k);
  if (j >= u.rows * u.cols) { return 0.0; }
  let ra = (j / u.cols) * u.tv;
  let cb = (j % u.cols) * u.tv;
  var acc0 = 0.0;
  var acc1 = 0.0;
  var t = u.t0;
  for (; t + 1u < u.t1; t += 2u) {
    acc0 += ${prod("a[ra + t]", "b[cb + t]")};
    acc1 += ${prod("a[ra + t + 1u]", "b[cb + t + 1u]")};
  }
  if (t < u.t1) { acc0 += ${prod("a[ra + t]", "b[cb + t]")}; }
  return acc0 + acc1;
}

// Slabs of T after the first add to what the earlier ones wrote.
fn put(k: u32, v: f32) {
  store_out(k, select(0.0, load_out(k), u.accumulate != 0u) + v);
}`,
    body: `  let k0 = i * G;
  let n = u.rows * u.cols;
  let last = min(k0 + G, u.nnz) - 1u;
  // All G entries exist, are in range and lie in one row: share the a-row loads.
  let r0 = load_idx(k0) / u.cols;
  var same = last == k0 + G - 1u;
${
      rng((g) =>
        `  let j${g} = load_idx(min(k0 + ${g}u, last));\n  same = same && j${g} < n && j${g} / u.cols == r0;`
      )
    }
  if (same) {
    let ra = r0 * u.tv;
${rng((g) => `    let cb${g} = (j${g} % u.cols) * u.tv;`)}
${rng((g) => `    var acc${g} = 0.0;`)}
    for (var t = u.t0; t < u.t1; t += 1u) {
      let av = a[ra + t];
${rng((g) => `      acc${g} += ${prod("av", `b[cb${g} + t]`)};`)}
    }
${rng((g) => `    put(k0 + ${g}u, acc${g});`)}
  } else {
    for (var k = k0; k <= last; k += 1u) { put(k, one(k)); }
  }`,
  });
});

/**
 * Sampled dense-dense product: `out[k] = Σ_t a[t, row_k] · b[t, col_k]` with
 * `row_k = indices[k] / cols`, `col_k = indices[k] % cols`, where a is [T, rows] and b is
 * [T, cols] (or [rows, T] / [cols, T] with `aT` / `bT`, the fast layout). This is SLTrain's dV with
 * a = the output gradient [tokens, out] and b = the input [tokens, in]. An index `>= rows * cols`
 * gives 0. VJPs: da = b·Gᵀ and db = a·G (matmuls) with G the dense [rows, cols] matrix of g at the
 * indices; SLTrain never runs them (dV is a leaf gradient).
 */
export function sddmm(a: Tensor, b: Tensor, indices: Tensor, opts: SddmmOptions = {}): Tensor {
  assertF32("sddmm", ["a", a], ["b", b]);
  checkIndices("sddmm", indices);
  const { aT = false, bT = false, group = 4 } = opts;
  if (![1, 2, 4, 8].includes(group)) {
    throw new ShapeError(`sddmm: group must be 1, 2, 4 or 8, got ${group}`);
  }
  if (a.rank !== 2 || b.rank !== 2) {
    throw new ShapeError(
      `sddmm: a and b must be 2-D, got ${fmtShape(a.shape)} and ${fmtShape(b.shape)}`,
    );
  }
  const [tA, rows] = aT ? [a.shape[1], a.shape[0]] : a.shape;
  const [tB, cols] = bT ? [b.shape[1], b.shape[0]] : b.shape;
  if (tA !== tB) {
    throw new ShapeError(
      `sddmm: a ${fmtShape(a.shape)}${aT ? " (aT)" : ""} and b ${fmtShape(b.shape)}${
        bT ? " (bT)" : ""
      } disagree on the summed dimension (${tA} vs ${tB})`,
    );
  }
  const T = tA;
  const nnz = indices.size;
  const out = Tensor.empty([nnz]);
  if (nnz > 0) {
    // Layout copies, not recorded: only sddmm's own VJP (on a and b) belongs on the tape.
    const at = aT ? a : permuteCopy(a, [1, 0]);
    const bt = bT ? b : permuteCopy(b, [1, 0]);
    const vec4 = T % 4 === 0;
    const units = vec4 ? T / 4 : T;
    // llvmpipe stops an invocation after 65535 loop iterations in total (silently), and the
    // fallback path loops ~G/2 times per step: split T into slabs that stay well below that.
    const slab = Math.floor(32768 / group);
    // At least one slab, so T = 0 writes zeros.
    for (let t0 = 0; t0 === 0 || t0 < units; t0 += slab) {
      sddmmKernel(vec4, group)({ a: at, b: bt, idx: indices, out }, {
        n: Math.ceil(nnz / group),
        tv: units,
        rows,
        cols,
        nnz,
        t0,
        t1: Math.min(units, t0 + slab),
        accumulate: t0 > 0 ? 1 : 0,
      });
    }
    if (at !== a) at.dispose();
    if (bt !== b) bt.dispose();
  }
  recordOp("sddmm", [a, b, indices], out, (g) => {
    const G = scatterAddKernel(null, [rows, cols], indices, g);
    // da[t, r] = Σ_c b[t, c]·G[r, c] and db[t, c] = Σ_r a[t, r]·G[r, c], each in the layout
    // of its operand.
    const da = aT ? matmul(G, b, { transB: !bT }) : matmul(b, G, { transA: bT, transB: true });
    const db = bT ? matmul(G, a, { transA: true, transB: !aT }) : matmul(a, G, { transA: aT });
    G.dispose();
    return [da, db, null];
  });
  return out;
}
