import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { readAll, tensor } from "../core/tensor.ts";
import { type Arr, assertClose, checkOp, FC, randomArr, setup } from "./util.ts";

await setup();

/** Float64 (log-)softmax over the last axis. */
function softmaxRef(a: Arr, log: boolean): Arr {
  const d = a.shape[a.shape.length - 1];
  const out = new Float64Array(a.data.length);
  for (let base = 0; base < a.data.length; base += d) {
    let m = -Infinity;
    for (let j = 0; j < d; j++) m = Math.max(m, a.data[base + j]);
    let s = 0;
    for (let j = 0; j < d; j++) s += Math.exp(a.data[base + j] - m);
    for (let j = 0; j < d; j++) {
      const z = a.data[base + j] - m;
      out[base + j] = log ? z - Math.log(s) : Math.exp(z) / s;
    }
  }
  return { shape: a.shape, data: out };
}

// Ranks 1-4, last axis 1..70 (odd sizes, non-multiples of 4/8/64, one-element rows).
const caseArb = fc.record({
  lead: fc.array(fc.integer({ min: 1, max: 5 }), { minLength: 0, maxLength: 3 }),
  d: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 60, max: 70 })),
  seed: fc.integer({ min: 1, max: 1e6 }),
  scale: fc.constantFrom(1, 4),
});

for (
  const [name, op, log] of [["softmax", o.softmax, false], [
    "logSoftmax",
    o.logSoftmax,
    true,
  ]] as const
) {
  Deno.test(`${name}: random shapes match float64 reference (atol 1e-5, rtol 1e-4) and finite differences (2e-3)`, async () => {
    await fc.assert(
      fc.asyncProperty(caseArb, async ({ lead, d, seed, scale }) => {
        await checkOp({
          op: ([x]) => op(x),
          ref: ([a]) => softmaxRef(a, log),
          inputs: [randomArr([...lead, d], seed, -2 * scale, 2 * scale)],
          grad: { atol: 2e-3, rtol: 2e-3 },
        });
      }),
      { ...FC, numRuns: 12 },
    );
  });

  Deno.test(`${name}: extreme logits (±80, ±1e4) and 32000-long rows stay finite and accurate`, async () => {
    const cases = [
      randomArr([3, 17], 5, -80, 80),
      randomArr([2, 9], 6, -1e4, 1e4),
      randomArr([2, 32000], 7, -30, 30),
    ];
    const ts = cases.map((c) => tensor(Float32Array.from(c.data), c.shape));
    const ys = ts.map((t) => op(t));
    const got = await readAll(ys);
    cases.forEach((c, i) => {
      assert.ok(got[i].every(Number.isFinite), `${name}: non-finite output for case ${i}`);
      // logSoftmax of ±1e4 logits has values ~ -2e4, so its absolute error scales with them.
      assertClose(got[i], softmaxRef(c, log).data, {
        atol: log ? 1e-6 * 2e4 : 1e-6,
        rtol: 1e-5,
        what: `case ${i}`,
      });
    });
    for (const t of [...ts, ...ys]) t.dispose();
  });
}

Deno.test("softmax: rows sum to 1 on a 1-element row and a single row", async () => {
  const a = tensor([[3]]);
  const b = tensor([1, 2, 3, 4, 5]);
  const [ya, yb] = await readAll([o.softmax(a), o.softmax(b)]);
  assert.equal(ya[0], 1);
  assertClose([Array.from(yb).reduce((s, v) => s + v, 0)], [1], { atol: 1e-6 });
});

Deno.test("softmax, logSoftmax: bad inputs throw the specific error", () => {
  const i = tensor([1, 2], [2], "i32");
  const s = tensor([1], []);
  assert.throws(() => o.softmax(i), DTypeError);
  assert.throws(() => o.logSoftmax(i), DTypeError);
  assert.throws(() => o.softmax(s), ShapeError);
  assert.throws(() => o.logSoftmax(s), ShapeError);
});
