/**
 * Embedding lookup (a row gather) and its VJP, a deterministic scatter-add of gradient rows into a
 * zero table without float atomics.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch, grid1d } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { forUnrolled, LOOP_BUDGET, UNROLL } from "./loop.ts";
import { flatGrid, flatMain } from "./wgsl.ts";

// ids are bound as u32 whatever their dtype: a negative i32 reads as a huge u32, so one range
// check `id < V` rejects both negative and too-large ids.
const GATHER = `
@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct U { n: u32, v: u32, d: u32 }
@group(0) @binding(3) var<uniform> u: U;
${
  flatMain(`  if (i >= u.n * u.d) { return; }
  let t = i / u.d;
  let c = i - t * u.d;
  let id = ids[t];
  out[i] = select(0.0, table[id * u.d + c], id < u.v);`)
}`;

// One invocation per column of the (zeroed) table walks the tokens t0..t1 in order and adds g[t, c]
// into row ids[t]. Each output element has exactly one writer (race-free) and a fixed summation
// order (deterministic). Work is N*D, parallelism D.
const SCATTER_ADD = `
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> dt: array<f32>;
struct U { n: u32, v: u32, d: u32, t0: u32, t1: u32 }
@group(0) @binding(3) var<uniform> u: U;
const WG = 64u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = gid.x + gid.y * (nwg.x * WG);
  if (c >= u.d) { return; }
  ${
  forUnrolled(
    "t",
    "u.t0",
    "u.t1",
    (i) => `{ let id = ids[${i}]; if (id < u.v) { dt[id * u.d + c] += g[${i} * u.d + c]; } }`,
  )
}
}`;

// Tokens per scatter-add dispatch, so one invocation stays inside the loop budget.
const TOKENS_PER_DISPATCH = (LOOP_BUDGET - 2 * UNROLL) * UNROLL;

function uniforms(n: number, v: number, d: number, t0 = 0, t1 = 0): Uint32Array {
  return new Uint32Array([n, v, d, t0, t1, 0, 0, 0]);
}

function checkIdsDtype(op: string, ids: Tensor): void {
  if (ids.dtype !== "i32" && ids.dtype !== "u32") {
    throw new DTypeError(`${op}: ids must be i32 or u32, got ${ids.dtype} ${fmtShape(ids.shape)}`);
  }
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
  if (table.dtype !== "f32") {
    throw new DTypeError(
      `embedding: table must be f32, got ${table.dtype} ${fmtShape(table.shape)}`,
    );
  }
  checkIdsDtype("embedding", ids);
  if (table.rank !== 2) {
    throw new ShapeError(`embedding: table must be 2-D [V, D], got ${fmtShape(table.shape)}`);
  }
  const [v, d] = table.shape;
  const n = ids.size;
  const out = Tensor.empty([...ids.shape, d]);
  if (out.size > 0) {
    dispatch({
      name: "embedding",
      code: GATHER,
      inputs: [table.binding(), ids.binding()],
      outputs: [out.binding()],
      uniforms: uniforms(n, v, d),
      workgroups: flatGrid(n * d),
    });
  }
  if (isRecording()) {
    recordOp("embedding", [table, ids], out, (g) => {
      const dt = zeros([v, d]);
      if (dt.size > 0) {
        for (let t0 = 0; t0 < n; t0 += TOKENS_PER_DISPATCH) {
          dispatch({
            name: "embedding_backward",
            code: SCATTER_ADD,
            inputs: [g.binding(), ids.binding()],
            outputs: [dt.binding()],
            uniforms: uniforms(n, v, d, t0, Math.min(n, t0 + TOKENS_PER_DISPATCH)),
            workgroups: grid1d(d, 64),
          });
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
