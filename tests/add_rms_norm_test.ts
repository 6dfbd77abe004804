import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatchStats } from "../core/kernel.ts";
import { memoryStats } from "../core/memory.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { type FusedTarget, setFusedTarget } from "../ops/fused_target.ts";
import { type Arr, assertClose, checkOp, FC, randomArr, setup, toTensor } from "./util.ts";

await setup();

/** Float64 x + y and RMSNorm(x + y) · w over the last axis. */
function addNormRef(x: Arr, y: Arr, w: Arr, eps: number): { sum: Arr; normed: Arr } {
  const d = w.shape[0];
  const h = x.data.map((v, i) => v + y.data[i]);
  const n = new Float64Array(h.length);
  for (let base = 0; base < h.length; base += d) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += h[base + j] ** 2;
    const r = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) n[base + j] = h[base + j] * r * w.data[j];
  }
  return { sum: { shape: x.shape, data: h }, normed: { shape: x.shape, data: n } };
}

// Which outputs the loss uses: both (the residual gradient is fused into the norm's backward),
// only the normed one, or only the sum.
type Use = "both" | "normed" | "sum";

function combine<T>(use: Use, sum: T, normed: T, both: (s: T, n: T) => T): T {
  return use === "both" ? both(sum, normed) : use === "sum" ? sum : normed;
}

// Leading shapes of rank 0-3, D scalar (odd) or vec4 (multiple of 4), small and around 64.
const caseArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 0, maxLength: 3 }),
  d: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.constantFrom(64, 67, 132)),
  eps: fc.constantFrom(1e-6, 1e-2),
  use: fc.constantFrom<Use>("both", "normed", "sum"),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

for (const target of ["auto", "gpu"] as FusedTarget[]) {
  const what = target === "auto"
    ? "the adapter's kernels"
    : "the one-workgroup-per-row GPU kernels";
  Deno.test(`addRmsNorm with ${what}: sum and normed match float64 (atol 1e-5, rtol 1e-4); gradients through either or both outputs match finite differences (2e-3)`, async () => {
    const prev = setFusedTarget(target);
    try {
      await fc.assert(
        fc.asyncProperty(caseArb, async ({ lead, d, eps, use, seed }) => {
          const shape = [...lead, d];
          // Both outputs enter the loss as sum · 0.7 + normed.
          await checkOp({
            op: ([x, y, w]) => {
              const r = o.addRmsNorm(x, y, w, eps);
              return combine(use, r.sum, r.normed, (s, n) => o.add(o.mulScalar(s, 0.7), n));
            },
            ref: ([x, y, w]) => {
              const r = addNormRef(x, y, w, eps);
              return combine(use, r.sum, r.normed, (s, n) => ({
                shape: s.shape,
                data: s.data.map((v, i) => 0.7 * v + n.data[i]),
              }));
            },
            inputs: [randomArr(shape, seed), randomArr(shape, seed + 1), randomArr([d], seed + 2)],
            grad: { atol: 2e-3, rtol: 2e-3 },
          });
        }),
        FC,
      );
    } finally {
      setFusedTarget(prev);
    }
  });
}

Deno.test("addRmsNorm equals add + rmsNorm (the composition it replaces), forward and gradients, in fewer dispatches", async () => {
  const shape = [3, 37, 128];
  const [x, y, z] = [1, 2, 3].map((s) => toTensor(randomArr(shape, s)));
  const w = toTensor(randomArr([128], 4, 0.5, 1.5));
  // The model's use: the sum feeds a later residual add, the normed value a sublayer.
  const lossOf = (f: (x: Tensor, y: Tensor, w: Tensor) => [Tensor, Tensor]) => {
    const d0 = dispatchStats().dispatches;
    const r = valueAndGrad((p: Tensor[]) => {
      const [s, n] = f(p[0], p[1], p[2]);
      return o.sum(o.mul(o.add(s, o.mul(n, z)), z));
    })([x, y, w]);
    return { ...r, dispatches: dispatchStats().dispatches - d0 };
  };
  const fused = lossOf((a, b, c) => {
    const r = o.addRmsNorm(a, b, c);
    return [r.sum, r.normed];
  });
  const ref = lossOf((a, b, c) => {
    const s = o.add(a, b);
    return [s, o.rmsNorm(s, c)];
  });
  const got = await readAll([fused.value, ...fused.grads, ref.value, ...ref.grads]);
  ["loss", "dx", "dy", "dw"].forEach((name, i) => {
    assertClose(got[i], got[i + 4], { atol: 1e-4, rtol: 1e-4, what: name });
  });
  assert.ok(
    fused.dispatches + 2 <= ref.dispatches,
    `${fused.dispatches} vs ${ref.dispatches} dispatches`,
  );
  for (const t of [x, y, z, w, fused.value, ...fused.grads, ref.value, ...ref.grads]) t.dispose();
});

Deno.test("addRmsNorm: bad inputs throw the specific error; no buffer left behind", async () => {
  const x = tensor([[1, 2, 3], [4, 5, 6]]);
  assert.throws(() => o.addRmsNorm(x, tensor([[1, 2, 3]]), tensor([1, 1, 1])), ShapeError);
  assert.throws(() => o.addRmsNorm(x, x, tensor([1, 1])), ShapeError);
  assert.throws(() => o.addRmsNorm(tensor([1], []), tensor([1], []), tensor([1])), ShapeError);
  assert.throws(() => o.addRmsNorm(x, x, tensor([1, 1, 1], [3], "i32")), DTypeError);
  assert.throws(() => o.addRmsNorm(x, x, tensor([1, 1, 1]), -1), ShapeError);
  const w = tensor([1, 2, 3]);
  await readAll([x]);
  const before = memoryStats().liveBuffers;
  const r = o.addRmsNorm(x, x, w);
  assert.equal(memoryStats().liveBuffers, before + 2);
  const g = valueAndGrad((p: Tensor[]) => {
    const { sum, normed } = o.addRmsNorm(p[0], p[0], p[1]);
    return o.sum(o.mul(sum, normed));
  })([x, w]);
  await readAll([r.sum, g.value, ...g.grads]);
  for (const t of [r.sum, r.normed, g.value, ...g.grads]) t.dispose();
  assert.equal(memoryStats().liveBuffers, before);
  x.dispose();
  w.dispose();
});
