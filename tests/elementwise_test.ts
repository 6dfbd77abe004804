import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DeviceLimitError, DTypeError, ShapeError } from "../core/errors.ts";
import { memoryStats } from "../core/memory.ts";
import { broadcastShapes, sizeOf, stridesOf } from "../core/shape.ts";
import { type Tensor, tensor, zeros } from "../core/tensor.ts";
import {
  type Arr,
  assertClose,
  checkOp,
  FC,
  randomArr,
  roundBf16,
  setup,
  toTensor,
  withWindowBytes,
} from "./util.ts";

await setup();

/** Float64 NumPy-style broadcast of an n-ary scalar function. */
function bcast(f: (...v: number[]) => number, ins: Arr[]): Arr {
  const shape = ins.map((a) => a.shape).reduce((a, b) => broadcastShapes(a, b), [] as number[]);
  const n = sizeOf(shape);
  const out = new Float64Array(n);
  const outStrides = stridesOf(shape);
  const inStrides = ins.map((a) => {
    const s = stridesOf(a.shape);
    const off = shape.length - a.shape.length;
    return shape.map((_, d) => (d < off || a.shape[d - off] === 1 ? 0 : s[d - off]));
  });
  for (let i = 0; i < n; i++) {
    const vals = ins.map((a, j) => {
      let off = 0;
      for (let d = 0; d < shape.length; d++) {
        off += Math.floor(i / outStrides[d]) % shape[d] * inStrides[j][d];
      }
      return a.data[off];
    });
    out[i] = f(...vals);
  }
  return { shape, data: out };
}

/** Two shapes that broadcast: drop leading dims and set some dims to 1. */
const pairArb = fc.record({
  out: fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 0, maxLength: 4 }),
  dropA: fc.nat(4),
  dropB: fc.nat(4),
  onesA: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  onesB: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  seed: fc.integer({ min: 1, max: 1e6 }),
}).map(({ out, dropA, dropB, onesA, onesB, seed }) => {
  const derive = (drop: number, ones: boolean[]) =>
    out.slice(Math.min(drop, out.length)).map((d, i) => (ones[i] ? 1 : d));
  return { a: derive(dropA, onesA), b: derive(dropB, onesB), seed };
});

const sig = (v: number) => 1 / (1 + Math.exp(-v));
const binaries: [string, (a: Tensor, b: Tensor) => Tensor, (x: number, y: number) => number][] = [
  ["add", o.add, (x, y) => x + y],
  ["sub", o.sub, (x, y) => x - y],
  ["mul", o.mul, (x, y) => x * y],
  ["div", o.div, (x, y) => x / y],
];

for (const [name, op, f] of binaries) {
  Deno.test(`${name}: broadcast forward and gradients match float64 reference and finite differences`, async () => {
    await fc.assert(
      fc.asyncProperty(pairArb, async ({ a, b, seed }) => {
        const A = randomArr(a, seed);
        // Keep divisors away from zero so finite differences are well conditioned.
        const B = randomArr(b, seed + 1, 0.5, 2);
        await checkOp({ op: ([x, y]) => op(x, y), ref: (ins) => bcast(f, ins), inputs: [A, B] });
      }),
      FC,
    );
  });
}

const unaries: [string, (x: Tensor) => Tensor, (x: number) => number, number, number][] = [
  ["neg", o.neg, (x) => -x, -2, 2],
  ["exp", o.exp, Math.exp, -2, 2],
  ["log", o.log, Math.log, 0.5, 3],
  ["sqrt", o.sqrt, Math.sqrt, 0.5, 3],
  ["rsqrt", o.rsqrt, (x) => 1 / Math.sqrt(x), 0.5, 3],
  ["square", o.square, (x) => x * x, -2, 2],
  ["sigmoid", o.sigmoid, sig, -4, 4],
  ["silu", o.silu, (x) => x * sig(x), -4, 4],
  ["addScalar", (x) => o.addScalar(x, 1.5), (x) => x + 1.5, -2, 2],
  ["mulScalar", (x) => o.mulScalar(x, -0.75), (x) => x * -0.75, -2, 2],
  ["powScalar(3)", (x) => o.powScalar(x, 3), (x) => x ** 3, -2, 2],
  ["powScalar(0.5)", (x) => o.powScalar(x, 0.5), Math.sqrt, 0.5, 3],
];

