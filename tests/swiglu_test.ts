import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatchStats } from "../core/kernel.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { type Arr, assertClose, checkOp, FC, randomArr, setup, toTensor } from "./util.ts";

await setup();

/** Float64 silu(gate) · up. */
function swigluRef(gate: Arr, up: Arr): Arr {
  return {
    shape: gate.shape,
    data: gate.data.map((a, i) => (a / (1 + Math.exp(-a))) * up.data[i]),
  };
}

// Sizes a multiple of 4 (the vec4 kernel) and not (scalar); values up to ±12, where a naive
// sigmoid's exp would be large.
const caseArb = fc.record({
  shape: fc.array(fc.integer({ min: 1, max: 7 }), { minLength: 1, maxLength: 3 }),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("swiglu: random shapes (vec4 and scalar kernels) match float64 (atol 1e-5, rtol 1e-4) and finite differences for gate and up (2e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(caseArb, async ({ shape, seed }) => {
      await checkOp({
        op: ([g, u]) => o.swiglu(g, u),
        ref: ([g, u]) => swigluRef(g, u),
        inputs: [randomArr(shape, seed, -12, 12), randomArr(shape, seed + 1)],
        grad: { atol: 2e-3, rtol: 2e-3 },
      });
    }),
    { ...FC, numRuns: 20 },
  );
});

Deno.test("swiglu equals mul(silu(gate), up) (the composition it replaces), forward and gradients, in fewer dispatches", async () => {
  for (const shape of [[4, 37, 88], [3, 5, 7]]) {
    const [g, u, w] = [1, 2, 3].map((s) => toTensor(randomArr(shape, s, -6, 6)));
    const run = (f: (a: Tensor, b: Tensor) => Tensor) => {
      const d0 = dispatchStats().dispatches;
      const r = valueAndGrad((p: Tensor[]) => o.sum(o.mul(f(p[0], p[1]), w)))([g, u]);
      return { ...r, dispatches: dispatchStats().dispatches - d0 };
    };
    const fused = run(o.swiglu);
    const ref = run((a, b) => o.mul(o.silu(a), b));
    const got = await readAll([fused.value, ...fused.grads, ref.value, ...ref.grads]);
    ["loss", "dgate", "dup"].forEach((name, i) => {
      assertClose(got[i], got[i + 3], { atol: 1e-5, rtol: 1e-5, what: `${shape}: ${name}` });
    });
    assert.equal(fused.dispatches + 3, ref.dispatches);
    for (const t of [g, u, w, fused.value, ...fused.grads, ref.value, ...ref.grads]) t.dispose();
  }
});

Deno.test("swiglu: bad inputs throw the specific error", () => {
  const a = tensor([[1, 2, 3]]);
  assert.throws(() => o.swiglu(a, tensor([1, 2, 3])), ShapeError);
  assert.throws(() => o.swiglu(a, tensor([[1, 2, 3]], [1, 3], "i32")), DTypeError);
  a.dispose();
});
