/** Non-finite flags computed on the device, and dispatches gated on them without a sync. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { gated } from "../core/kernel.ts";
import { readAll, tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { flagNonFinite } from "../ops/finite.ts";
import { axpbyInPlace, scaleInPlace } from "../optim/inplace.ts";
import { FC, setup } from "./util.ts";

await setup();

const special = fc.constantFrom(NaN, Infinity, -Infinity);

Deno.test("flagNonFinite marks its slot exactly when an f32 or bf16 tensor holds NaN or ±Inf", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom("f32", "bf16"),
      fc.integer({ min: 1, max: 300 }),
      fc.array(fc.tuple(fc.nat(), special), { maxLength: 3 }),
      fc.integer({ min: 0, max: 3 }),
      async (dtype, n, bad, slot) => {
        const v = Float32Array.from({ length: n }, (_, i) => (i % 7) * 1e30 - 3e30);
        for (const [at, x] of bad) v[at % n] = x;
        const x = tensor(v, [n], dtype as "f32" | "bf16");
        const flags = tensor(new Uint32Array([0, 0, 0, 7]), [4], "u32");
        flagNonFinite(x, flags, slot);
        const [f] = await readAll([flags]);
        const want = [0, 0, 0, 7];
        if (bad.length > 0) want[slot] = 1;
        assert.deepEqual([...f], want);
        tree.dispose([x, flags]);
      },
    ),
    FC,
  );
});

Deno.test("gated: dispatches run only when every flag is zero, decided on the GPU, across segments", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.boolean(), { minLength: 1, maxLength: 5 }),
      fc.constantFrom(1, 3, 1100),
      async (bad, rounds) => {
        const v = new Float32Array(40).map((_, i) => i - 20);
        const checked = bad.map((b) => tensor(new Float32Array([1, b ? NaN : 2]), [2]));
        const flags = zeros([bad.length], "u32");
        checked.forEach((c, i) => flagNonFinite(c, flags, i));
        let x = tensor(v, [40]);
        const y = tensor(new Float32Array(40).fill(1), [40]);
        // Recorded before the region and not yet submitted: the gate must see the flags final.
        await gated(flags.binding(), bad.length, () => {
          for (let r = 0; r < rounds; r++) x = axpbyInPlace(x, 1, y, 0.5);
          x = scaleInPlace(x, 2);
        });
        const [got] = await readAll([x]);
        const want = bad.some((b) => b) ? v : v.map((e) => 2 * (e + 0.5 * rounds));
        assert.deepEqual(got, want);
        tree.dispose([checked, flags, x, y]);
      },
    ),
    { numRuns: 12, seed: 3 },
  );
});
