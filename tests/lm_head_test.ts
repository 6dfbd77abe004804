import assert from "node:assert/strict";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { countTargets, crossEntropy } from "../ops/cross_entropy.ts";
import { lmHeadCrossEntropy, lmHeadLossSums } from "../ops/lm_head.ts";
import { matmul } from "../ops/matmul.ts";
import { type Arr, assertClose, checkOp, randomArr, setup, withWindowBytes } from "./util.ts";

await setup();

function targetsFor(n: number, v: number, seed: number, ignoreEvery = 4): Int32Array {
  let s = seed;
  return Int32Array.from({ length: n }, (_, i) => {
    s = (s * 1103515245 + 12345) >>> 0;
    return i % ignoreEvery === ignoreEvery - 1 ? -100 : (s >>> 8) % v;
  });
}

/** Float64 mean (or sum) cross-entropy of h·Wᵀ, for finite differences. */
function ref(h: Arr, w: Arr, tg: Int32Array, reduction: "mean" | "sum"): Arr {
  const [v, d] = w.shape;
  let total = 0, count = 0;
  const row = new Float64Array(v);
  tg.forEach((t, r) => {
    if (t === -100) return;
    for (let j = 0; j < v; j++) {
      let acc = 0;
      for (let k = 0; k < d; k++) acc += h.data[r * d + k] * w.data[j * d + k];
      row[j] = acc;
    }
    const m = Math.max(...row);
    const z = row.reduce((s, x) => s + Math.exp(x - m), 0);
    total += m + Math.log(z) - row[t];
    count++;
  });
  const value = reduction === "sum" ? total : count ? total / count : 0;
  return { shape: [], data: Float64Array.of(value) };
}

// 13 rows, 37 classes, D = 8 (32-byte rows of W, so blocks start on multiples of 8 rows):
// chunkBytes 740 allows 14 vocabulary rows per block, which gives blocks of 8, 8, 8, 8, 5 rows in
// forward (the online log-sum-exp) and backward, so every uneven edge is exercised.
const N = 13, D = 8, V = 37, CHUNK = 4 * V * 5;

for (const reduction of ["mean", "sum"] as const) {
  Deno.test(`lmHeadCrossEntropy (${reduction}): value and both gradients equal the unchunked crossEntropy(matmul) composition, [B, T, D] input`, async () => {
    const hv = randomArr([1, N, D], 1, -1.5, 1.5);
    const wv = randomArr([V, D], 2, -1.5, 1.5);
    const tg = tensor(targetsFor(N, V, 3), [1, N], "i32");
    const run = (f: (p: Tensor[]) => Tensor) => {
      const ps = [
        tensor(Float32Array.from(hv.data), hv.shape),
        tensor(Float32Array.from(wv.data), wv.shape),
      ];
      const { value, grads } = valueAndGrad(f)(ps);
      return [value, ...grads, ...ps];
    };
    const chunked = run(([h, w]) => lmHeadCrossEntropy(h, w, tg, { reduction, chunkBytes: CHUNK }));
    const plain = run(([h, w]) => crossEntropy(matmul(h, w, { transB: true }), tg, { reduction }));
    const whole = run(([h, w]) => lmHeadCrossEntropy(h, w, tg, { reduction }));
    const [c, p, [one]] = [
      await readAll(chunked.slice(0, 3)),
      await readAll(plain.slice(0, 3)),
      await readAll(whole.slice(0, 1)),
    ];
    for (const t of [...chunked, ...plain, ...whole, tg]) t.dispose();
    // One vocabulary block runs crossEntropy's passes in its order: the same loss to the bit.
    assert.equal(one[0], p[0][0]);
    assertClose(c[0], p[0], { atol: 1e-6, rtol: 1e-6, what: "loss" });
    assertClose(c[1], p[1], { atol: 1e-6, rtol: 1e-5, what: "dh" });
    assertClose(c[2], p[2], { atol: 1e-6, rtol: 1e-5, what: "dW" });
  });
}

for (const reduction of ["mean", "sum"] as const) {
  Deno.test(`lmHeadCrossEntropy (${reduction}): value and VJP match float64 finite differences (chunked)`, async () => {
    const tgData = targetsFor(N, V, 5);
    const tg = tensor(tgData, [N], "i32");
    await checkOp({
      op: ([h, w]) => lmHeadCrossEntropy(h, w, tg, { reduction, chunkBytes: CHUNK }),
      ref: ([h, w]) => ref(h, w, tgData, reduction),
      inputs: [randomArr([N, D], 6, -1, 1), randomArr([V, D], 7, -1, 1)],
      grad: { atol: 2e-4, rtol: 2e-3 },
    });
    tg.dispose();
  });
}

