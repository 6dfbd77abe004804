import fc from "fast-check";
import assert from "node:assert/strict";
import {
  broadcastTo,
  concat,
  expandDims,
  mul,
  permute,
  reshape,
  slice,
  squeeze,
  stack,
  sum,
  sumTo,
  transpose,
} from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { memoryStats } from "../core/memory.ts";
import { sizeOf, stridesOf } from "../core/shape.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import {
  type Arr,
  assertClose,
  checkOp,
  FC,
  randomArr,
  setup,
  shapeArb,
  toTensor,
} from "./util.ts";

await setup();

// Shape ops only move values, so forward results must be bit-exact; gradients of a copy are exact
// too, so the finite-difference tolerance (float64 reference, h = 1e-4) is the only slack.
const EXACT = { atol: 0, rtol: 0 };

/** out[coords] = a[src(coords)] over `shape`, in float64 (src returns a flat index into a). */
function gatherRef(a: Arr, shape: number[], src: (c: number[]) => number): Arr {
  const n = sizeOf(shape);
  const st = stridesOf(shape);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const c = shape.map((d, k) => Math.floor(i / st[k]) % d);
    data[i] = a.data[src(c)];
  }
  return { shape, data };
}

const dot = (c: number[], s: number[]) => c.reduce((acc, v, k) => acc + v * s[k], 0);

function refTranspose(a: Arr, p: number[]): Arr {
  const s = stridesOf(a.shape);
  return gatherRef(a, p.map((k) => a.shape[k]), (c) => dot(c, p.map((k) => s[k])));
}

function refSlice(a: Arr, begin: number[], size: number[]): Arr {
  const s = stridesOf(a.shape);
  return gatherRef(a, size, (c) => dot(c.map((v, k) => v + begin[k]), s));
}

function refConcat(as: Arr[], axis: number): Arr {
  const shape = [...as[0].shape];
  shape[axis] = as.reduce((acc, a) => acc + a.shape[axis], 0);
  const n = sizeOf(shape);
  const st = stridesOf(shape);
  const data = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const c = shape.map((d, k) => Math.floor(i / st[k]) % d);
    let j = 0;
    while (c[axis] >= as[j].shape[axis]) c[axis] -= as[j++].shape[axis];
    data[i] = as[j].data[dot(c, stridesOf(as[j].shape))];
  }
  return { shape, data };
}

function refBroadcast(a: Arr, shape: number[]): Arr {
  const lead = shape.length - a.shape.length;
  const s = stridesOf(a.shape);
  return gatherRef(
    a,
    shape,
    (c) => c.slice(lead).reduce((acc, v, k) => acc + (a.shape[k] === 1 ? 0 : v * s[k]), 0),
  );
}

const permArb = (rank: number) =>
  fc.shuffledSubarray(Array.from({ length: rank }, (_, i) => i), {
    minLength: rank,
    maxLength: rank,
  });

/** A shape of rank 1-4 (dims 1-5) with a permutation of its axes and a data seed. */
const shapePermArb = fc.integer({ min: 1, max: 4 }).chain((r) =>
  fc.record({ shape: shapeArb(r, 5), perm: permArb(r), seed: fc.integer({ min: 1, max: 1e6 }) })
);

Deno.test("transpose: forward is exact and the VJP (inverse permutation) matches finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(shapePermArb, async ({ shape, perm, seed }) => {
      await checkOp({
        op: ([x]) => transpose(x, perm),
        ref: ([a]) => refTranspose(a, perm),
        inputs: [randomArr(shape, seed)],
        fwd: EXACT,
      });
    }),
    FC,
  );
});

Deno.test("transpose: composing permutations; default perm reverses the axes; permute is an alias", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 5 }).chain((r) =>
        fc.record({ shape: shapeArb(r, 4), p: permArb(r), q: permArb(r), seed: fc.nat() })
      ),
      async ({ shape, p, q, seed }) => {
        const a = randomArr(shape, seed);
        const x = toTensor(a);
        // transpose(transpose(x, p), q) == transpose(x, p∘q) where (p∘q)[j] = p[q[j]].
        const twice = transpose(transpose(x, p), q);
        const once = transpose(x, q.map((j) => p[j]));
        const rev = transpose(x);
        const alias = permute(x, p);
        const [d2, d1, dr, da] = await readAll([twice, once, rev, alias]);
        for (const t of [x, twice, once, rev, alias]) t.dispose();
        assert.deepEqual(twice.shape, once.shape);
        assert.deepEqual(Array.from(d2), Array.from(d1));
        const r = shape.map((_, i) => shape.length - 1 - i);
        assertClose(dr, refTranspose(a, r).data, { ...EXACT, what: "reverse" });
        assertClose(da, refTranspose(a, p).data, { ...EXACT, what: "permute" });
      },
    ),
    { ...FC, numRuns: 10 },
  );
});

