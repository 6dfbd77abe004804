/**
 * Weight refactorization: B·A unchanged and the factors balanced, per linear (property) and over
 * a whole SLTrain model (V and everything else untouched, old factors freed).
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { memoryStats } from "../core/memory.ts";
import { readAll } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { SLTrainLinearParams } from "../models/linear.ts";
import { blockLinears, initLlama, mapLinears } from "../models/llama.ts";
import { refactorFactors, refactorLlama } from "../models/refactor.ts";
import { toyConfig } from "./fixtures.ts";
import { assertClose, frob, mm, randomArr, setup, toTensor } from "./util.ts";

await setup();

Deno.test("refactorization leaves B·A unchanged within 1e-5 relative and balances the factors", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 12 }),
      fc.integer({ min: 12, max: 40 }),
      fc.integer({ min: 12, max: 40 }),
      fc.integer({ min: 1, max: 1e6 }),
      async (r, out, inp, seed) => {
        const b = randomArr([out, r], seed, -3, 3), a = randomArr([r, inp], seed + 1, -0.1, 0.1);
        const ba = mm(b.data, a.data, out, r, inp);
        const res = await refactorFactors(toTensor(b), toTensor(a));
        const [nb, na] = await readAll([res.b, res.a]);
        const diff = mm(nb, na, out, r, inp).map((x, i) => x - ba[i]);
        assert.ok(frob(diff) <= 1e-5 * frob(ba), `relative change ${frob(diff) / frob(ba)}`);
        // Balanced: B'ᵀB' = A'A'ᵀ = diag(s).
        const btb = mm(nb, nb, r, out, r, true), aat = mm(na, na, r, inp, r, false, true);
        btb.forEach((x, i) => assert.ok(Math.abs(x - aat[i]) <= 1e-4 * res.singularValues[0]));
        tree.dispose([res.a, res.b]);
      },
    ),
    { numRuns: 5, seed: 42 },
  );
});

Deno.test("refactorLlama: every block linear keeps B·A; V and the other params are untouched; the old factors are freed", async () => {
  const model = initLlama(toyConfig(20), {
    kind: "sltrain",
    rank: 4,
    delta: 0.1,
    alpha: 4,
    seed: 3,
  }, 7);
  // SLTrain starts at B = 0; draw B so that every product is a real rank-4 matrix.
  let seed = 100;
  const params = mapLinears(model.params, (lin) => {
    const { A, B, V } = lin as SLTrainLinearParams;
    B.dispose();
    return { A, B: toTensor(randomArr([...B.shape], seed++, -1, 1)), V };
  });
  const before = blockLinears(params).map((l) => l.params as SLTrainLinearParams);
  const product = async ({ A, B }: SLTrainLinearParams) => {
    const [a, b] = await readAll([A, B]);
    return mm(b, a, B.shape[0], B.shape[1], A.shape[1]);
  };
  const want = await Promise.all(before.map(product));
  const untouched = [params.embed, params.lmHead, params.finalNorm, ...before.map((l) => l.V)];
  const live = memoryStats().liveBytes;
  const next = await refactorLlama(model, params);
  assert.equal(memoryStats().liveBytes, live, "new factors replace the old, byte for byte");
  assert.ok(before.every((l) => l.A.isDisposed && l.B.isDisposed));
  const leaves = tree.flatten(next);
  assert.ok(untouched.every((t) => !t.isDisposed && leaves.includes(t)));
  const got = await Promise.all(
    blockLinears(next).map((l) => product(l.params as SLTrainLinearParams)),
  );
  got.forEach((g, i) =>
    assertClose(g, want[i], { atol: 1e-5 * frob(want[i]), rtol: 0, what: `linear ${i}` })
  );
  tree.dispose([next, model.buffers]);
});
