import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { sizeOf } from "../core/shape.ts";
import {
  alignedRowsBytes,
  type Arr,
  checkOp,
  FC,
  randomArr,
  setup,
  withWindowBytes,
} from "./util.ts";

await setup();

/** Float64 gather: rows of `table` at `ids` (out-of-range ids give zero rows). */
function embeddingRef(table: Arr, ids: number[], idsShape: number[]): Arr {
  const [v, d] = table.shape;
  const out = new Float64Array(ids.length * d);
  ids.forEach((id, t) => {
    if (id >= 0 && id < v) { for (let c = 0; c < d; c++) out[t * d + c] = table.data[id * d + c]; }
  });
  return { shape: [...idsShape, d], data: out };
}

function randomIds(n: number, v: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return (s >>> 8) % v;
  });
}

// Small vocabularies so ids repeat (the scatter-add must accumulate), odd D, ids of rank 0-3.
const caseArb = fc.record({
  v: fc.integer({ min: 1, max: 12 }),
  d: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 60, max: 70 })),
  idsShape: fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 0, maxLength: 3 }),
  dtype: fc.constantFrom("i32" as const, "u32" as const),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("embedding: gather matches reference exactly; table gradient (scatter-add over repeated ids) matches finite differences (1e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ v, d, idsShape, dtype, seed }) => {
      const ids = randomIds(sizeOf(idsShape), v, seed);
      const idsT = tensor(ids, idsShape, dtype);
      await checkOp({
        op: ([table]) => o.embedding(table, idsT),
        ref: ([table]) => embeddingRef(table, ids, idsShape),
        inputs: [randomArr([v, d], seed)],
        fwd: { atol: 0, rtol: 0 },
      });
      idsT.dispose();
    }),
    FC,
  );
});

// Tables over several windows (window sizes shrunk to a few aligned rows), f32 or bf16; the rows
// of a bf16 table's gradient are summed in f32 and rounded once.
const windowedArb = fc.record({
  d: fc.constantFrom(3, 8, 64),
  windows: fc.integer({ min: 1, max: 4 }),
  k: fc.integer({ min: 1, max: 2 }),
  n: fc.integer({ min: 1, max: 40 }),
  dtype: fc.constantFrom("f32" as const, "bf16" as const),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("embedding: f32 and bf16 tables read and differentiated in windows of rows match the float64 reference", async () => {
  await fc.assert(
    fc.asyncProperty(windowedArb, async ({ d, windows, k, n, dtype, seed }) => {
      // The window is k aligned row groups of the f32 row (the bf16 gradient's f32 blocks).
      const bytes = k * alignedRowsBytes(4 * d) * (dtype === "bf16" ? 2 : 1);
      const v = Math.max(1, Math.floor((windows * bytes) / (4 * d)) - 1);
      const ids = randomIds(n, v + 2, seed); // some ids out of range
      const idsT = tensor(ids, [n], "i32");
      await withWindowBytes(bytes, () =>
        checkOp({
          op: ([table]) => o.embedding(table, idsT),
          ref: ([table]) => embeddingRef(table, ids, [n]),
          inputs: [randomArr([v, d], seed)],
          dtypes: [dtype],
          fwd: { atol: 0, rtol: 0 },
          grad: dtype === "bf16" ? { atol: 2e-3, rtol: 1e-2 } : {},
        }));
      idsT.dispose();
    }),
    FC,
  );
});

Deno.test("embedding: out-of-range ids give zero rows and no gradient; checkIds reports them", async () => {
  const table = tensor([[1, 2], [3, 4], [5, 6]]);
  const ids = tensor([2, -1, 3, 0, 2], [5], "i32");
  const f = valueAndGrad((t: Tensor) => o.sum(o.embedding(t, ids)));
  const y = o.embedding(table, ids);
  const { value, grads } = f(table);
  const [yd, gd] = await readAll([y, grads]);
  assert.deepEqual(Array.from(yd), [5, 6, 0, 0, 0, 0, 1, 2, 5, 6]);
  assert.deepEqual(Array.from(gd), [1, 1, 0, 0, 2, 2]);
  await assert.rejects(() => o.checkIds(ids, 3), ShapeError);
  await o.checkIds(tensor([0, 2, -100], [3], "i32"), 3, -100);
  for (const t of [table, ids, y, value, grads]) t.dispose();
});

Deno.test("embedding: the table gradient is bitwise deterministic", async () => {
  const table = tensor(Float32Array.from(randomArr([7, 33], 3).data), [7, 33]);
  const ids = tensor(randomIds(500, 7, 9), [20, 25], "u32");
  const w = tensor(Float32Array.from(randomArr([20, 25, 33], 4).data), [20, 25, 33]);
  const f = valueAndGrad((t: Tensor) => o.sum(o.mul(o.embedding(t, ids), w)));
  const a = f(table);
  const b = f(table);
  const [ga, gb] = await readAll([a.grads, b.grads]);
  assert.deepEqual(ga, gb);
  for (const t of [table, ids, w, a.value, a.grads, b.value, b.grads]) t.dispose();
});

Deno.test("embedding: bad inputs throw the specific error", () => {
  const table = tensor([[1, 2], [3, 4]]);
  const ids = tensor([0, 1], [2], "i32");
  assert.throws(() => o.embedding(table, tensor([0, 1])), DTypeError);
  assert.throws(() => o.embedding(tensor([[1, 2]], [1, 2], "i32"), ids), DTypeError);
  assert.throws(() => o.embedding(tensor([1, 2]), ids), ShapeError);
  assert.throws(() => o.embedding(tensor([[[1, 2]]]), ids), ShapeError);
});
