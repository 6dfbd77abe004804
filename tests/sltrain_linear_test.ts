import fc from "fast-check";
import assert from "node:assert/strict";
import {
  add,
  lowRankLinear,
  matmul,
  mul,
  mulScalar,
  sampleSupport,
  scatterToDense,
  sltrainLinear,
  sltrainPath,
  sum,
} from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { sizeOf } from "../core/shape.ts";
import { Tape, valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import {
  alignedRowsBytes,
  type Arr,
  assertClose,
  checkOp,
  FC,
  randomArr,
  setup,
  toTensor,
  withWindowBytes,
} from "./util.ts";

await setup();

const u32 = (idx: Uint32Array) => tensor(idx, [idx.length], "u32");

/** The same layer from plain recorded ops: W = s·(B·A) + scatterToDense(V at I); y = x·Wᵀ. */
function denseEquivalent(x: Tensor, B: Tensor, A: Tensor, V: Tensor, I: Tensor, s: number) {
  const W = add(mulScalar(matmul(B, A), s), scatterToDense([B.shape[0], A.shape[1]], I, V));
  return matmul(x, W, { transB: true });
}

/** Float64 CPU reference: y = x·Wᵀ with W = s·B·A ⊕_I V. */
function sltrainRef([x, B, A, V]: Arr[], idx: Uint32Array, s: number): Arr {
  const [out, r] = B.shape;
  const inF = A.shape[1];
  const W = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < inF; c++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B.data[o * r + k] * A.data[k * inF + c];
      W[o * inF + c] = s * acc;
    }
  }
  idx.forEach((j, k) => (W[j] += V.data[k]));
  const T = x.data.length / inF;
  const y = new Float64Array(T * out);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < out; o++) {
      let acc = 0;
      for (let c = 0; c < inF; c++) acc += x.data[t * inF + c] * W[o * inF + c];
      y[t * out + o] = acc;
    }
  }
  return { shape: [...x.shape.slice(0, -1), out], data: y };
}

/**
 * |a - e| <= rel · max|e| + 1e-6 per entry: both sides are f32 and sum in different orders (s is
 * applied to B before the product here, to B·A there; dV is an SDDMM here, a gathered dense gᵀ·x
 * there), so the error scales with the largest magnitude in the result, not with each entry.
 */
function closeToMax(a: ArrayLike<number>, e: ArrayLike<number>, rel: number, what: string) {
  let m = 0;
  for (let i = 0; i < e.length; i++) m = Math.max(m, Math.abs(e[i]));
  assertClose(a, e, { atol: rel * m + 1e-6, rtol: 0, what });
}

const layerArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 3 }),
  out: fc.integer({ min: 1, max: 24 }),
  inF: fc.integer({ min: 1, max: 24 }),
  r: fc.integer({ min: 1, max: 6 }),
  delta: fc.double({ min: 0.02, max: 0.98, noNaN: true }),
  s: fc.constantFrom(0.25, 1, 2, 4),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("sltrainLinear = dense composition (W = s·B·A + scatterToDense) in y and every gradient", async () => {
  await fc.assert(
    fc.asyncProperty(layerArb, async ({ lead, out, inF, r, delta, s, seed }) => {
      const idx = sampleSupport(out, inF, delta, seed);
      const I = u32(idx);
      const ps = [
        randomArr([...lead, inF], seed),
        randomArr([out, r], seed + 1, -1, 1),
        randomArr([r, inF], seed + 2, -1, 1),
        randomArr([idx.length], seed + 3, -1, 1),
      ].map(toTensor);
      const w = toTensor(randomArr([...lead, out], seed + 4, -1, 1));
      const loss = (f: typeof sltrainLinear) => ([x, B, A, V]: Tensor[]) =>
        sum(mul(f(x, B, A, V, I, s), w));
      const a = valueAndGrad(loss(sltrainLinear))(ps);
      const d = valueAndGrad(loss(denseEquivalent))(ps);
      const got = await readAll([a.value, ...a.grads, d.value, ...d.grads]);
      for (const t of [I, w, ...ps, a.value, ...a.grads, d.value, ...d.grads]) t.dispose();
      closeToMax(got[0], got[5], 1e-5, "loss");
      ["dx", "dB", "dA", "dV"].forEach((what, k) => closeToMax(got[1 + k], got[6 + k], 1e-5, what));
    }),
    FC,
  );
});