Deno.test("long innermost axes (runs of 8 with ragged tails): transpose, slice, concat, broadcastTo exact", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        shape: fc.tuple(
          fc.integer({ min: 1, max: 3 }),
          fc.integer({ min: 5, max: 40 }),
          fc.integer({ min: 5, max: 40 }),
        ),
        perm: permArb(3),
        seed: fc.nat(),
      }),
      async ({ shape, perm, seed }) => {
        const a = randomArr(shape, seed);
        const x = toTensor(a);
        const begin = [0, 1, 2];
        const size = [shape[0], shape[1] - 2, shape[2] - 3];
        const last = [...shape.slice(0, 2), 1];
        const ys = [
          transpose(x, perm),
          slice(x, begin, size),
          concat([x, x], 2),
          broadcastTo(slice(x, [0, 0, 0], last), shape),
        ];
        const got = await readAll(ys);
        for (const t of [x, ...ys]) t.dispose();
        const col = refSlice(a, [0, 0, 0], last);
        const want = [
          refTranspose(a, perm),
          refSlice(a, begin, size),
          refConcat([a, a], 2),
          refBroadcast(col, shape),
        ];
        want.forEach((w, i) => assertClose(got[i], w.data, { ...EXACT, what: `case ${i}` }));
      },
    ),
    { ...FC, numRuns: 8 },
  );
});

Deno.test("transpose/concat/broadcastTo copy i32 and u32 bit-exactly", async () => {
  const i = tensor(new Int32Array([-1, 2, -2147483648, 2147483647, 5, -6]), [2, 3]);
  const u = tensor(new Uint32Array([0, 1, 4294967295, 7, 8, 9]), [3, 2]);
  const ti = transpose(i);
  const cu = concat([u, u], 0);
  const bu = broadcastTo(tensor(new Uint32Array([4294967295, 3]), [2]), [2, 2]);
  const [a, b, c] = await readAll([ti, cu, bu]);
  for (const t of [i, u, ti, cu, bu]) t.dispose();
  assert.equal(ti.dtype, "i32");
  assert.deepEqual(Array.from(a), [-1, 2147483647, 2, 5, -2147483648, -6]);
  assert.deepEqual(Array.from(b), [0, 1, 4294967295, 7, 8, 9, 0, 1, 4294967295, 7, 8, 9]);
  assert.deepEqual(Array.from(c), [4294967295, 3, 4294967295, 3]);
});

Deno.test("reshape: shares storage, infers -1, and its VJP reshapes the gradient back", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 4 }).chain((r) =>
        fc.record({ shape: shapeArb(r, 5), seed: fc.nat() })
      ),
      async ({ shape, seed }) => {
        const n = sizeOf(shape);
        // A target shape: n factored as [k, n / k] with k the smallest divisor > 1 (or [n]).
        const k = Array.from({ length: n }, (_, i) => i + 1).find((d) => d > 1 && n % d === 0) ?? n;
        const target = [k, -1];
        const a = randomArr(shape, seed);
        await checkOp({
          op: ([x]) => reshape(x, target),
          ref: ([x]) => ({ shape: [k, n / k], data: x.data }),
          inputs: [a],
          fwd: EXACT,
        });
        const x = toTensor(a);
        const before = memoryStats().liveBuffers;
        const y = reshape(x, target);
        assert.equal(memoryStats().liveBuffers, before, "reshape must not allocate");
        assert.deepEqual(y.shape, [k, n / k]);
        y.dispose();
        x.dispose();
      },
    ),
    { ...FC, numRuns: 8 },
  );
});

Deno.test("expandDims / squeeze / stack", async () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  const e = expandDims(x, -1);
  assert.deepEqual(e.shape, [2, 3, 1]);
  const e0 = expandDims(x, 0);
  assert.deepEqual(e0.shape, [1, 2, 3]);
  assert.deepEqual(squeeze(e0).shape, [2, 3]);
  assert.deepEqual(squeeze(e, 2).shape, [2, 3]);
  assert.throws(() => squeeze(x, 0), ShapeError);
  const s = stack([x, x], 1);
  assert.deepEqual(s.shape, [2, 2, 3]);
  assert.deepEqual(Array.from(await s.data()), [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]);
  for (const t of [x, e, e0, s]) t.dispose();
});

