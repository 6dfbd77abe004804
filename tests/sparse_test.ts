import fc from "fast-check";
import assert from "node:assert/strict";
import { gatherFlat, scatterAdd, scatterToDense, sddmm } from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { memoryStats } from "../core/memory.ts";
import { sizeOf } from "../core/shape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { type Arr, assertClose, checkOp, FC, randomArr, setup, toTensor } from "./util.ts";

await setup();

type Mode = "sorted-unique" | "sorted-dups" | "unsorted-dups" | "with-oob";

/** Index lists of every kind the ops must handle, from a seed (xorshift). */
function makeIndices(n: number, nnz: number, mode: Mode, seed: number): Uint32Array {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
  if (mode === "sorted-unique") {
    // Sample without replacement (partial Fisher-Yates), then sort: SLTrain's supports.
    const all = Uint32Array.from({ length: n }, (_, i) => i);
    const k = Math.min(nnz, n);
    for (let i = 0; i < k; i++) {
      const j = i + Math.floor(next() * (n - i));
      [all[i], all[j]] = [all[j], all[i]];
    }
    return all.slice(0, k).sort();
  }
  const idx = Uint32Array.from({ length: nnz }, () => Math.floor(next() * n));
  if (mode === "with-oob") { for (let i = 0; i < nnz; i += 3) idx[i] = n + Math.floor(next() * 5); }
  if (mode === "sorted-dups") idx.sort();
  return idx;
}

/** Sequential float32 reference of scatter-add: exactly the GPU's order of additions. */
function scatterRefF32(
  dense: ArrayLike<number>,
  idx: Uint32Array,
  vals: ArrayLike<number>,
): Float32Array {
  const out = Float32Array.from(dense);
  for (let k = 0; k < idx.length; k++) {
    if (idx[k] < out.length) out[idx[k]] = Math.fround(out[idx[k]] + vals[k]);
  }
  return out;
}

const modeArb = fc.constantFrom<Mode>("sorted-unique", "sorted-dups", "unsorted-dups", "with-oob");

const caseArb = fc.record({
  rows: fc.integer({ min: 1, max: 8 }),
  cols: fc.integer({ min: 1, max: 8 }),
  density: fc.double({ min: 0, max: 1.5, noNaN: true }),
  mode: modeArb,
  seed: fc.integer({ min: 1, max: 1e6 }),
}).map((c) => {
  const n = c.rows * c.cols;
  const idx = makeIndices(n, Math.floor(c.density * n), c.mode, c.seed);
  return { ...c, idx };
});

const u32 = (idx: Uint32Array) => tensor(idx, [idx.length], "u32");

Deno.test("scatterAdd: forward vs float64 and VJPs (dense: g, values: gather) vs finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ rows, cols, idx, seed }) => {
      const I = u32(idx);
      await checkOp({
        op: ([d, v]) => scatterAdd(d, I, v),
        ref: ([d, v]) => {
          const data = d.data.slice();
          idx.forEach((j, k) => j < data.length && (data[j] += v.data[k]));
          return { shape: d.shape, data };
        },
        inputs: [randomArr([rows, cols], seed), randomArr([idx.length], seed + 1)],
        fwd: { atol: 1e-5, rtol: 1e-5 },
      });
      I.dispose();
    }),
    FC,
  );
});

Deno.test("scatterAdd: duplicates accumulate bit-exactly in list order, sorted or not, every run", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ rows, cols, idx, seed }) => {
      const d = randomArr([rows, cols], seed);
      const v = randomArr([idx.length], seed + 1);
      const [D, V, I] = [toTensor(d), toTensor(v), u32(idx)];
      const y1 = scatterAdd(D, I, V);
      const y2 = scatterAdd(D, I, V);
      const [a, b] = await readAll([y1, y2]);
      for (const t of [D, V, I, y1, y2]) t.dispose();
      const ref = scatterRefF32(d.data, idx, v.data);
      assert.deepEqual(Array.from(a), Array.from(ref));
      assert.deepEqual(Array.from(b), Array.from(a));
    }),
    FC,
  );
});

Deno.test("scatterAdd at SLTrain scale: 3% sorted support of a [344, 128] matrix, exact", async () => {
  const [rows, cols] = [344, 128];
  const idx = makeIndices(rows * cols, Math.floor(0.03 * rows * cols), "sorted-unique", 9);
  const d = randomArr([rows, cols], 1);
  const v = randomArr([idx.length], 2);
  const [D, V, I] = [toTensor(d), toTensor(v), u32(idx)];
  const y = scatterAdd(D, I, V);
  const z = scatterToDense([rows, cols], I, V);
  const [dy, dz] = await readAll([y, z]);
  for (const t of [D, V, I, y, z]) t.dispose();
  assert.deepEqual(Array.from(dy), Array.from(scatterRefF32(d.data, idx, v.data)));
  assert.deepEqual(
    Array.from(dz),
    Array.from(scatterRefF32(new Float32Array(rows * cols), idx, v.data)),
  );
});