for (const dtype of ["f32", "bf16"] as const) {
  Deno.test(`lmHeadCrossEntropy: ${dtype} lmHead over several binding windows (views of W, dW written block by block) matches float64 finite differences`, async () => {
    const tgData = targetsFor(N, V, 17);
    const tg = tensor(tgData, [N], "i32");
    // 1 KiB windows: 4 rows of W (D = 64) per block, h and every product windowed too.
    await withWindowBytes(1024, () =>
      checkOp({
        op: ([h, w]) => lmHeadCrossEntropy(h, w, tg),
        ref: ([h, w]) => ref(h, w, tgData, "mean"),
        inputs: [randomArr([N, 64], 18, -0.5, 0.5), randomArr([V, 64], 19, -0.5, 0.5)],
        dtypes: ["f32", dtype],
        fwd: { atol: 1e-5, rtol: 1e-5 },
        grad: dtype === "bf16" ? { atol: 1e-3, rtol: 1e-2 } : { atol: 2e-4, rtol: 2e-3 },
      }));
    tg.dispose();
  });
}

Deno.test("lmHeadLossSums: sum and count equal crossEntropy(sum) and countTargets; all-ignored gives mean 0 and zero gradients", async () => {
  const h = tensor(Float32Array.from(randomArr([N, D], 8).data), [N, D]);
  const w = tensor(Float32Array.from(randomArr([V, D], 9).data), [V, D]);
  const tg = tensor(targetsFor(N, V, 10), [N], "i32");
  const { sum, count } = lmHeadLossSums(h, w, tg, { chunkBytes: CHUNK });
  const logits = matmul(h, w, { transB: true });
  const expSum = crossEntropy(logits, tg, { reduction: "sum" });
  const expCount = countTargets(tg);
  const none = tensor(new Int32Array(N).fill(-100), [N], "i32");
  const { value, grads } = valueAndGrad(([a, b]: Tensor[]) =>
    lmHeadCrossEntropy(a, b, none, { chunkBytes: CHUNK })
  )([h, w]);
  const [s, c, es, ec, v0, g0, g1] = await readAll([sum, count, expSum, expCount, value, ...grads]);
  for (const t of [sum, count, logits, expSum, expCount, none, value, ...grads, h, w, tg]) {
    t.dispose();
  }
  assertClose(s, es, { atol: 1e-5, rtol: 1e-6, what: "sum" });
  assert.equal(c[0], ec[0]);
  assert.equal(c[0], N - Math.floor(N / 4));
  assert.equal(v0[0], 0);
  assert.ok(g0.every((x) => x === 0) && g1.every((x) => x === 0), "zero gradients");
});

Deno.test("lmHeadCrossEntropy: the tape keeps no [N, V] logits; step peak stays below one full logits tensor", async () => {
  // 256 rows x 4096 classes: full logits would be 4 MiB; chunks of 256 KiB.
  const n = 256, d = 16, v = 4096;
  const h = tensor(Float32Array.from(randomArr([n, d], 11).data), [n, d]);
  const w = tensor(Float32Array.from(randomArr([v, d], 12, -0.2, 0.2).data), [v, d]);
  const tg = tensor(targetsFor(n, v, 13), [n], "i32");
  const base = memoryStats().liveBytes;
  resetPeakBytes();
  const { value, grads } = valueAndGrad(([a, b]: Tensor[]) =>
    lmHeadCrossEntropy(a, b, tg, { chunkBytes: 256 * 1024 })
  )([h, w]);
  const peak = memoryStats().peakBytes - base;
  const outputs = 4 * (1 + n * d + v * d);
  await readAll([value]);
  for (const t of [value, ...grads, h, w, tg]) t.dispose();
  const full = 4 * n * v;
  console.log(`  peak above inputs ${peak} B (outputs ${outputs} B, full logits ${full} B)`);
  assert.ok(peak - outputs <= full / 2, `peak ${peak} B vs full logits ${full} B`);
});

Deno.test("lmHeadCrossEntropy at the size that motivated it (2048 tokens, V = 32000, 262 MB of logits): runs with a peak of about one 32 MiB chunk; gradients finite", async () => {
  const n = 2048, d = 16, v = 32000;
  const h = tensor(Float32Array.from(randomArr([n, d], 14).data), [n, d]);
  const w = tensor(Float32Array.from(randomArr([v, d], 15, -0.05, 0.05).data), [v, d]);
  const tg = tensor(targetsFor(n, v, 16), [n], "i32");
  const base = memoryStats().liveBytes;
  resetPeakBytes();
  const { value, grads } = valueAndGrad(([a, b]: Tensor[]) => lmHeadCrossEntropy(a, b, tg))([h, w]);
  const peak = memoryStats().peakBytes - base;
  const [l, dh, dW] = await readAll([value, ...grads]);
  for (const t of [value, ...grads, h, w, tg]) t.dispose();
  const outputs = 4 * (1 + n * d + v * d);
  console.log(
    `  loss ${l[0].toFixed(4)} (ln V ${Math.log(v).toFixed(4)}), peak above inputs ${
      (peak / 2 ** 20).toFixed(1)
    } MiB (outputs ${(outputs / 2 ** 20).toFixed(1)} MiB; full logits ${
      (4 * n * v / 2 ** 20).toFixed(0)
    } MiB)`,
  );
  assert.ok(Math.abs(l[0] - Math.log(v)) < 0.05, `loss ${l[0]} at near-zero logits`);
  assert.ok(peak - outputs <= 33 * 2 ** 20 + 4 * 2 * n * d, `peak ${peak} B`);
  assert.ok(dh.every(Number.isFinite) && dW.every(Number.isFinite));
});
