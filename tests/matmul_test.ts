import fc from "fast-check";
import assert from "node:assert/strict";
import {
  matmul,
  type MatmulFamily,
  setMatmulFamily,
  setMatmulSplitK,
  setMatmulTextureThreshold,
} from "../ops/mod.ts";
import { DeviceLimitError, DTypeError, ShapeError } from "../core/errors.ts";
import { deviceInfo } from "../core/device.ts";
import { startProfile, stopProfile } from "../core/kernel.ts";
import { memoryStats } from "../core/memory.ts";
import { sizeOf } from "../core/shape.ts";
import { readAll, tensor } from "../core/tensor.ts";
import {
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

/** Float64 op(A)·op(B), batched over leading dims with a 2-D operand shared across the batch. */
function matmulRef(a: Arr, b: Arr, tA: boolean, tB: boolean): Arr {
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, k] = tA ? [ac, ar] : [ar, ac];
  const n = tB ? br : bc;
  // Folded case: b 2-D and A not transposed multiplies A's last axis.
  if (b.shape.length === 2 && !tA && a.shape.length > 2) {
    const rows = sizeOf(a.shape.slice(0, -1));
    const r = matmulRef({ shape: [rows, k], data: a.data }, b, false, tB);
    return { shape: [...a.shape.slice(0, -1), n], data: r.data };
  }
  const lead = a.shape.length > 2 ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  const batch = sizeOf(lead);
  const out = new Float64Array(batch * m * n);
  const aStride = a.shape.length > 2 ? ar * ac : 0;
  const bStride = b.shape.length > 2 ? br * bc : 0;
  for (let z = 0; z < batch; z++) {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) {
          const av = a.data[z * aStride + (tA ? p * m + i : i * k + p)];
          const bv = b.data[z * bStride + (tB ? j * k + p : p * n + j)];
          s += av * bv;
        }
        out[(z * m + i) * n + j] = s;
      }
    }
  }
  return { shape: [...lead, m, n], data: out };
}

const dimArb = fc.oneof(fc.integer({ min: 1, max: 40 }), fc.constantFrom(1, 3, 4, 16, 17, 33));

