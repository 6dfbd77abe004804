/**
 * Embedding lookup (a row gather) and its VJP, a deterministic scatter-add of gradient rows into a
 * zero table without float atomics. Tables of any size: a table larger than one storage binding
 * is read, and its gradient written, in windows of rows, each dispatch handling the ids that fall
 * in its window.
 * @module
 */
import { convertInto } from "../core/convert.ts";
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertDType, bytesPerElement } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { forEachRowWindow, maxWindowBytes, rowWindow } from "../core/windows.ts";
import { forUnrolled, LOOP_BUDGET, UNROLL } from "./loop.ts";

// ids are bound as u32 whatever their dtype: a negative i32 reads as a huge u32, so one range
// check rejects both negative and too-large ids. A window holds table rows [r0, r0 + rows); the
// first window also writes the zero rows of ids outside [0, V), so every output element has
// exactly one writer.
const gatherKernel = kernelFamily((dtype: "f32" | "bf16") =>
  defineKernel({
    name: "embedding",
    inputs: { table: dtype, ids: "u32" },
    outputs: { out: "f32" },
    uniforms: { v: "u32", d: "u32", r0: "u32", rows: "u32", first: "u32" },
    grid: "flat",
    body: `  let t = i / u.d;
  let c = i - t * u.d;
  let id = load_ids(t);
  if (id >= u.v) {
    if (u.first == 1u) { store_out(i, 0.0); }
    return;
  }
  if (id < u.r0 || id - u.r0 >= u.rows) { return; }
  store_out(i, load_table((id - u.r0) * u.d + c));`,
  })
);

// One invocation per column of a (zeroed) window of table rows walks the tokens t0..t1 in order
// and adds g[t, c] into the window's row ids[t] - r0 when the id falls in it. Each output element
// has exactly one writer (race-free) and a fixed summation order (deterministic). Work is N*D per
// window, parallelism D, hence small workgroups. Ids outside [0, V) fall in no window.
const SCATTER_ADD = defineKernel({
  name: "embedding_backward",
  inputs: { g: "f32", ids: "u32" },
  outputs: { dt: "f32" },
  uniforms: { r0: "u32", rows: "u32", t0: "u32", t1: "u32" },
  grid: "flat",
  workgroupSize: 64,
  body: `  let d = u.n;
  ${
    forUnrolled("t", "u.t0", "u.t1", (t) =>
      `{ let id = load_ids(${t}); if (id >= u.r0 && id - u.r0 < u.rows) { let o = (id - u.r0) * d + i; store_dt(o, load_dt(o) + load_g(${t} * d + i)); } }`)
  }`,
});

// Tokens per scatter-add dispatch, so one invocation stays inside the loop budget.
const TOKENS_PER_DISPATCH = (LOOP_BUDGET - 2 * UNROLL) * UNROLL;

/**
 * Bytes of one f32 block of the table's gradient where it is built block by block: a bf16 table's
 * (rows are summed in f32, one rounding per element as the tape's gradient adds, and stored as
 * bf16 block by block, so no f32 copy of the whole table exists), and every block handed over by
 * rows (see `VjpContext.gradRows`).
 */
const GRAD_BLOCK_BYTES = 16 * 1024 * 1024;

function checkIdsDtype(op: string, ids: Tensor): void {
  assertDType(op, ["i32", "u32"], ["ids", ids]);
}

/**
 * Looks up rows of `table` [V, D] (f32 or bf16) at `ids` (i32 or u32, any shape), giving an f32
 * `[...ids.shape, D]`. The gradient flows to the table only, in the table's dtype (a
 * scatter-add of the output gradient's rows, summed in f32, deterministic), handed over block of
 * rows by block of rows when the backward's caller takes it so (`VjpContext.gradRows`: per-layer
 * updates, so no [V, D] gradient exists); ids get none.
 *
 * The GPU cannot throw: an id outside `[0, V)` yields a zero row, and its gradient is dropped. Use
 * {@link checkIds} to validate ids on the CPU when that matters.
 */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  assertDType("embedding", ["f32", "bf16"], ["table", table]);
  checkIdsDtype("embedding", ids);
  if (table.rank !== 2) {
    throw new ShapeError(`embedding: table must be 2-D [V, D], got ${fmtShape(table.shape)}`);
  }
  const [v, d] = table.shape;
  const n = ids.size;
  const out = Tensor.empty([...ids.shape, d]);
  const dtype = table.dtype as "f32" | "bf16";
  const rowBytes = d * bytesPerElement(dtype);
  const per = table.bytes <= maxWindowBytes() ? Math.max(v, 1) : rowWindow(rowBytes);
  if (n * d > 0) {
    forEachRowWindow(Math.max(v, 1), per, (r0, rows) => {
      const win = r0 === 0 && rows >= v ? table.view(table.shape) : table.rows(r0, rows);
      gatherKernel(dtype)({ table: win, ids, out }, {
        n: n * d,
        v,
        d,
        r0,
        rows,
        first: +(r0 === 0),
      });
      win.dispose();
    });
  }
  if (isRecording()) {
    recordOp("embedding", [table, ids], out, (g, ctx) => {
      const rows = ctx.gradRows(table);
      const per = rows && v * d > 0 ? rowsPerBlock(d, rows.multiple) : 0;
      if (per === 0) return [tableGrad(g, ids, v, d, dtype), null];
      forEachRowWindow(v, per, (r0, n) => rows!.take(gradBlock(g, ids, r0, n, d, dtype), r0));
      rows!.end();
      return [null, null];
    });
  }
  return out;
}