Deno.test("unary ops: forward and gradients match float64 reference and finite differences", async () => {
  for (const [name, op, f, lo, hi] of unaries) {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 0, maxLength: 3 }),
        fc.integer({ min: 1, max: 1e6 }),
        async (shape, seed) => {
          const x = randomArr(shape, seed, lo, hi);
          await checkOp({
            op: ([t]) => op(t),
            ref: ([a]) => ({ shape: a.shape, data: a.data.map(f) }),
            inputs: [x],
          });
        },
      ),
      { ...FC, numRuns: 4, examples: [] },
    ).catch((e) => {
      throw new Error(`${name}: ${e.message}`);
    });
  }
});

Deno.test("sigmoid and silu are finite at extreme inputs", async () => {
  const x = tensor([-100, -30, 0, 30, 100]);
  const s = o.sigmoid(x);
  const z = o.silu(x);
  assert.deepEqual(Array.from(await s.data()).map((v) => Math.round(v * 1e6) / 1e6), [
    0,
    0,
    0.5,
    1,
    1,
  ]);
  assert.ok(Array.from(await z.data()).every(Number.isFinite));
  for (const t of [x, s, z]) t.dispose();
});

Deno.test("where selects by a broadcast condition and routes gradients", async () => {
  await checkOp({
    op: ([a, b]) => {
      const c = tensor([1, 0, 1]);
      const y = o.where(c, a, b);
      c.dispose();
      return y;
    },
    ref: ([a, b]) =>
      bcast((x, y, c) => (c !== 0 ? x : y), [a, b, {
        shape: [3],
        data: Float64Array.from([1, 0, 1]),
      }]),
    inputs: [randomArr([2, 3], 3), randomArr([2, 1], 4)],
  });
});

Deno.test("law: broadcasting add then sumTo returns count-weighted input", async () => {
  await fc.assert(
    fc.asyncProperty(pairArb, async ({ a, b }) => {
      const A = randomArr(a, 11);
      const out = broadcastShapes(a, b);
      const x = tensor(Float32Array.from(A.data), a);
      const z = zeros(out);
      const y = o.add(x, z);
      const back = o.sumTo(y, a);
      const factor = sizeOf(out) / Math.max(1, sizeOf(a));
      const got = await back.data();
      for (const t of [x, z, y, back]) t.dispose();
      got.forEach((v, i) =>
        assert.ok(Math.abs(v - A.data[i] * factor) <= 1e-4 * (1 + Math.abs(v)))
      );
    }),
    FC,
  );
});

Deno.test("bad input: mismatched shapes and integer operands are specific errors, nothing allocated", () => {
  const a = tensor([[1, 2, 3]]);
  const b = tensor([1, 2]);
  const i = tensor([1, 2, 3], [3], "i32");
  const before = memoryStats();
  assert.throws(() => o.add(a, b), ShapeError);
  assert.throws(() => o.mul(a, i), DTypeError);
  assert.throws(() => o.exp(i), DTypeError);
  assert.throws(() => o.sum(a, 2), ShapeError);
  assert.deepEqual(memoryStats().liveBytes, before.liveBytes);
  for (const t of [a, b, i]) t.dispose();
});

Deno.test("mapN over one binding: same-shape operands in windows, broadcast scalars whole, bf16 inputs widened; other broadcasts refused by name", async () => {
  const n = 1000; // 4000 bytes of f32 output: four windows of 1 KiB
  const a = randomArr([n], 3);
  const b = randomArr([n], 4);
  const x = toTensor(a);
  const y = tensor(Float32Array.from(b.data), [n], "bf16");
  const c = tensor([0.25]);
  const row = toTensor(randomArr([10, 100], 5));
  const bias = toTensor(randomArr([100], 6));
  await withWindowBytes(1024, async () => {
    const out = o.mapN("test_fma", [x, y, c], "v0 * v1 + v2 + c0", undefined, [1.5]);
    const yr = roundBf16(b).data;
    const want = a.data.map((v, i) => Math.fround(v * yr[i]) + 0.25 + 1.5);
    assertClose(await out.data(), want, { atol: 1e-6, rtol: 1e-6 });
    out.dispose();
    assert.throws(
      () => o.add(row, bias),
      (e: Error) =>
        e instanceof DeviceLimitError && /add: output \[10, 100\]/.test(e.message) &&
        /input \[100\] broadcasts/.test(e.message),
    );
  });
  for (const t of [x, y, c, row, bias]) t.dispose();
});