Deno.test("sltrainLinear: forward vs float64 and gradients (x, B, A, V) vs finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(
      layerArb.filter((c) => sizeOf(c.lead) * c.inF <= 64 && c.out * c.inF <= 96),
      async ({ lead, out, inF, r, delta, s, seed }) => {
        const idx = sampleSupport(out, inF, delta, seed);
        const I = u32(idx);
        await checkOp({
          op: ([x, B, A, V]) => sltrainLinear(x, B, A, V, I, s),
          ref: (ins) => sltrainRef(ins, idx, s),
          inputs: [
            randomArr([...lead, inF], seed),
            randomArr([out, r], seed + 1, -1, 1),
            randomArr([r, inF], seed + 2, -1, 1),
            randomArr([idx.length], seed + 3, -1, 1),
          ],
          // f32 forward of ≤ 24-term sums of values ≤ ~50: 1e-4 relative; gradients vs central
          // differences with h = 1e-4 in float64: 1e-3.
          fwd: { atol: 1e-4, rtol: 1e-4 },
          grad: { atol: 2e-3, rtol: 1e-3 },
        });
        I.dispose();
      },
    ),
    { ...FC, numRuns: 10 },
  );
});

Deno.test("sltrainLinear is one tape node and leaves nothing but y behind", () => {
  const idx = sampleSupport(12, 10, 0.2, 3);
  const [x, B, A, V] = [[2, 5, 10], [12, 4], [4, 10], [idx.length]].map((sh, k) =>
    toTensor(randomArr(sh, k + 1))
  );
  const I = u32(idx);
  const before = memoryStats().liveBytes;
  const tape = new Tape();
  tape.watch(x, B, A, V);
  const y = tape.run(() => sltrainLinear(x, B, A, V, I, 0.5));
  assert.equal(tape.size, 1);
  assert.deepEqual(y.shape, [2, 5, 12]);
  assert.equal(memoryStats().liveBytes, before + 4 * y.size);
  tape.dispose();
  for (const t of [x, B, A, V, I, y]) t.dispose();
});

Deno.test("lowRankLinear = s·(x·Aᵀ)·Bᵀ with f32 or bf16 factors, forward and gradients vs finite differences", async () => {
  await fc.assert(
    fc.asyncProperty(
      layerArb.filter((c) => sizeOf(c.lead) * c.inF <= 64 && c.out * c.inF <= 96),
      fc.boolean(),
      async ({ lead, out, inF, r, s, seed }, bf16) => {
        const p = bf16 ? "bf16" : "f32";
        await checkOp({
          op: ([x, B, A]) => lowRankLinear(x, B, A, s),
          ref: ([x, B, A]) =>
            sltrainRef([x, B, A, { shape: [0], data: new Float64Array() }], new Uint32Array(), s),
          inputs: [
            randomArr([...lead, inF], seed),
            randomArr([out, r], seed + 1, -1, 1),
            randomArr([r, inF], seed + 2, -1, 1),
          ],
          dtypes: ["f32", p, p],
          fwd: { atol: 1e-4, rtol: 1e-4 },
          grad: bf16 ? { atol: 2e-2, rtol: 1e-2 } : { atol: 2e-3, rtol: 1e-3 },
        });
      },
    ),
    { ...FC, numRuns: 8 },
  );
});

// ---------------------------------------------------------------------------------------------
// sampleSupport

Deno.test("sampleSupport: exact count, sorted, unique, in range, deterministic per seed", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 300 }),
      fc.integer({ min: 1, max: 300 }),
      fc.double({ min: 1e-3, max: 0.999, noNaN: true }),
      fc.integer({ min: 0, max: 2 ** 40 }),
      (out, inF, delta, seed) => {
        const n = out * inF;
        const idx = sampleSupport(out, inF, delta, seed);
        assert.equal(idx.length, Math.floor(delta * n));
        for (let k = 1; k < idx.length; k++) assert.ok(idx[k - 1] < idx[k], "strictly increasing");
        if (idx.length > 0) assert.ok(idx[idx.length - 1] < n);
        assert.deepEqual(sampleSupport(out, inF, delta, seed), idx);
        // Two seeds collide with probability 1 / C(n, nnz); only assert where that is < 1e-9.
        const k = Math.min(idx.length, n - idx.length);
        if (n >= 64 && k >= 8) assert.notDeepEqual(sampleSupport(out, inF, delta, seed + 1), idx);
      },
    ),
    { numRuns: 200, seed: 42 },
  );
});