/** A shape (rank 1-4, dims 1-5) with a random in-range block (begin, size). */
const sliceArb = fc.integer({ min: 1, max: 4 }).chain((r) =>
  fc.record({
    shape: shapeArb(r, 5),
    fb: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: r, maxLength: r }),
    fs: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: r, maxLength: r }),
    seed: fc.nat(),
  }).map(({ shape, fb, fs, seed }) => {
    const begin = shape.map((d, i) => Math.min(d - 1, Math.floor(fb[i] * d)));
    const size = shape.map((d, i) =>
      1 + Math.min(d - begin[i] - 1, Math.floor(fs[i] * (d - begin[i])))
    );
    return { shape, begin, size, seed };
  })
);

Deno.test("slice: forward is exact and the VJP (pad into zeros) matches finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(sliceArb, async ({ shape, begin, size, seed }) => {
      await checkOp({
        op: ([x]) => slice(x, begin, size),
        ref: ([a]) => refSlice(a, begin, size),
        inputs: [randomArr(shape, seed)],
        fwd: EXACT,
      });
    }),
    FC,
  );
});

Deno.test("slice: size -1 and short begin/size take the rest of the axis", async () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  const a = slice(x, [1], undefined);
  const b = slice(x, [0, 1], [-1, -1]);
  const [da, db] = await readAll([a, b]);
  assert.deepEqual(a.shape, [1, 3]);
  assert.deepEqual(Array.from(da), [4, 5, 6]);
  assert.deepEqual(Array.from(db), [2, 3, 5, 6]);
  for (const t of [x, a, b]) t.dispose();
});

/** 1-3 tensors of the same rank that differ only along `axis`. */
const concatArb = fc.integer({ min: 1, max: 4 }).chain((r) =>
  fc.record({
    base: shapeArb(r, 4),
    axis: fc.integer({ min: 0, max: r - 1 }),
    lens: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 1, maxLength: 3 }),
    seed: fc.nat(),
  }).map(({ base, axis, lens, seed }) => ({
    shapes: lens.map((l) => base.map((d, i) => (i === axis ? l : d))),
    axis,
    seed,
  }))
);

Deno.test("concat: forward is exact and the VJP (slices of g) matches finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(concatArb, async ({ shapes, axis, seed }) => {
      await checkOp({
        op: (xs) => concat(xs, axis),
        ref: (as) => refConcat(as, axis),
        inputs: shapes.map((s, i) => randomArr(s, seed + i)),
        fwd: EXACT,
      });
    }),
    FC,
  );
});

Deno.test("slice then concat along an axis rebuilds the tensor exactly", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 4 }).chain((r) =>
        fc.record({
          shape: shapeArb(r, 6),
          axis: fc.integer({ min: 0, max: r - 1 }),
          cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
          seed: fc.nat(),
        })
      ),
      async ({ shape, axis, cuts, seed }) => {
        const d = shape[axis];
        const bounds = [0, ...cuts.map((c) => Math.floor(c * d)).sort((a, b) => a - b), d];
        const x = toTensor(randomArr(shape, seed));
        const parts = bounds.slice(1).map((hi, i) => {
          const begin = shape.map((_, k) => (k === axis ? bounds[i] : 0));
          const size = shape.map((s, k) => (k === axis ? hi - bounds[i] : s));
          return slice(x, begin, size);
        });
        const y = concat(parts, axis);
        const [dx, dy] = await readAll([x, y]);
        for (const t of [x, y, ...parts]) t.dispose();
        assert.deepEqual(y.shape, shape);
        assert.deepEqual(Array.from(dy), Array.from(dx));
      },
    ),
    { ...FC, numRuns: 10 },
  );
});

/** A target shape and an input shape that broadcasts to it (leading dims dropped, some set to 1). */
const bcastArb = fc.record({
  out: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 0, maxLength: 4 }),
  drop: fc.nat(4),
  ones: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
  seed: fc.nat(),
}).map(({ out, drop, ones, seed }) => ({
  out,
  inp: out.slice(Math.min(drop, out.length)).map((d, i) => (ones[i] ? 1 : d)),
  seed,
}));

Deno.test("broadcastTo: forward is exact and the VJP (sumTo) matches finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(bcastArb, async ({ out, inp, seed }) => {
      await checkOp({
        op: ([x]) => broadcastTo(x, out),
        ref: ([a]) => refBroadcast(a, out),
        inputs: [randomArr(inp, seed)],
        fwd: EXACT,
      });
    }),
    FC,
  );
});

