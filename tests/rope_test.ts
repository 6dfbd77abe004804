import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { readAll, Tensor, tensor } from "../core/tensor.ts";
import { defineKernel } from "../core/define_kernel.ts";
import { SINCOS_WGSL } from "../ops/wgsl_math.ts";
import { type Arr, assertClose, checkOp, FC, randomArr, ropeRows, setup } from "./util.ts";

await setup();

const sincosKernel = defineKernel({
  name: "test_sincos",
  inputs: { x: "f32" },
  outputs: { y: "f32" },
  grid: "flat",
  helpers: SINCOS_WGSL,
  body: `  let sc = sincos(load_x(i));
  store_y(2u * i, sc.x);
  store_y(2u * i + 1u, sc.y);`,
});

Deno.test("sincos (the kernels' own sin and cos): within 3e-7 of float64 for |x| <= 8192, on every adapter", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.float({ min: -8192, max: 8192, noNaN: true }), { minLength: 1, maxLength: 512 }),
      async (xs) => {
        const x = tensor(Float32Array.from(xs), [xs.length]);
        const y = Tensor.empty([2 * xs.length]);
        sincosKernel({ x, y }, { n: xs.length });
        const [got] = await readAll([y]);
        x.dispose();
        y.dispose();
        xs.forEach((v, i) => {
          const [s, c] = [Math.sin(Math.fround(v)), Math.cos(Math.fround(v))];
          assert.ok(Math.abs(got[2 * i] - s) <= 3e-7, `sin(${v}): ${got[2 * i]} vs ${s}`);
          assert.ok(Math.abs(got[2 * i + 1] - c) <= 3e-7, `cos(${v}): ${got[2 * i + 1]} vs ${c}`);
        });
      },
    ),
    FC,
  );
});

/** Float64 RoPE on [..., T, Dh]: row r is at position offset + r % T. */
function ropeRef(x: Arr, base: number, offset: number): Arr {
  const t = x.shape[x.shape.length - 2];
  return ropeRows(x, base, (row) => offset + (row % t));
}

// [..., T, Dh] of rank 2-4 with even Dh from 2 to 70, offsets up to 1000, two bases.
const caseArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 0, maxLength: 2 }),
  t: fc.integer({ min: 1, max: 9 }),
  half: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 30, max: 35 })),
  offset: fc.constantFrom(0, 0, 7, 1000),
  base: fc.constantFrom(10000, 500),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("rope: random shapes and offsets match float64 reference (atol 1e-5 + f32 angle rounding) and finite differences (1e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ lead, t, half, offset, base, seed }) => {
      // The kernel rounds the angle p * freq to f32: an error of up to |p| * 2^-24 radians.
      const angleErr = 2 * (offset + t) * 2 ** -24 * 2;
      await checkOp({
        op: ([x]) => o.rope(x, { base, offset }),
        ref: ([x]) => ropeRef(x, base, offset),
        inputs: [randomArr([...lead, t, 2 * half], seed)],
        fwd: { atol: 1e-5 + angleErr, rtol: 1e-4 },
        grad: { atol: 1e-3 + angleErr, rtol: 1e-3 },
      });
    }),
    FC,
  );
});

Deno.test("rope: HF convention on a hand example, position 0 is the identity, norms are preserved", async () => {
  // Dh = 4, base 100: freqs [1, 0.1]; row t=1 rotates pair (0, 2) by 1 rad and pair (1, 3) by 0.1.
  const x = tensor([[1, 2, 3, 4], [1, 2, 3, 4]]);
  const y = o.rope(x, { base: 100 });
  const [yd] = await readAll([y]);
  const c1 = Math.cos(1), s1 = Math.sin(1), c2 = Math.cos(0.1), s2 = Math.sin(0.1);
  const expected = [1, 2, 3, 4, 1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 3 * c1 + 1 * s1, 4 * c2 + 2 * s2];
  assertClose(yd, expected, { atol: 1e-6, rtol: 1e-6 });
  const norm = (a: ArrayLike<number>, r: number) =>
    Math.hypot(...Array.from(a).slice(4 * r, 4 * r + 4));
  assertClose([norm(yd, 1)], [norm([1, 2, 3, 4], 0)], { atol: 1e-5 });
  x.dispose();
  y.dispose();
});

Deno.test("rope: bad inputs throw the specific error", () => {
  assert.throws(() => o.rope(tensor([[[1, 2, 3]]])), ShapeError);
  assert.throws(() => o.rope(tensor([1, 2])), ShapeError);
  assert.throws(() => o.rope(tensor([[1, 2]], [1, 2], "i32")), DTypeError);
  assert.throws(() => o.rope(tensor([[1, 2]]), { offset: -1 }), ShapeError);
  assert.throws(() => o.rope(tensor([[1, 2]]), { offset: 1.5 }), ShapeError);
  assert.throws(() => o.rope(tensor(new Float32Array(2050), [1, 2050])), ShapeError);
});
