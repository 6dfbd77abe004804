import assert from "node:assert/strict";
import fc from "fast-check";
import { defineKernel } from "../core/define_kernel.ts";
import { DTypeError } from "../core/errors.ts";
import { dispatchStats } from "../core/kernel.ts";
import { arange, readAll, Tensor, tensor } from "../core/tensor.ts";
import { FC, setup } from "./util.ts";

await setup();

// Writes every uniform back, so the packing can be compared with what was passed.
const echo = defineKernel({
  name: "echo_uniforms",
  outputs: { f: "f32", iu: "i32" },
  uniforms: {
    a: "u32",
    x: "f32",
    arr: ["f32", 5],
    b: "i32",
    c: "u32",
    small: ["u32", 2],
    y: "f32",
  },
  grid: { workgroupSize: [1] },
  body: `  store_f(0u, u.x); store_f(1u, u.y);
  for (var j = 0u; j < 5u; j++) { store_f(2u + j, u_arr(j)); }
  store_iu(0u, i32(u.a)); store_iu(1u, u.b); store_iu(2u, i32(u.c));
  store_iu(3u, i32(u_small(0u))); store_iu(4u, i32(u_small(1u)));`,
});

Deno.test("defineKernel packs scalars and arrays by WGSL's uniform layout rules", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { minLength: 7, maxLength: 7 }),
      fc.array(fc.integer({ min: 0, max: 2 ** 31 - 1 }), { minLength: 5, maxLength: 5 }),
      fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
      fc.integer({ min: 0, max: 5 }),
      async (floats, ints, b, arrLen) => {
        const f = Tensor.empty([7]);
        const iu = Tensor.empty([5], "i32");
        const arr = floats.slice(2, 2 + arrLen);
        echo({ f, iu }, {
          a: ints[0],
          x: floats[0],
          arr,
          b,
          c: ints[1],
          small: [ints[2], ints[3]],
          y: floats[1],
        }, [1]);
        const [fd, id] = await readAll([f, iu]);
        const expectF = [floats[0], floats[1], ...arr, ...new Array(5 - arrLen).fill(0)];
        assert.deepEqual([...fd], expectF.map(Math.fround));
        assert.deepEqual([...id], [ints[0], b, ints[1], ints[2], ints[3]]);
        f.dispose();
        iu.dispose();
      },
    ),
    FC,
  );
});

const rowIds = defineKernel({
  name: "row_ids",
  outputs: { y: "u32" },
  uniforms: { d: "u32" },
  grid: "row",
  body: "  for (var j = 0u; j < u.d; j++) { store_y(r * u.d + j, r); }",
});

const affine = defineKernel({
  name: "affine",
  inputs: { x: "f32" },
  outputs: { y: "f32" },
  uniforms: { a: "f32", b: "f32" },
  grid: "flat",
  body: "  store_y(i, u.a * load_x(i) + u.b);",
});

Deno.test("defineKernel row and flat grids cover exactly rows / n invocations", async () => {
  const y = Tensor.empty([5, 3], "u32");
  rowIds({ y }, { rows: 5, d: 3 });
  const x = tensor([1, 2, 3, 4, 5, 6, 7]);
  const z = tensor([9, 9, 9, 9, 9, 9, 9]);
  affine({ x, y: z }, { n: 4, a: 2, b: 1 }); // only the first 4 elements
  affine({ x, y: z }, { n: 0, a: 0, b: 0 }); // nothing
  const [yd, zd] = await readAll([y, z]);
  assert.deepEqual([...yd], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
  assert.deepEqual([...zd], [3, 5, 7, 9, 9, 9, 9]);
  for (const t of [x, y, z]) t.dispose();
});

Deno.test("defineKernel binds a window of a storage (offset and size in bytes)", async () => {
  const x = arange(256, "u32");
  const y = Tensor.empty([8], "u32");
  const copy = defineKernel({
    name: "window_copy",
    inputs: { src: "u32" },
    outputs: { dst: "u32" },
    grid: "flat",
    body: "  store_dst(i, load_src(i) + arrayLength(&src));",
  });
  copy({ src: { ...x.binding(), offset: 512, size: 64 }, dst: y }, { n: 8 });
  // Elements 128.. of x; the bound array is 16 long.
  assert.deepEqual([...(await y.data())], [144, 145, 146, 147, 148, 149, 150, 151]);
  assert.throws(
    () => copy({ src: { ...x.binding(), offset: 4 }, dst: y }, { n: 8 }),
    /window \[4, 1024\).*aligned/,
  );
  x.dispose();
  y.dispose();
});

Deno.test("defineKernel rejects bad arguments before recording, naming kernel and argument", () => {
  const x = tensor([1, 2]);
  const i = tensor([1, 2], [2], "i32");
  const y = Tensor.empty([2]);
  const before = dispatchStats().dispatches;
  assert.throws(
    () => affine({ x: i, y }, { n: 2, a: 1, b: 0 }),
    (e: Error) =>
      e instanceof DTypeError &&
      /affine: x is declared f32 but got a i32 tensor \[2\]/.test(e.message),
  );
  // @ts-expect-error: y is missing
  assert.throws(() => affine({ x }, { n: 2, a: 1, b: 0 }), /affine: missing binding y/);
  assert.throws(() => rowIds({ y: i }, { rows: -1, d: 2 }), /row_ids: uniform rows = -1/);
  assert.throws(() => rowIds({ y: i }, { rows: 1, d: 2.5 }), /uniform d = 2.5 is not a valid u32/);
  assert.equal(dispatchStats().dispatches, before);
  assert.throws(
    () => defineKernel({ name: "bad", uniforms: { n: "u32" }, grid: "flat", body: "" }),
    /uniform n is added by the flat grid/,
  );
  for (const t of [x, i, y]) t.dispose();
});

Deno.test("defineKernel: equal declarations give equal source (one pipeline, values never in it)", () => {
  const spec = {
    name: "twice",
    inputs: { x: "f32" },
    outputs: { y: "f32" },
    uniforms: { c: "f32" },
    grid: "flat",
    body: "  store_y(i, load_x(i) * u.c);",
  } as const;
  assert.equal(defineKernel(spec).code, defineKernel({ ...spec, name: "other" }).code);
  assert.match(defineKernel(spec).code, /@binding\(0\) var<storage, read> x: array<f32>/);
  assert.match(defineKernel(spec).code, /@binding\(1\) var<storage, read_write> y: array<f32>/);
  assert.match(defineKernel(spec).code, /@binding\(2\) var<uniform> u: U/);
});