Deno.test("scatterToDense: forward and VJP (gather) vs finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ rows, cols, idx, seed }) => {
      const I = u32(idx);
      await checkOp({
        op: ([v]) => scatterToDense([rows, cols], I, v),
        ref: ([v]) => {
          const data = new Float64Array(rows * cols);
          idx.forEach((j, k) => j < data.length && (data[j] += v.data[k]));
          return { shape: [rows, cols], data };
        },
        inputs: [randomArr([idx.length], seed)],
      });
      I.dispose();
    }),
    { ...FC, numRuns: 8 },
  );
});

Deno.test("gatherFlat: any dense shape, duplicates and out-of-range (0); VJP scatter-adds", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        shape: fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 1, maxLength: 3 }),
        density: fc.double({ min: 0, max: 2, noNaN: true }),
        mode: modeArb,
        seed: fc.integer({ min: 1, max: 1e6 }),
      }),
      async ({ shape, density, mode, seed }) => {
        const n = sizeOf(shape);
        const idx = makeIndices(n, Math.floor(density * n), mode, seed);
        const I = u32(idx);
        await checkOp({
          op: ([d]) => gatherFlat(d, I),
          ref: ([d]) => ({
            shape: [idx.length],
            data: Float64Array.from(idx, (j) => (j < n ? d.data[j] : 0)),
          }),
          inputs: [randomArr(shape, seed)],
          fwd: { atol: 0, rtol: 0 },
        });
        I.dispose();
      },
    ),
    FC,
  );
});

/** Float64 reference of sddmm: gatherFlat(aᵀ·b) with a [T, rows], b [T, cols]. */
function sddmmRef(a: Arr, b: Arr, idx: Uint32Array, aT: boolean, bT: boolean): Arr {
  const [T, rows] = aT ? [a.shape[1], a.shape[0]] : a.shape;
  const cols = bT ? b.shape[0] : b.shape[1];
  const at = (t: number, r: number) => a.data[aT ? r * T + t : t * rows + r];
  const bt = (t: number, c: number) => b.data[bT ? c * T + t : t * cols + c];
  const dense = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += at(t, r) * bt(t, c);
      dense[r * cols + c] = s;
    }
  }
  return {
    shape: [idx.length],
    data: Float64Array.from(idx, (j) => (j < rows * cols ? dense[j] : 0)),
  };
}

