import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { sizeOf } from "../core/shape.ts";
import { type Arr, assertClose, checkOp, FC, randomArr, setup } from "./util.ts";

await setup();

type Reduction = "mean" | "sum" | "none";

/** Float64 cross-entropy with an ignore index (mean over non-ignored; 0 if all are ignored). */
function ceRef(x: Arr, targets: number[], reduction: Reduction, ignore = -100): Arr {
  const v = x.shape[x.shape.length - 1];
  const rows = targets.length;
  const per = new Float64Array(rows);
  let count = 0;
  for (let r = 0; r < rows; r++) {
    if (targets[r] === ignore) continue;
    count++;
    let m = -Infinity;
    for (let j = 0; j < v; j++) m = Math.max(m, x.data[r * v + j]);
    let s = 0;
    for (let j = 0; j < v; j++) s += Math.exp(x.data[r * v + j] - m);
    per[r] = m + Math.log(s) - x.data[r * v + targets[r]];
  }
  if (reduction === "none") return { shape: x.shape.slice(0, -1), data: per };
  const total = per.reduce((a, b) => a + b, 0);
  return {
    shape: [],
    data: Float64Array.of(reduction === "sum" ? total : count ? total / count : 0),
  };
}

function randomTargets(
  n: number,
  v: number,
  seed: number,
  ignoreProb: number,
  ignore = -100,
): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) >>> 0;
    const u = (s >>> 8) / 2 ** 24;
    return u < ignoreProb ? ignore : Math.floor((u - ignoreProb) / (1 - ignoreProb) * v) % v;
  });
}

// Leading shapes of rank 1-2 (so [N, V] and [B, T, V]), V odd / tiny / not a multiple of 16,
// about a third of the targets ignored, logits up to ±8.
const caseArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 2 }),
  v: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 15, max: 37 })),
  reduction: fc.constantFrom("mean" as const, "sum" as const, "none" as const),
  ignoreProb: fc.constantFrom(0, 0.3),
  ignoreIndex: fc.constantFrom(-100, 0),
  dtype: fc.constantFrom("i32" as const, "u32" as const),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("crossEntropy: mean/sum/none with ignored targets match float64 reference (atol 1e-5, rtol 1e-4) and finite differences (2e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(
      caseArb,
      async ({ lead, v, reduction, ignoreProb, ignoreIndex, dtype, seed }) => {
        // u32 targets cannot hold -100; use ignoreIndex 0 for them.
        const ignore = dtype === "u32" ? 0 : ignoreIndex;
        const targets = randomTargets(sizeOf(lead), v, seed, ignoreProb, ignore);
        const tT = tensor(targets, lead, dtype);
        await checkOp({
          op: ([x]) => o.crossEntropy(x, tT, { reduction, ignoreIndex: ignore }),
          ref: ([x]) => ceRef(x, targets, reduction, ignore),
          inputs: [randomArr([...lead, v], seed, -8, 8)],
          grad: { atol: 2e-3, rtol: 2e-3 },
        });
        tT.dispose();
      },
    ),
    { ...FC, numRuns: 20 },
  );
});

Deno.test("crossEntropy: all targets ignored gives loss 0 and zero gradient (not NaN); countTargets counts on the GPU", async () => {
  const x = tensor(Float32Array.from(randomArr([4, 5], 1).data), [4, 5]);
  const t = tensor([-100, -100, -100, -100], [4], "i32");
  const f = valueAndGrad((l: Tensor) => o.crossEntropy(l, t));
  const { value, grads } = f(x);
  const some = tensor([1, -100, 4, -100], [4], "i32");
  const counts = [
    o.countTargets(t),
    o.countTargets(some),
    o.countTargets(some, { ignoreIndex: 4 }),
  ];
  const [vd, gd, ...cd] = await readAll([value, grads, ...counts]);
  assert.equal(vd[0], 0);
  assert.ok(gd.every((g) => g === 0));
  assert.deepEqual(cd.map((c) => c[0]), [0, 2, 3]);
  for (const tt of [x, t, some, value, grads, ...counts]) tt.dispose();
});

Deno.test("crossEntropy: extreme logits (±80, ±1e4) and a 32000-class row are stable and accurate", async () => {
  const cases: [Arr, number[]][] = [
    [randomArr([5, 11], 2, -80, 80), [0, 3, 10, -100, 7]],
    [randomArr([3, 6], 3, -1e4, 1e4), [1, 5, 2]],
    [randomArr([2, 32000], 4, -20, 20), [31999, 12345]],
  ];
  const xs = cases.map(([a]) => tensor(Float32Array.from(a.data), a.shape));
  const ts = cases.map(([, t]) => tensor(t, [t.length], "i32"));
  const outs: Tensor[] = [];
  xs.forEach((x, i) => {
    const f = valueAndGrad((l: Tensor) => o.crossEntropy(l, ts[i], { reduction: "sum" }));
    const { value, grads } = f(x);
    outs.push(value, grads, o.crossEntropy(x, ts[i], { reduction: "none" }));
  });
  const got = await readAll(outs);
  cases.forEach(([a, t], i) => {
    const [sum, grad, per] = got.slice(3 * i, 3 * i + 3);
    assert.ok(grad.every(Number.isFinite), `case ${i}: non-finite gradient`);
    // Losses of ±1e4 logits are ~1e4: their f32 rounding alone is ~1e-3.
    const tol = { atol: i === 1 ? 5e-3 : 1e-4, rtol: 1e-5 };
    assertClose(sum, ceRef(a, t, "sum").data, { ...tol, what: `case ${i} sum` });
    assertClose(per, ceRef(a, t, "none").data, { ...tol, what: `case ${i} none` });
    // Gradient rows are softmax - onehot: each sums to 0.
    const v = a.shape[1];
    for (let r = 0; r < t.length; r++) {
      const s = Array.from(grad.subarray(r * v, (r + 1) * v)).reduce((p, q) => p + q, 0);
      assertClose([s], [0], { atol: 1e-5, what: `case ${i} row ${r} gradient sum` });
    }
  });
  for (const tt of [...xs, ...ts, ...outs]) tt.dispose();
});

Deno.test("crossEntropy: a target outside [0, V) that is not ignored makes the loss NaN", async () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  const [a, b] = await readAll([
    o.crossEntropy(x, tensor([1, 3], [2], "i32")),
    o.crossEntropy(x, tensor([-5, 0], [2], "i32")),
  ]);
  assert.ok(Number.isNaN(a[0]) && Number.isNaN(b[0]));
});

Deno.test("crossEntropy: bad inputs throw the specific error", () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  const t = tensor([0, 1], [2], "i32");
  assert.throws(() => o.crossEntropy(x, tensor([0, 1])), DTypeError);
  assert.throws(
    () => o.crossEntropy(tensor([[1, 2]], [1, 2], "i32"), tensor([0], [1], "i32")),
    DTypeError,
  );
  assert.throws(() => o.crossEntropy(x, tensor([0, 1, 2], [3], "i32")), ShapeError);
  assert.throws(() => o.crossEntropy(x, tensor([[0, 1]], [1, 2], "i32")), ShapeError);
  assert.throws(() => o.crossEntropy(x, t, { reduction: "avg" as "mean" }), ShapeError);
  assert.throws(() => o.crossEntropy(x, t, { ignoreIndex: 0.5 }), ShapeError);
  assert.throws(() => o.countTargets(tensor([0, 1])), DTypeError);
});