/**
 * Rows per block of a gradient handed over by rows: about GRAD_BLOCK_BYTES as f32, a multiple of
 * the taker's `multiple`; 0 when one such group exceeds a binding (the gradient then goes whole).
 */
function rowsPerBlock(d: number, multiple: number): number {
  const window = maxWindowBytes();
  const target = Math.floor(Math.min(window, GRAD_BLOCK_BYTES) / (4 * d));
  const per = Math.max(multiple, Math.floor(target / multiple) * multiple);
  return per * 4 * d <= window ? per : 0;
}

/** Rows [r0, r0 + n) of the table's gradient, in the table's dtype: the same bits as tableGrad's. */
function gradBlock(
  g: Tensor,
  ids: Tensor,
  r0: number,
  n: number,
  d: number,
  dtype: "f32" | "bf16",
): Tensor {
  const acc = zeros([n, d]);
  scatterAdd(g, ids, acc, r0, n, d);
  if (dtype === "f32") return acc;
  const block = Tensor.empty([n, d], "bf16");
  convertInto(acc, block);
  acc.dispose();
  return block;
}

/** Adds g's rows whose ids fall in [r0, r0 + rows) into `acc` (f32 [rows, d]), tokens in order. */
function scatterAdd(g: Tensor, ids: Tensor, acc: Tensor, r0: number, rows: number, d: number) {
  const n = ids.size;
  for (let t0 = 0; t0 < n; t0 += TOKENS_PER_DISPATCH) {
    const t1 = Math.min(n, t0 + TOKENS_PER_DISPATCH);
    SCATTER_ADD({ g, ids, dt: acc }, { n: d, r0, rows, t0, t1 });
  }
}

/** The table's gradient: g's rows scatter-added at ids, window by window, in the table's dtype. */
function tableGrad(g: Tensor, ids: Tensor, v: number, d: number, dtype: "f32" | "bf16"): Tensor {
  const dt = dtype === "f32" ? zeros([v, d]) : Tensor.empty([v, d], "bf16");
  if (dt.size === 0) return dt;
  const f32Row = 4 * d;
  const per = dtype === "f32"
    ? (dt.bytes <= maxWindowBytes() ? v : rowWindow(f32Row))
    : rowWindow(f32Row, Math.min(maxWindowBytes(), GRAD_BLOCK_BYTES), "a row", [2 * d]);
  forEachRowWindow(v, per, (r0, rows) => {
    const win = rows === v ? dt.view(dt.shape) : dt.rows(r0, rows);
    const acc = dtype === "f32" ? win : zeros([rows, d]);
    scatterAdd(g, ids, acc, r0, rows, d);
    if (acc !== win) {
      convertInto(acc, win);
      acc.dispose();
    }
    win.dispose();
  });
  return dt;
}

/**
 * Reads `ids` back (one GPU sync, so not for the inner training loop) and throws a ShapeError if any
 * id lies outside `[0, vocabSize)`, other than `allow` (e.g. an ignore index of the targets).
 */
export async function checkIds(ids: Tensor, vocabSize: number, allow?: number): Promise<void> {
  checkIdsDtype("checkIds", ids);
  const data = await ids.data();
  for (let i = 0; i < data.length; i++) {
    const id = data[i];
    if ((id < 0 || id >= vocabSize) && id !== allow) {
      throw new ShapeError(
        `id ${id} at flat index ${i} of ids ${fmtShape(ids.shape)} is outside [0, ${vocabSize})`,
      );
    }
  }
}
