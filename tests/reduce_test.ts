import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { ShapeError } from "../core/errors.ts";
import { sizeOf, stridesOf } from "../core/shape.ts";
import { type Tensor, tensor } from "../core/tensor.ts";
import { type Arr, checkOp, FC, randomArr, setup } from "./util.ts";

await setup();

/** Float64 reduction over `axes` with keepdims, in the reference's own loop form. */
function reduceRef(a: Arr, axes: number[], keepdims: boolean, f: (vals: number[]) => number): Arr {
  const kshape = a.shape.map((n, d) => (axes.includes(d) ? 1 : n));
  const groups = new Map<number, number[]>();
  const st = stridesOf(a.shape);
  const kst = stridesOf(kshape);
  for (let i = 0; i < a.data.length; i++) {
    let key = 0;
    for (let d = 0; d < a.shape.length; d++) {
      const c = Math.floor(i / st[d]) % a.shape[d];
      if (!axes.includes(d)) key += c * kst[d];
    }
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(a.data[i]);
  }
  const out = new Float64Array(sizeOf(kshape));
  for (let k = 0; k < out.length; k++) out[k] = f(groups.get(k)!);
  return { shape: keepdims ? kshape : a.shape.filter((_, d) => !axes.includes(d)), data: out };
}

const caseArb = fc.record({
  shape: fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 4 }),
  axesMask: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  keepdims: fc.boolean(),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

const kinds: [string, typeof o.sum, (v: number[]) => number][] = [
  ["sum", o.sum, (v) => v.reduce((s, x) => s + x, 0)],
  ["mean", o.mean, (v) => v.reduce((s, x) => s + x, 0) / v.length],
  ["max", o.max, (v) => Math.max(...v)],
];

for (const [name, op, f] of kinds) {
  Deno.test(`${name}: any axes, keepdims: forward and gradient match reference and finite differences`, async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async ({ shape, axesMask, keepdims, seed }) => {
        const axes = shape.map((_, d) => d).filter((d) => axesMask[d]);
        await checkOp({
          op: ([x]) => op(x, axes, keepdims),
          ref: ([a]) => reduceRef(a, axes, keepdims, f),
          inputs: [randomArr(shape, seed)],
          // max's gradient is discontinuous only at ties, which random floats avoid.
        });
      }),
      FC,
    );
  });
}

Deno.test("sum of a long vector uses the two-pass path and is exact on integers", async () => {
  const n = 300_001;
  const v = new Float32Array(n).map((_, i) => i % 7);
  const x = tensor(v);
  const s = o.sum(x);
  const m = o.max(x);
  const expected = v.reduce((a, b) => a + b, 0);
  assert.equal(await s.item(), expected);
  assert.equal(await m.item(), 6);
  for (const t of [x, s, m]) t.dispose();
});

Deno.test("max shares the gradient among ties", async () => {
  const { valueAndGrad } = await import("../core/tape.ts");
  const x = tensor([3, 1, 3]);
  const { value, grads } = valueAndGrad((p: Tensor) => o.max(p))(x);
  assert.deepEqual(Array.from(await grads.data()), [0.5, 0, 0.5]);
  for (const t of [x, value, grads]) t.dispose();
});

Deno.test("sumTo rejects shapes that are not a broadcast source", () => {
  const x = tensor([[1, 2, 3]]);
  assert.throws(() => o.sumTo(x, [2]), ShapeError);
  assert.throws(() => o.sumTo(x, [1, 1, 3, 1]), ShapeError);
  x.dispose();
});