Deno.test("sumTo(broadcastTo(x, s), x.shape) = x · (size(s) / size(x))", async () => {
  await fc.assert(
    fc.asyncProperty(bcastArb, async ({ out, inp, seed }) => {
      const a = randomArr(inp, seed);
      const x = toTensor(a);
      const b = broadcastTo(x, out);
      const y = sumTo(b, inp);
      const [dy] = await readAll([y]);
      for (const t of [x, b, y]) t.dispose();
      const k = sizeOf(out) / sizeOf(inp);
      assertClose(dy, a.data.map((v) => v * k), { atol: 1e-5, rtol: 1e-5 });
    }),
    { ...FC, numRuns: 10 },
  );
});

Deno.test("VJPs are linear in the upstream gradient: grad(w1 + w2) = grad(w1) + grad(w2)", async () => {
  // One chain through every copy op: broadcast, transpose, slice, concat.
  const f = (w: Tensor) => (x: Tensor) => {
    const b = broadcastTo(x, [3, 2, 4]);
    const t = transpose(b, [2, 0, 1]);
    const s = slice(t, [1, 0, 0], [3, 3, 2]);
    return sum(mul(concat([s, t], 0), w));
  };
  const x = toTensor(randomArr([2, 1], 3));
  const w1 = toTensor(randomArr([7, 3, 2], 4));
  const w2 = toTensor(randomArr([7, 3, 2], 5));
  const w12 = toTensor({
    shape: [7, 3, 2],
    data: randomArr([7, 3, 2], 4).data.map((v, i) => v + randomArr([7, 3, 2], 5).data[i]),
  });
  const r1 = valueAndGrad(f(w1))(x);
  const r2 = valueAndGrad(f(w2))(x);
  const r12 = valueAndGrad(f(w12))(x);
  const [g1, g2, g12] = await readAll([r1.grads, r2.grads, r12.grads]);
  for (const t of [x, w1, w2, w12, r1.value, r1.grads, r2.value, r2.grads, r12.value, r12.grads]) {
    t.dispose();
  }
  assertClose(g12, Array.from(g1, (v, i) => v + g2[i]), { atol: 1e-5, rtol: 1e-5 });
});

Deno.test("shape errors name the op and the shapes, and allocate nothing", () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  const y = tensor([[1, 2]]);
  const before = memoryStats().liveBuffers;
  const cases: [() => unknown, RegExp][] = [
    [() => transpose(x, [0, 0]), /transpose: \[0, 0\] is not a permutation .*\[2, 3\]/],
    [() => transpose(x, [1]), /transpose: .*\[2, 3\]/],
    [() => transpose(x, [0, 2]), /transpose/],
    [() => slice(x, [0, 2], [2, 2]), /slice: .*out of range on axis 1 .*\[2, 3\]/],
    [() => slice(x, [3, 0]), /slice: .*out of range on axis 0/],
    [() => slice(x, [0, 0, 0]), /slice: .*more axes/],
    [() => slice(x, [-1, 0]), /slice/],
    [() => concat([x, y], 0), /concat: shapes \[2, 3\], \[1, 2\] do not agree outside axis 0/],
    [() => concat([x, x], 2), /concat: axis 2 is out of range/],
    [() => concat([], 0), /concat/],
    [() => reshape(x, [4, 2]), /reshape: cannot reshape \[2, 3\] to \[4, 2\]/],
    [() => reshape(x, [-1, -1]), /reshape: .*more than one -1/],
    [() => reshape(x, [4, -1]), /reshape: .*\[2, 3\]/],
    [() => reshape(x, [0, -1]), /reshape/],
    [() => reshape(x, [2.5, 2]), /reshape/],
    [() => broadcastTo(x, [3, 3]), /broadcastTo: cannot broadcast \[2, 3\] to \[3, 3\]/],
    [() => broadcastTo(x, [3]), /broadcastTo: cannot broadcast \[2, 3\] to \[3\]/],
    [() => stack([x, y]), /stack: shapes/],
  ];
  for (const [f, re] of cases) {
    assert.throws(f, (e: Error) => e instanceof ShapeError && re.test(e.message));
  }
  const i = tensor(new Int32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
  assert.throws(() => concat([x, i], 0), DTypeError);
  assert.equal(memoryStats().liveBuffers, before + 1);
  for (const t of [x, y, i]) t.dispose();
});