Deno.test("sampleSupport: row and column counts are uniform (chi-square, both density branches)", () => {
  for (const delta of [0.1, 0.75]) {
    const [out, inF, seeds] = [48, 40, 40];
    const rows = new Float64Array(out), cols = new Float64Array(inF);
    let total = 0;
    for (let seed = 0; seed < seeds; seed++) {
      for (const j of sampleSupport(out, inF, delta, seed)) {
        rows[Math.floor(j / inF)]++;
        cols[j % inF]++;
        total++;
      }
    }
    // Without replacement the counts vary less than multinomial ones, so chi² ≈ (1 - δ)·df; 2·df
    // is > 8 standard deviations of a true chi²(df), while any row/column bias of a few % fails.
    for (const [counts, df] of [[rows, out - 1], [cols, inF - 1]] as const) {
      const e = total / counts.length;
      const chi2 = counts.reduce((acc, c) => acc + (c - e) ** 2 / e, 0);
      assert.ok(chi2 < 2 * df, `delta ${delta}: chi² ${chi2.toFixed(1)} >= ${2 * df}`);
    }
  }
});

Deno.test("sampleSupport at LLaMA-7B MLP scale (11008 × 4096, δ = 0.05) without an O(out·in) buffer", () => {
  const idx = sampleSupport(11008, 4096, 0.05, 7);
  assert.equal(idx.length, Math.floor(0.05 * 11008 * 4096));
  for (let k = 1; k < idx.length; k++) if (!(idx[k - 1] < idx[k])) assert.fail(`unsorted at ${k}`);
  assert.ok(idx[idx.length - 1] < 11008 * 4096);
});

Deno.test("sampleSupport: bad arguments throw RangeError", () => {
  for (const [o, i, d] of [[10, 10, 0], [10, 10, 1], [10, 10, -0.1], [10, 10, NaN], [0, 5, 0.1]]) {
    assert.throws(() => sampleSupport(o, i, d, 1), RangeError);
  }
  assert.throws(() => sampleSupport(1.5, 5, 0.1, 1), RangeError);
  assert.throws(() => sampleSupport(2 ** 17, 2 ** 16, 0.1, 1), /u32/);
});

// ---------------------------------------------------------------------------------------------
// memory

/**
 * Peak live bytes of one valueAndGrad of sum(y·w) above the steady state (inputs and w live).
 * Gradients are kept until the peak is read, then everything is freed and must return to `before`.
 */
function peakOf(f: typeof sltrainLinear, ins: Tensor[], I: Tensor, s: number, w: Tensor): number {
  const before = memoryStats().liveBytes;
  resetPeakBytes();
  const { value, grads } = valueAndGrad(([x, B, A, V]: Tensor[]) =>
    sum(mul(f(x, B, A, V, I, s), w))
  )(ins);
  const peak = memoryStats().peakBytes - before;
  for (const t of [value, ...grads]) t.dispose();
  assert.equal(memoryStats().liveBytes, before, "no tensor left behind");
  return peak;
}