const caseArb = fc.record({
  m: dimArb,
  n: dimArb,
  k: dimArb,
  tA: fc.boolean(),
  tB: fc.boolean(),
  // 0: plain 2-D; 1: batched both; 2: A shared; 3: B shared; 4: folded [b, t, k]·W
  mode: fc.integer({ min: 0, max: 4 }),
  batch: fc.integer({ min: 1, max: 3 }),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

type Case = typeof caseArb extends fc.Arbitrary<infer T> ? T : never;

function shapesFor(c: Case): { a: number[]; b: number[]; tA: boolean } {
  const a2 = c.tA ? [c.k, c.m] : [c.m, c.k];
  const b2 = c.tB ? [c.n, c.k] : [c.k, c.n];
  switch (c.mode) {
    case 1:
      return { a: [c.batch, ...a2], b: [c.batch, ...b2], tA: c.tA };
    case 2:
      return { a: a2, b: [c.batch, ...b2], tA: c.tA };
    case 3:
      return { a: [c.batch, ...a2], b: b2, tA: c.tA };
    case 4:
      return { a: [c.batch, c.m, c.k], b: b2, tA: false };
    default:
      return { a: a2, b: b2, tA: c.tA };
  }
}

/** Forward and both gradients of random cases against the float64 reference and finite differences. */
async function checkRandomCases(numRuns: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(caseArb, async (c) => {
      const { a, b, tA } = shapesFor(c);
      const A = randomArr(a, c.seed);
      const B = randomArr(b, c.seed + 1);
      await checkOp({
        op: ([x, y]) => matmul(x, y, { transA: tA, transB: c.tB }),
        ref: ([x, y]) => matmulRef(x, y, tA, c.tB),
        inputs: [A, B],
        // f32 accumulation over K <= 40 terms of magnitude <= 4.
        fwd: { atol: 1e-4, rtol: 1e-4 },
        grad: { atol: 2e-3, rtol: 2e-3 },
      });
    }),
    { ...FC, numRuns },
  );
}

Deno.test("matmul: every layout, ragged/batched/broadcast shapes: forward and both gradients", async () => {
  await checkRandomCases(40);
});

/**
 * Runs each case, checks it against the float64 reference and returns the dispatch counts per
 * kernel name (empty without timestamp queries).
 */
async function runCases(
  cases: readonly [number[], number[], boolean, boolean][],
  tol = { atol: 1e-4, rtol: 1e-4 },
): Promise<Map<string, number>> {
  const profiling = deviceInfo().timestamps;
  if (profiling) startProfile();
  try {
    for (const [as, bs, tA, tB] of cases) {
      const A = randomArr(as, sizeOf(as) + 3);
      const B = randomArr(bs, sizeOf(bs) + 5);
      const x = toTensor(A);
      const y = toTensor(B);
      const z = matmul(x, y, { transA: tA, transB: tB });
      const [got] = await readAll([z]);
      assertClose(got, matmulRef(A, B, tA, tB).data, {
        ...tol,
        what: `${as}${tA ? "ᵀ" : ""} · ${bs}${tB ? "ᵀ" : ""}`,
      });
      for (const t of [x, y, z]) t.dispose();
    }
    return new Map(profiling ? (await stopProfile()).map((e) => [e.name, e.count]) : []);
  } finally {
    if (profiling) await stopProfile();
  }
}

// [A shape, B shape, transA, transB]: vec4-able operands with M and N ragged against the tiles and
// the 8-lane workgroups, batched and shared operands, and K % 4 != 0 where the layout allows it
// (the K tail loads without broadcasts).
const subgroupCases: [number[], number[], boolean, boolean][] = [
  [[130, 64], [64, 129], false, false], // B not vec4-able: the A-sharing kernel
  [[130, 64], [64, 132], false, false],
  [[37, 40], [20, 40], false, true],
  [[1, 8], [8, 300], false, false],
  [[2, 33, 44], [2, 44, 16], false, false],
  [[33, 12], [3, 12, 8], false, false],
  [[3, 12, 8], [8, 7], false, false],
  [[13, 36], [13, 152], true, false],
  [[2, 7, 20], [2, 7, 4], true, false],
  [[64, 4], [64, 257], true, false],
  [[9, 8], [5, 9], true, true],
  [[8, 9], [5, 8], true, true],
];

Deno.test("matmul: the subgroup kernels (subgroups of 8) are the ones used, and match", async () => {
  const info = deviceInfo();
  const names = [...(await runCases(subgroupCases)).keys()];
  if (info.kind === "cpu" && info.subgroupSize === 8 && info.timestamps) {
    for (const l of ["NN", "NT", "TN", "TT"]) {
      assert.ok(names.includes(`matmul_${l}_sgB`), `matmul_${l}_sgB not in ${names}`);
    }
    assert.ok(names.includes("matmul_NN_sgA"), `matmul_NN_sgA not in ${names}`);
  }
});

Deno.test("matmul: every kernel family, forced, matches on random and edge shapes", async () => {
  const families: [MatmulFamily, string][] = [
    ["subgroupA", "sgA"],
    ["register", ""],
    ["workgroupMemory", "smem"],
  ];
  for (const [family, tag] of families) {
    const prev = setMatmulFamily(family);
    try {
      const names = [...(await runCases(subgroupCases)).keys()];
      const info = deviceInfo();
      if (tag && info.timestamps && (tag !== "sgA" || info.subgroupSize === 8)) {
        assert.ok(names.some((n) => n.endsWith(`_${tag}`)), `${family}: ${names}`);
      }
      await checkRandomCases(8);
    } finally {
      setMatmulFamily(prev);
    }
  }
});

Deno.test("matmul: split-K (Aᵀ·B with few outputs, long K) matches, gradients too", async () => {
  // Aim for 8 workgroups whatever this machine's core count: 8x8 and 40x24 outputs (one
  // workgroup each) over K = 2048 split 8 ways; K = 1030 does not split evenly past 2 parts; a
  // batched product never splits.
  const prev = setMatmulSplitK(8);
  try {
    const counts = await runCases([
      [[2048, 8], [2048, 8], true, false],
      [[2048, 40], [2048, 24], true, false],
      [[1030, 5], [1030, 3], true, false],
      [[2, 1024, 8], [2, 1024, 8], true, false],
    ], { atol: 1e-3, rtol: 1e-4 });
    if (deviceInfo().kind === "cpu" && deviceInfo().timestamps) {
      // The three 2-D cases split, each product followed by a sum over its K blocks.
      assert.equal(counts.get("sum"), 3, `${[...counts]}`);
    }
    await checkOp({
      op: ([x, y]) => matmul(x, y, { transA: true }),
      ref: ([x, y]) => matmulRef(x, y, true, false),
      inputs: [randomArr([1024, 4], 11), randomArr([1024, 4], 12)],
      fwd: { atol: 1e-3, rtol: 1e-4 },
      grad: { atol: 5e-2, rtol: 5e-3 },
    });
  } finally {
    setMatmulSplitK(prev);
  }
});

Deno.test("matmul: large skinny and tile-edge shapes match the float64 reference", async () => {
  const cases: [number, number, number, boolean, boolean][] = [
    [1, 1376, 512, false, true], // one token through a linear
    [1376, 8, 512, false, true], // d x r skinny
    [130, 129, 131, false, false],
    [64, 256, 3, true, false],
    [257, 64, 1, false, false],
    [70000, 4, 8, false, false], // more rows than workgroups per dimension: split along M
    [8, 70000, 4, false, true], // more columns than workgroups per dimension: split along N
  ];
  for (const [m, n, k, tA, tB] of cases) {
    const A = randomArr(tA ? [k, m] : [m, k], m + n);
    const B = randomArr(tB ? [n, k] : [k, n], m * n);
    const x = toTensor(A);
    const y = toTensor(B);
    const z = matmul(x, y, { transA: tA, transB: tB });
    const [got] = await readAll([z]);
    assertClose(got, matmulRef(A, B, tA, tB).data, {
      atol: 1e-3,
      rtol: 1e-4,
      what: `${m}x${n}x${k}`,
    });
    for (const t of [x, y, z]) t.dispose();
  }
});

Deno.test("matmul: the texture path for A (forced on) matches the float64 reference", async () => {
  const prev = setMatmulTextureThreshold(0);
  const prevKernel = setMatmulFamily("auto");
  try {
    // Untransposed A, in the register kernel (the path of adapters without subgroups). K = 64
    // packs one A row per texture row, K = 40 eight (with 37 rows, so a partial last texture row),
    // K = 44 sixteen, K = 1376 two; 17000 rows of K = 64 are over maxTextureDimension2D (16384 on
    // lavapipe) and need two rows per texture row.
    setMatmulFamily("register");
    const plain = await runCases([
      [[130, 64], [64, 129], false, false],
      [[37, 40], [40, 20], false, false],
      [[2, 33, 44], [2, 44, 17], false, false],
      [[33, 12], [3, 12, 9], false, false], // A shared across the batch
      [[3, 12, 8], [8, 7], false, false], // folded x[b, t, k] · W
      [[50, 1376], [20, 1376], false, true],
      [[2, 9, 16], [2, 11, 16], false, true],
      [[17000, 64], [64, 4], false, false],
      [[5, 6], [6, 7], false, false], // K % 4 != 0: not texturable, storage path
    ], { atol: 1e-3, rtol: 1e-4 });
    // Aᵀ (rows of K, M long), in the B-sharing kernel where the device has subgroups of 8:
    // batched, shared across the batch, a split-K product, and M % 4 != 0 (storage path).
    setMatmulFamily("auto");
    const transposed = await runCases([
      [[37, 44], [37, 16], true, false],
      [[2, 21, 8], [2, 21, 12], true, false],
      [[21, 8], [3, 21, 12], true, false],
      [[1024, 8], [1024, 8], true, false],
      [[40, 12], [7, 40], true, true],
      [[9, 6], [9, 8], true, false],
    ], { atol: 1e-3, rtol: 1e-4 });
    const info = deviceInfo();
    if (info.timestamps && info.kind === "cpu") {
      for (const n of ["matmul_NN_tex", "matmul_NT_tex"]) assert.ok(plain.has(n), `${[...plain]}`);
      if (info.subgroupSize === 8) {
        for (const n of ["matmul_TN_sgB_tex", "matmul_TT_sgB_tex"]) {
          assert.ok(transposed.has(n), `${[...transposed]}`);
        }
      }
    }
    // Gradients too: backward runs NN, NT and TN matmuls, which now take the texture paths.
    await checkRandomCases(12);
    setMatmulFamily("register");
    await checkRandomCases(12);
  } finally {
    setMatmulTextureThreshold(prev);
    setMatmulFamily(prevKernel);
  }
});

Deno.test("matmul: mismatched inner or batch dims and integer operands are specific errors", () => {
  const a = tensor([[1, 2, 3]]);
  const b = tensor([[1, 2]]);
  const c = tensor(new Float32Array(2 * 3 * 3), [2, 3, 3]);
  const d = tensor(new Float32Array(3 * 3 * 3), [3, 3, 3]);
  const i = tensor([[1, 2, 3]], [1, 3], "i32");
  const before = memoryStats().liveBytes;
  assert.throws(() => matmul(a, b), ShapeError);
  assert.throws(() => matmul(c, d), ShapeError);
  const v = tensor([1, 2, 3]);
  assert.throws(() => matmul(v, a), ShapeError);
  assert.throws(() => matmul(i, a, { transB: true }), DTypeError);
  assert.ok(memoryStats().liveBytes <= before + 12);
  for (const t of [a, b, c, d, i, v]) t.dispose();
});

Deno.test("matmul: bf16 operands (widened per dispatch) match the float64 reference on the rounded values; their gradients are bf16", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, fc.integer({ min: 1, max: 3 }), async (c, which) => {
      const { a, b, tA } = shapesFor(c);
      await checkOp({
        op: ([x, y]) => matmul(x, y, { transA: tA, transB: c.tB }),
        ref: ([x, y]) => matmulRef(x, y, tA, c.tB),
        inputs: [randomArr(a, c.seed), randomArr(b, c.seed + 1)],
        dtypes: [which & 1 ? "bf16" : "f32", which & 2 ? "bf16" : "f32"],
        fwd: { atol: 1e-4, rtol: 1e-4 },
        // A bf16 operand's gradient is rounded to bf16 (relative error <= 2^-9).
        grad: { atol: 2e-2, rtol: 1e-2 },
      });
    }),
    { ...FC, numRuns: 12 },
  );
});

