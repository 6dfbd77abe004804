import fc from "fast-check";
import assert from "node:assert/strict";
import { matmul, setMatmulSubgroups, setMatmulTextureThreshold } from "../ops/mod.ts";
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

Deno.test("matmul: the subgroup kernel (subgroups of 8) is the one used, and matches", async () => {
  const info = deviceInfo();
  const sg = info.kind === "cpu" && info.subgroupSize === 8;
  const profiling = info.timestamps && sg;
  // [A shape, B shape, transA, transB]: A vec4-able (K % 4 == 0, or M % 4 == 0 for Aᵀ), M and N
  // ragged against the 16x16 tile and the 8-lane workgroup, batched and shared operands, and
  // Aᵀ with K % 4 != 0 (the K tail loads without broadcasts).
  const cases: [number[], number[], boolean, boolean][] = [
    [[130, 64], [64, 129], false, false],
    [[37, 40], [20, 40], false, true],
    [[1, 8], [8, 300], false, false],
    [[2, 33, 44], [2, 44, 17], false, false],
    [[33, 12], [3, 12, 9], false, false],
    [[3, 12, 8], [8, 7], false, false],
    [[13, 36], [13, 150], true, false],
    [[2, 7, 20], [2, 7, 3], true, false],
    [[64, 4], [64, 257], true, false],
    [[9, 8], [5, 9], true, true],
  ];
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
        atol: 1e-4,
        rtol: 1e-4,
        what: `${as}${tA ? "ᵀ" : ""} · ${bs}${tB ? "ᵀ" : ""}`,
      });
      for (const t of [x, y, z]) t.dispose();
    }
    if (profiling) {
      const names = (await stopProfile()).map((e) => e.name);
      for (const n of ["matmul_NN_sg", "matmul_NT_sg", "matmul_TN_sg", "matmul_TT_sg"]) {
        assert.ok(names.includes(n), `${n} not in ${names}`);
      }
    }
  } finally {
    if (profiling) await stopProfile();
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
  // The subgroup kernel, where the device has one, replaces the texture path: switch it off here.
  const prevSg = setMatmulSubgroups(false);
  const profiling = deviceInfo().timestamps;
  try {
    // [A shape, B shape, transB]. K = 64 packs one A row per texture row, K = 40 eight (with 37
    // rows, so a partial last texture row), K = 44 sixteen, K = 1376 two; 17000 rows of K = 64 are
    // over maxTextureDimension2D (16384 on lavapipe) and need two rows per texture row.
    const cases: [number[], number[], boolean][] = [
      [[130, 64], [64, 129], false],
      [[37, 40], [40, 20], false],
      [[2, 33, 44], [2, 44, 17], false],
      [[33, 12], [3, 12, 9], false], // A shared across the batch
      [[3, 12, 8], [8, 7], false], // folded x[b, t, k] · W
      [[50, 1376], [20, 1376], true],
      [[2, 9, 16], [2, 11, 16], true],
      [[17000, 64], [64, 4], false],
      [[5, 6], [6, 7], false], // K % 4 != 0: not texturable, storage path
    ];
    if (profiling) startProfile();
    for (const [as, bs, tB] of cases) {
      const A = randomArr(as, sizeOf(as));
      const B = randomArr(bs, sizeOf(bs) + 1);
      const x = toTensor(A);
      const y = toTensor(B);
      const z = matmul(x, y, { transB: tB });
      const [got] = await readAll([z]);
      assertClose(got, matmulRef(A, B, false, tB).data, {
        atol: 1e-3,
        rtol: 1e-4,
        what: `${as} · ${bs}${tB ? "ᵀ" : ""}`,
      });
      for (const t of [x, y, z]) t.dispose();
    }
    if (profiling && deviceInfo().kind === "cpu") {
      const names = (await stopProfile()).map((e) => e.name);
      assert.ok(names.includes("matmul_NN_tex") && names.includes("matmul_NT_tex"), `${names}`);
    }
    // Gradients too: backward runs NN and NT matmuls, which now take the texture path.
    await checkRandomCases(20);
  } finally {
    if (profiling) await stopProfile();
    setMatmulTextureThreshold(prev);
    setMatmulSubgroups(prevSg);
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
      const prevSg = setMatmulSubgroups(!c.texture);
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
        setMatmulSubgroups(prevSg);
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