const sddmmArb = fc.record({
  T: fc.integer({ min: 1, max: 9 }),
  rows: fc.integer({ min: 1, max: 6 }),
  cols: fc.integer({ min: 1, max: 6 }),
  density: fc.double({ min: 0.05, max: 1.2, noNaN: true }),
  mode: modeArb,
  aT: fc.boolean(),
  bT: fc.boolean(),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("sddmm: forward = gatherFlat(aᵀ·b) in float64, VJPs (da, db) vs finite differences, all layouts", async () => {
  await fc.assert(
    fc.asyncProperty(sddmmArb, async ({ T, rows, cols, density, mode, aT, bT, seed }) => {
      const idx = makeIndices(
        rows * cols,
        Math.max(1, Math.floor(density * rows * cols)),
        mode,
        seed,
      );
      const I = u32(idx);
      await checkOp({
        op: ([a, b]) => sddmm(a, b, I, { aT, bT }),
        ref: ([a, b]) => sddmmRef(a, b, idx, aT, bT),
        inputs: [
          randomArr(aT ? [rows, T] : [T, rows], seed),
          randomArr(bT ? [cols, T] : [T, cols], seed + 1),
        ],
        fwd: { atol: 1e-5, rtol: 1e-5 },
      });
      I.dispose();
    }),
    FC,
  );
});

Deno.test("sddmm at a medium shape (T = 256, [96, 80], 3%, both layouts) matches float64", async () => {
  const [T, rows, cols] = [256, 96, 80];
  const idx = makeIndices(rows * cols, Math.floor(0.03 * rows * cols), "sorted-unique", 5);
  const a = randomArr([T, rows], 1);
  const b = randomArr([T, cols], 2);
  const at = randomArr([rows, T], 3);
  const bt = randomArr([cols, T], 4);
  const ts = [a, b, at, bt].map(toTensor);
  const I = u32(idx);
  const y = sddmm(ts[0], ts[1], I);
  const yt = sddmm(ts[2], ts[3], I, { aT: true, bT: true });
  const [dy, dyt] = await readAll([y, yt]);
  for (const t of [...ts, I, y, yt]) t.dispose();
  // Sums of 256 products of values in [-2, 2] in f32: about 1e-6 relative to the |terms| sum.
  assertClose(dy, sddmmRef(a, b, idx, false, false).data, {
    atol: 2e-4,
    rtol: 1e-5,
    what: "T-major",
  });
  assertClose(dyt, sddmmRef(at, bt, idx, true, true).data, {
    atol: 2e-4,
    rtol: 1e-5,
    what: "transposed",
  });
});

Deno.test("long lists and long T cross llvmpipe's 65535-iteration cap: chunked scatter, T slabs", async () => {
  // 70,000 entries: unsorted duplicates (serial path, 3 chunks) and one index repeated 70,000
  // times (a single run across chunks), both bit-exact against sequential float32 sums.
  const n = 100 * 100;
  const cases = [makeIndices(n, 70000, "unsorted-dups", 3), new Uint32Array(70000).fill(4321)];
  for (const idx of cases) {
    const d = randomArr([100, 100], 1);
    const v = randomArr([idx.length], 2);
    const [D, V, I] = [toTensor(d), toTensor(v), u32(idx)];
    const y = scatterAdd(D, I, V);
    const [dy] = await readAll([y]);
    for (const t of [D, V, I, y]) t.dispose();
    assert.deepEqual(Array.from(dy), Array.from(scatterRefF32(d.data, idx, v.data)));
  }
  // T = 20001 (scalar loads, group 8): 5 slabs of 4096 steps, ~80,000 iterations unsplit on the
  // mixed-row path; T = 280000 (vec4, group 1): 3 slabs of 32768 vec4 steps, 70,000 unsplit;
  // T = 0 gives zeros.
  for (const [T, group] of [[20001, 8], [280000, 1], [0, 4]]) {
    const [rows, cols] = [3, 5];
    const idx = makeIndices(rows * cols, 9, "unsorted-dups", T + 1);
    const a = randomArr([T, rows], 5);
    const b = randomArr([T, cols], 6);
    const [A, B, I] = [toTensor(a), toTensor(b), u32(idx)];
    const y = sddmm(A, B, I, { group });
    const [dy] = await readAll([y]);
    for (const t of [A, B, I, y]) t.dispose();
    assertClose(dy, sddmmRef(a, b, idx, false, false).data, {
      atol: 1e-3,
      rtol: 1e-4,
      what: `T=${T}`,
    });
  }
});

Deno.test("sparse ops reject bad indices and value counts before allocating", () => {
  const d = tensor([[1, 2], [3, 4]]);
  const v = tensor([1, 2]);
  const iU = tensor(new Uint32Array([0, 3]), [2], "u32");
  const iI = tensor(new Int32Array([0, 3]), [2], "i32");
  const iF = tensor([0, 3]);
  const i2 = tensor(new Uint32Array([0, 3]), [1, 2], "u32");
  const v3 = tensor([1, 2, 3]);
  const a = tensor([[1, 2], [3, 4], [5, 6]]);
  const before = memoryStats().liveBuffers;
  const dtypeCases: (() => Tensor)[] = [
    () => scatterAdd(d, iI, v),
    () => scatterAdd(d, iF, v),
    () => scatterAdd(d, iU, iU),
    () => gatherFlat(d, iI),
    () => gatherFlat(iU, iU),
    () => sddmm(d, d, iF),
    () => scatterToDense([2, 2], iI, v),
  ];
  for (const f of dtypeCases) {
    assert.throws(
      f,
      (e: Error) => e instanceof DTypeError && /indices|must be f32/.test(e.message),
    );
  }
  const shapeCases: [() => Tensor, RegExp][] = [
    [
      () => scatterAdd(d, iU, v3),
      /scatterAdd: values \[3\] must be 1-D with one value per index \(indices \[2\]\)/,
    ],
    [() => scatterAdd(d, i2, v), /scatterAdd: indices must be 1-D, got \[1, 2\]/],
    [() => scatterToDense([2, 2], iU, v3), /scatterToDense: values \[3\]/],
    [
      () => sddmm(d, a, iU),
      /sddmm: a \[2, 2\] and b \[3, 2\] disagree on the summed dimension \(2 vs 3\)/,
    ],
    [() => sddmm(v, d, iU), /sddmm: a and b must be 2-D/],
  ];
  for (const [f, re] of shapeCases) {
    assert.throws(f, (e: Error) => e instanceof ShapeError && re.test(e.message));
  }
  assert.equal(memoryStats().liveBuffers, before);
  for (const t of [d, v, iU, iI, iF, i2, v3, a]) t.dispose();
});
