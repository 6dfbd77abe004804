/** The ledger of device allocations: what the device holds, beside what tensors request. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { emptyPool, memoryStats, resetPeakBytes, sizeClass } from "../core/memory.ts";
import { sync } from "../core/kernel.ts";
import { deviceInfo } from "../core/device.ts";
import { randomNormal, tensor } from "../core/tensor.ts";
import { add, matmul } from "../ops/mod.ts";
import { setMatmulTextureThreshold } from "../ops/matmul.ts";
import { FC, setup } from "./util.ts";

await setup();

Deno.test("size classes: never smaller than the request, at most 25% slack, 1/32 from 1 MiB", () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (bytes) => {
      const c = sizeClass(bytes);
      assert.ok(c >= bytes && c % 16 === 0);
      const slack = (c - bytes) / bytes;
      if (bytes > 65536) assert.ok(slack <= (bytes >= 2 ** 20 ? 1 / 32 : 1 / 4), `${bytes}→${c}`);
    }),
    { numRuns: 2000, seed: 42 },
  );
});

Deno.test("allocated bytes cover the requested bytes and return to baseline after release", async () => {
  await sync();
  emptyPool();
  const base = memoryStats();
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 1, max: 300_000 }), { minLength: 1, maxLength: 6 }),
      async (sizes) => {
        resetPeakBytes();
        const ts = sizes.map((n) => tensor(new Float32Array(n)));
        const sum = add(ts[0], ts[0]);
        const live = memoryStats();
        assert.ok(live.allocatedBytes - base.allocatedBytes >= live.liveBytes - base.liveBytes);
        assert.ok(live.allocatedPeak >= live.allocatedBytes);
        assert.ok(live.allocatedPeak - base.allocatedBytes >= live.peakBytes - base.liveBytes);
        // The uploads went through staging buffers, gone once submitted.
        await sum.data();
        assert.equal(memoryStats().allocatedByKind.staging, 0);
        for (const t of [...ts, sum]) t.dispose();
        const freed = memoryStats();
        assert.equal(freed.liveBytes, base.liveBytes);
        // Released tensors stay allocated, as the pool's free buffers, until the pool is emptied.
        assert.equal(freed.allocatedByKind.buffers, freed.reservedBytes);
        emptyPool();
        const after = memoryStats();
        assert.equal(after.allocatedByKind.buffers, base.allocatedByKind.buffers);
        assert.equal(
          after.allocatedBytes - after.allocatedByKind.uniforms,
          base.allocatedBytes - base.allocatedByKind.uniforms,
        );
      },
    ),
    FC,
  );
});

Deno.test("the matmul's texture cache is on the ledger", async () => {
  const prev = setMatmulTextureThreshold(0);
  try {
    const a = randomNormal([256, 256]), b = randomNormal([256, 256]);
    const before = memoryStats().allocatedByKind.textures;
    // One of the two goes through a texture: Aᵀ with subgroups, A without.
    const m1 = matmul(a, b, { transA: true }), m2 = matmul(a, b);
    const c = add(m1, m2);
    await c.data();
    const after = memoryStats();
    // Only on "cpu" adapters does A go through a texture; there it is counted at 16 B a texel.
    if (deviceInfo().kind === "cpu") assert.ok(after.allocatedByKind.textures > before);
    assert.equal(
      after.allocatedBytes,
      Object.values(after.allocatedByKind).reduce((s, v) => s + v, 0),
    );
    for (const t of [a, b, m1, m2, c]) t.dispose();
  } finally {
    setMatmulTextureThreshold(prev);
  }
});

Deno.test("the pool gives back its oldest free buffers beyond its budget", async () => {
  const before = memoryStats();
  // 24 distinct sizes of 4-8 MiB, each freed before the next is made: 140 MiB of free buffers
  // that no later request fits, against a budget of 64 MiB at these live bytes.
  for (let k = 0; k < 24; k++) {
    const t = tensor(new Float32Array((1 << 20) + k * 40_000));
    await t.data();
    t.dispose();
    const m = memoryStats();
    assert.ok(m.pooledBytes <= Math.max(64 * 2 ** 20, m.liveBytes / 8) + 8 * 2 ** 20);
    assert.equal(m.allocatedByKind.buffers, m.reservedBytes);
  }
  assert.equal(memoryStats().liveBytes, before.liveBytes);
});
