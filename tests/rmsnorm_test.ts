import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { type Arr, checkOp, FC, randomArr, setup } from "./util.ts";

await setup();

/** Float64 RMSNorm over the last axis. */
function rmsRef(x: Arr, w: Arr, eps: number): Arr {
  const d = w.shape[0];
  const out = new Float64Array(x.data.length);
  for (let base = 0; base < x.data.length; base += d) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x.data[base + j] ** 2;
    const r = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) out[base + j] = x.data[base + j] * r * w.data[j];
  }
  return { shape: x.shape, data: out };
}

// Leading shapes of rank 0-3 (a single row included), D odd / tiny / around 64.
const caseArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 0, maxLength: 3 }),
  d: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 60, max: 70 })),
  eps: fc.constantFrom(1e-6, 1e-2),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("rmsNorm: random shapes match float64 reference (atol 1e-5, rtol 1e-4); dx and dweight match finite differences (2e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ lead, d, eps, seed }) => {
      await checkOp({
        op: ([x, w]) => o.rmsNorm(x, w, eps),
        ref: ([x, w]) => rmsRef(x, w, eps),
        inputs: [randomArr([...lead, d], seed), randomArr([d], seed + 1, 0.5, 1.5)],
        grad: { atol: 2e-3, rtol: 2e-3 },
      });
    }),
    FC,
  );
});

Deno.test("rmsNorm: scale invariance for large inputs and a bitwise deterministic weight gradient", async () => {
  const xa = randomArr([300, 48], 5);
  const x = tensor(Float32Array.from(xa.data), xa.shape);
  const x1e4 = tensor(Float32Array.from(xa.data, (v) => v * 1e4), xa.shape);
  const w = tensor(Float32Array.from(randomArr([48], 6).data), [48]);
  const f = valueAndGrad((p: Tensor[]) => o.sum(o.square(o.rmsNorm(p[0], p[1]))));
  const a = f([x, w]);
  const b = f([x, w]);
  const y = o.rmsNorm(x, w);
  const y4 = o.rmsNorm(x1e4, w);
  const [ga, gb, yd, y4d] = await readAll([a.grads[1], b.grads[1], y, y4]);
  assert.deepEqual(ga, gb);
  for (let i = 0; i < yd.length; i++) {
    assert.ok(Math.abs(yd[i] - y4d[i]) <= 1e-5 + 1e-5 * Math.abs(yd[i]));
  }
  for (const t of [x, x1e4, w, y, y4, a.value, ...a.grads, b.value, ...b.grads]) t.dispose();
});

Deno.test("rmsNorm: bad inputs throw the specific error", () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  assert.throws(() => o.rmsNorm(x, tensor([1, 1])), ShapeError);
  assert.throws(() => o.rmsNorm(x, tensor([[1, 1, 1]])), ShapeError);
  assert.throws(() => o.rmsNorm(tensor([1], []), tensor([1])), ShapeError);
  assert.throws(() => o.rmsNorm(x, tensor([1, 1, 1], [3], "i32")), DTypeError);
  assert.throws(() => o.rmsNorm(tensor([1, 2], [2], "i32"), tensor([1, 1])), DTypeError);
  assert.throws(() => o.rmsNorm(x, tensor([1, 1, 1]), -1), ShapeError);
});