Deno.test("memory: SLTrain forward+backward peak <= one dense W + O(tokens·(in+out)) + params; dense path exceeds it", () => {
  for (
    const [lead, out, inF, r, delta] of [
      [[2, 8], 256, 192, 16, 0.05], // weight-dominated: 16 tokens
      [[4, 96], 64, 48, 8, 0.1], // activation-dominated: 384 tokens
    ] as const
  ) {
    const T = sizeOf(lead);
    const idx = sampleSupport(out, inF, delta, 1);
    const I = u32(idx);
    const ins = [[...lead, inF], [out, r], [r, inF], [idx.length]].map((sh, k) =>
      toTensor(randomArr(sh, k + 1, -1, 1))
    );
    const w = toTensor(randomArr([...lead, out], 9));
    const params = out * r + r * inF + idx.length;
    const slt = peakOf(sltrainLinear, ins, I, 0.5, w);
    const dense = peakOf(denseEquivalent, ins, I, 0.5, w);
    for (const t of [I, w, ...ins]) t.dispose();
    // c = 4, i.e. room for 4·(in+out)·T floats of activations. What is live at the peak (measured):
    // - weight-dominated case: the transient W plus three y-sized tensors (y, the incoming g, and
    //   the factored path's SDDMM); the dense path holds W or dW, never both;
    // - activation-dominated case: five y-sized tensors inside the loss's own mul VJP (y, y·w,
    //   ∂/∂(y·w), ∂/∂y, ∂/∂w), before the op's VJP even runs; the op's VJP peaks lower (y, g, dx
    //   and the transient W or dW).
    // 4·params covers the returned dB, dA, dV and the out×r scaled copy of B.
    const bound = 4 * out * inF + 4 * 4 * T * (inF + out) + 4 * params;
    console.log(
      `  [${lead}]×${inF}→${out} r=${r} δ=${delta}: SLTrain peak ${slt} B, bound ${bound} B, ` +
        `dense W ${4 * out * inF} B; dense-composition peak ${dense} B`,
    );
    assert.ok(slt <= bound, `SLTrain peak ${slt} > bound ${bound}`);
    // The composition keeps B·A, s·B·A, the scattered S and W (4 dense matrices) on the tape and
    // then builds dense gradients of each: at least 2 more dense matrices than SLTrain at any T.
    assert.ok(dense > slt + 2 * 4 * out * inF, `dense peak ${dense} vs SLTrain ${slt}`);
  }
});

// ---------------------------------------------------------------------------------------------
// errors

Deno.test("sltrainLinear / lowRankLinear: bad shapes, dtypes and scales throw naming the op", () => {
  const t = (shape: number[], dtype: "f32" | "u32" | "i32" = "f32") =>
    tensor(new Array(sizeOf(shape)).fill(0), shape, dtype);
  const [x, B, A, V, I] = [t([3, 8]), t([6, 2]), t([2, 8]), t([5]), t([5], "u32")];
  const bad = {
    x37: t([3, 7]),
    B63: t([6, 3]),
    B6: t([6]),
    A281: t([2, 8, 1]),
    V4: t([4]),
    V51: t([5, 1]),
    I51: t([5, 1], "u32"),
    Ii32: t([5], "i32"),
    Vu32: t([5], "u32"),
    xi32: t([3, 8], "i32"),
    Ai32: t([2, 8], "i32"),
  };
  const cases: [() => unknown, typeof ShapeError | typeof DTypeError | typeof RangeError][] = [
    [() => sltrainLinear(bad.x37, B, A, V, I, 1), ShapeError], // x's in mismatch
    [() => sltrainLinear(x, bad.B63, A, V, I, 1), ShapeError], // rank mismatch
    [() => sltrainLinear(x, bad.B6, A, V, I, 1), ShapeError], // B not 2-D
    [() => sltrainLinear(x, B, bad.A281, V, I, 1), ShapeError], // A not 2-D
    [() => sltrainLinear(x, B, A, bad.V4, I, 1), ShapeError], // V/I lengths
    [() => sltrainLinear(x, B, A, bad.V51, bad.I51, 1), ShapeError], // not 1-D
    [() => sltrainLinear(x, B, A, V, bad.Ii32, 1), DTypeError], // I not u32
    [() => sltrainLinear(x, B, A, bad.Vu32, I, 1), DTypeError], // V not f32
    [() => sltrainLinear(bad.xi32, B, A, V, I, 1), DTypeError], // x not f32
    [() => sltrainLinear(x, B, A, V, I, NaN), RangeError],
    [() => lowRankLinear(bad.x37, B, A, 1), ShapeError],
    [() => lowRankLinear(x, bad.B63, A, 1), ShapeError],
    [() => lowRankLinear(x, B, bad.Ai32, 1), DTypeError],
    [() => lowRankLinear(x, B, A, Infinity), RangeError],
  ];
  const live = memoryStats().liveBytes;
  for (const [f, E] of cases) {
    assert.throws(
      f,
      (e: Error) => e instanceof E && /(sltrainLinear|lowRankLinear)/.test(e.message),
    );
  }
  // Validation happens before any allocation.
  assert.equal(memoryStats().liveBytes, live);
  const err = (() => {
    try {
      sltrainLinear(bad.x37, B, A, V, I, 1);
    } catch (e) {
      return (e as Error).message;
    }
  })();
  assert.match(err!, /\[3, 7\].*\[6, 2\].*\[2, 8\]/);
  for (const u of [x, B, A, V, I, ...Object.values(bad)]) u.dispose();
});