// Every 2-D layout with products and operands over the (shrunk) binding: M, N and K are split into
// blocks, operand blocks cut as row windows or gathered columns, K blocks summed; with and without
// the texture path for A (which reads a window of A at its byte offset).
const windowCaseArb = fc.record({
  m: fc.constantFrom(16, 32, 64),
  ragged: fc.boolean(),
  n: fc.constantFrom(16, 32),
  k: fc.constantFrom(16, 32),
  tA: fc.boolean(),
  tB: fc.boolean(),
  bf16: fc.boolean(),
  texture: fc.boolean(),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("matmul: operands and products over one binding run in blocks and match the reference", async () => {
  await fc.assert(
    fc.asyncProperty(windowCaseArb, async (c) => {
      // A ragged M (not a whole number of aligned rows) where M indexes no transposed operand.
      const m = c.ragged && !c.tA ? c.m + 3 : c.m;
      const prev = setMatmulTextureThreshold(c.texture ? 0 : Infinity);
      const prevFamily = setMatmulFamily(c.texture ? "register" : "auto");
      try {
        // 2 KiB: every operand and product above 512 elements is split, and every aligned block
        // of these shapes still fits.
        await withWindowBytes(2048, () =>
          checkOp({
            op: ([x, y]) => matmul(x, y, { transA: c.tA, transB: c.tB }),
            ref: ([x, y]) => matmulRef(x, y, c.tA, c.tB),
            inputs: [
              randomArr(c.tA ? [c.k, m] : [m, c.k], c.seed),
              randomArr(c.tB ? [c.n, c.k] : [c.k, c.n], c.seed + 1),
            ],
            dtypes: c.bf16 ? ["bf16", "bf16"] : ["f32", "f32"],
            fwd: { atol: 1e-4, rtol: 1e-4 },
            grad: c.bf16 ? { atol: 2e-2, rtol: 1e-2 } : { atol: 2e-3, rtol: 2e-3 },
          }));
      } finally {
        setMatmulTextureThreshold(prev);
        setMatmulFamily(prevFamily);
      }
    }),
    { ...FC, numRuns: 12 },
  );
});

Deno.test("matmul: a batched product over one binding throws a DeviceLimitError naming the shapes and the limit", async () => {
  const b3 = toTensor(randomArr([2, 64, 64], 3));
  await withWindowBytes(4096, () => {
    assert.throws(() => matmul(b3, b3), (e: Error) =>
      e instanceof DeviceLimitError &&
      /matmul: \[2, 64, 64\] f32 · \[2, 64, 64\] f32 -> \[2, 64, 64\]: a batched/.test(e.message) &&
      /4096 bytes/.test(e.message));
    return Promise.resolve();
  });
  b3.dispose();
});
