/**
 * Embedding lookup (a row gather) and its VJP, a deterministic scatter-add of gradient rows into a
 * zero table without float atomics.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertDType, assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { forUnrolled, LOOP_BUDGET, UNROLL } from "./loop.ts";

// ids are bound as u32 whatever their dtype: a negative i32 reads as a huge u32, so one range
// check `id < V` rejects both negative and too-large ids.
const GATHER = defineKernel({
  name: "embedding",
  inputs: { table: "f32", ids: "u32" },
  outputs: { out: "f32" },
  uniforms: { v: "u32", d: "u32" },
  grid: "flat",
  body: `  let t = i / u.d;
  let c = i - t * u.d;
  let id = load_ids(t);
  store_out(i, select(0.0, load_table(id * u.d + c), id < u.v));`,
});

// One invocation per column of the (zeroed) table walks the tokens t0..t1 in order and adds g[t, c]
// into row ids[t]. Each output element has exactly one writer (race-free) and a fixed summation
// order (deterministic). Work is N*D, parallelism D, hence small workgroups.
const SCATTER_ADD = defineKernel({
  name: "embedding_backward",
  inputs: { g: "f32", ids: "u32" },
  outputs: { dt: "f32" },
  uniforms: { v: "u32", t0: "u32", t1: "u32" },
  grid: "flat",
  workgroupSize: 64,
  body: `  let d = u.n;
  ${
    forUnrolled("t", "u.t0", "u.t1", (t) =>
      `{ let id = load_ids(${t}); if (id < u.v) { store_dt(id * d + i, load_dt(id * d + i) + load_g(${t} * d + i)); } }`)
  }`,
});

// Tokens per scatter-add dispatch, so one invocation stays inside the loop budget.
const TOKENS_PER_DISPATCH = (LOOP_BUDGET - 2 * UNROLL) * UNROLL;

function checkIdsDtype(op: string, ids: Tensor): void {
  assertDType(op, ["i32", "u32"], ["ids", ids]);
}

/**
 * Looks up rows of `table` [V, D] (f32) at `ids` (i32 or u32, any shape), giving
 * `[...ids.shape, D]`. The gradient flows to the table only (a scatter-add of the output gradient's
 * rows, deterministic); ids get none.
 *
 * The GPU cannot throw: an id outside `[0, V)` yields a zero row, and its gradient is dropped. Use
 * {@link checkIds} to validate ids on the CPU when that matters.
 */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  assertF32("embedding", ["table", table]);
  checkIdsDtype("embedding", ids);
  if (table.rank !== 2) {
    throw new ShapeError(`embedding: table must be 2-D [V, D], got ${fmtShape(table.shape)}`);
  }
  const [v, d] = table.shape;
  const n = ids.size;
  const out = Tensor.empty([...ids.shape, d]);
  GATHER({ table, ids, out }, { n: n * d, v, d });
  if (isRecording()) {
    recordOp("embedding", [table, ids], out, (g) => {
      const dt = zeros([v, d]);
      if (dt.size > 0) {
        for (let t0 = 0; t0 < n; t0 += TOKENS_PER_DISPATCH) {
          SCATTER_ADD({ g, ids, dt }, { n: d, v, t0, t1: Math.min(n, t0 + TOKENS_PER_DISPATCH) });
        }
      }
      return [dt, null];
    });
  }
  return out;
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