// ---------------------------------------------------------------------------------------------
// paths, bf16 factors and weights over one binding

const pathArb = fc.record({
  t: fc.integer({ min: 1, max: 6 }),
  out: fc.constantFrom(8, 24, 40),
  delta: fc.double({ min: 0.05, max: 0.5, noNaN: true }),
  s: fc.constantFrom(0.5, 2),
  path: fc.constantFrom("dense" as const, "factored" as const),
  bf16: fc.boolean(),
  small: fc.boolean(),
  keepWeight: fc.boolean(),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("sltrainLinear: both paths, with f32 or bf16 B, A, V and with W built in row blocks, match float64 and finite differences", async () => {
  const [inF, r] = [16, 8];
  await fc.assert(
    fc.asyncProperty(pathArb, async ({ t, out, delta, s, path, bf16, small, keepWeight, seed }) => {
      const idx = sampleSupport(out, inF, delta, seed);
      const I = u32(idx);
      const p = bf16 ? "bf16" : "f32";
      // One aligned group of W's rows per block (and of B's rows): blocks of 8 or 16 rows.
      const window = alignedRowsBytes(4 * inF) * (bf16 ? 4 : 2);
      const run = () =>
        checkOp({
          op: ([x, B, A, V]) => sltrainLinear(x, B, A, V, I, s, { path, keepWeight }),
          ref: (ins) => sltrainRef(ins, idx, s),
          inputs: [
            randomArr([t, inF], seed),
            randomArr([out, r], seed + 1, -1, 1),
            randomArr([r, inF], seed + 2, -1, 1),
            randomArr([idx.length], seed + 3, -1, 1),
          ],
          dtypes: ["f32", p, p, p],
          fwd: { atol: 1e-4, rtol: 1e-4 },
          grad: bf16 ? { atol: 2e-2, rtol: 1e-2 } : { atol: 2e-3, rtol: 1e-3 },
        });
      await (small ? withWindowBytes(window, run) : run());
      I.dispose();
    }),
    { ...FC, numRuns: 12 },
  );
});

Deno.test("sltrainLinear keepWeight: the W kept from forward gives the rebuilt W's gradients bit for bit, and the tape frees it", async () => {
  const [T, out, inF, r] = [96, 40, 24, 8];
  const idx = sampleSupport(out, inF, 0.1, 3);
  const I = u32(idx);
  const ins = [[T, inF], [out, r], [r, inF], [idx.length]].map((sh, k) =>
    toTensor(randomArr(sh, k + 11, -1, 1))
  );
  const grads = async (keepWeight: boolean) => {
    const live = memoryStats().liveBytes;
    const { value, grads } = valueAndGrad((p: Tensor[]) =>
      sum(sltrainLinear(p[0], p[1], p[2], p[3], I, 0.5, { path: "dense", keepWeight }))
    )(ins);
    value.dispose();
    const data = await readAll(grads);
    for (const g of grads) g.dispose();
    assert.equal(memoryStats().liveBytes, live, "nothing left behind");
    return data;
  };
  assert.deepEqual(await grads(true), await grads(false));
  for (const t of [I, ...ins]) t.dispose();
});

Deno.test("sltrainLinear: auto takes the path with fewer FLOPs (factored iff T·(in + out) < out·in)", () => {
  assert.equal(sltrainPath(256, 11008, 4096), "factored"); // 7B MLP, a batch of one
  assert.equal(sltrainPath(128, 352, 128), "dense"); // tiny, 4×32 tokens
  assert.equal(sltrainPath(1024, 688, 256), "dense"); // small, 8×128 tokens
  assert.equal(sltrainPath(2048, 1376, 512), "dense"); // 60M, 8×256 tokens
});
