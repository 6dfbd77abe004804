import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { deviceInfo, gpuDevice } from "../core/device.ts";
import { DeviceLimitError, DTypeError, ShapeError } from "../core/errors.ts";
import { memoryStats } from "../core/memory.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, scope, type Tensor, tensor } from "../core/tensor.ts";
import { attentionConfig, flashAttention } from "../ops/flash_attention.ts";
import { type FusedTarget, setFusedTarget } from "../ops/fused_target.ts";
import {
  type Arr,
  assertClose,
  checkOp,
  FC,
  randomArr,
  ropeRows,
  setup,
  toTensor,
} from "./util.ts";

await setup();

/** Float64 RoPE of [B, T, H, Dh]: row (b, t, h) is at position t. */
function ropeRef(x: Arr, base: number): Arr {
  const [, t, h] = x.shape;
  return ropeRows(x, base, (row) => Math.floor(row / h) % t);
}

/**
 * Float64 causal attention on [B, T, H, Dh] (RoPE first when `base` is given); with `rows`, only
 * those query rows are computed (the rest stay 0).
 */
function flashRef(q: Arr, k: Arr, v: Arr, base?: number, rows?: number[]): Arr {
  const [b, t, h, dh] = q.shape;
  if (base !== undefined) [q, k] = [ropeRef(q, base), ropeRef(k, base)];
  const out = new Float64Array(q.data.length);
  const at = (bb: number, tt: number, hh: number) => ((bb * t + tt) * h + hh) * dh;
  const scale = 1 / Math.sqrt(dh);
  const s = new Float64Array(t);
  for (let bb = 0; bb < b; bb++) {
    for (let hh = 0; hh < h; hh++) {
      for (const i of rows ?? Array.from({ length: t }, (_, i) => i)) {
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          let d = 0;
          for (let c = 0; c < dh; c++) d += q.data[at(bb, i, hh) + c] * k.data[at(bb, j, hh) + c];
          s[j] = d * scale;
          m = Math.max(m, s[j]);
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) sum += s[j] = Math.exp(s[j] - m);
        for (let j = 0; j <= i; j++) {
          for (let c = 0; c < dh; c++) {
            out[at(bb, i, hh) + c] += (s[j] / sum) * v.data[at(bb, j, hh) + c];
          }
        }
      }
    }
  }
  return { shape: q.shape, data: out };
}

/** Runs `fn` with the fused kernels' configuration forced to `target`, restoring it after. */
async function withTarget(target: FusedTarget, fn: () => Promise<void>) {
  const prev = setFusedTarget(target);
  try {
    await fn();
  } finally {
    setFusedTarget(prev);
  }
}

// Ragged T (not a multiple of the 8- or 16-row blocks), one or two heads and batches, even Dh
// (vec4 registers from 4 on, scalar 2 and 6) with RoPE, odd Dh without.
const caseArb = fc.record({
  b: fc.integer({ min: 1, max: 2 }),
  t: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.constant(17)),
  h: fc.integer({ min: 1, max: 2 }),
  dh: fc.constantFrom(2, 4, 6, 8),
  rope: fc.boolean(),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

const targets: [FusedTarget, string][] = [
  ["auto", `the adapter's kernels (${deviceInfo().kind})`],
  ["gpu", "the workgroup-memory kernels of real GPUs, forced"],
];

for (const [target, what] of targets) {
  Deno.test(`flashAttention with ${what}: random ragged shapes match float64 (atol 1e-5, rtol 1e-4) and finite differences for q, k, v (2e-3)`, async () => {
    await withTarget(target, async () => {
      await fc.assert(
        fc.asyncProperty(caseArb, async ({ b, t, h, dh, rope, seed }) => {
          const base = rope ? 500 : undefined;
          const shape = [b, t, h, dh + (rope ? 0 : 1)];
          await checkOp({
            op: ([q, k, v]) => flashAttention(q, k, v, { ropeBase: base }),
            ref: ([q, k, v]) => flashRef(q, k, v, base),
            inputs: [
              randomArr(shape, seed),
              randomArr(shape, seed + 1),
              randomArr(shape, seed + 2),
            ],
            grad: { atol: 2e-3, rtol: 2e-3 },
          });
        }),
        { ...FC, numRuns: 10 },
      );
    });
  });
}

/** The composition flashAttention replaces: [B, T, H, Dh] -> [B, H, T, Dh], RoPE, attention, back. */
function composition(q: Tensor, k: Tensor, v: Tensor, base: number): Tensor {
  const split = (x: Tensor) => o.transpose(x, [0, 2, 1, 3]);
  const y = o.causalSelfAttention(o.rope(split(q), { base }), o.rope(split(k), { base }), split(v));
  return o.transpose(y, [0, 2, 1, 3]);
}

Deno.test("flashAttention equals the composition it replaces (transposes, rope, causalSelfAttention) at model head dims (64, 128; T past several GPU tiles), forward and gradients, both configurations", async () => {
  const cases = [
    { b: 2, t: 37, h: 2, dh: 32, target: "auto" },
    { b: 1, t: 23, h: 3, dh: 64, target: "auto" },
    { b: 2, t: 19, h: 2, dh: 16, target: "gpu" },
    // The real-GPU configuration over several of its tiles (up to 64 rows each), at the head
    // dims of the paper's models.
    { b: 1, t: 150, h: 2, dh: 64, target: "gpu" },
    { b: 1, t: 100, h: 1, dh: 128, target: "gpu" },
  ] as const;
  for (const { b, t, h, dh, target } of cases) {
    await withTarget(target, async () => {
      const shape = [b, t, h, dh];
      const [q, k, v, w] = [1, 2, 3, 4].map((s) => toTensor(randomArr(shape, 100 * t + s)));
      const lossOf = (f: (q: Tensor, k: Tensor, v: Tensor) => Tensor) =>
        valueAndGrad((p: Tensor[]) => o.sum(o.mul(f(p[0], p[1], p[2]), w)))([q, k, v]);
      const fused = lossOf((a, bb, c) => flashAttention(a, bb, c, { ropeBase: 10000 }));
      const ref = lossOf((a, bb, c) => composition(a, bb, c, 10000));
      const yf = flashAttention(q, k, v, { ropeBase: 10000 });
      const yr = composition(q, k, v, 10000);
      const got = await readAll([yf, ...fused.grads, yr, ...ref.grads]);
      const what = `B ${b} T ${t} H ${h} Dh ${dh} (${target})`;
      ["output", "dq", "dk", "dv"].forEach((name, i) => {
        assertClose(got[i], got[i + 4], { atol: 2e-6, rtol: 1e-4, what: `${what}: ${name}` });
      });
      for (const x of [q, k, v, w, yf, yr, fused.value, ref.value, ...fused.grads, ...ref.grads]) {
        x.dispose();
      }
    });
  }
});

Deno.test("flashAttention runs a sequence whose [B, H, T, T] scores exceed one storage binding (T = 6000), matching float64 on sampled rows", async () => {
  const [t, dh] = [6000, 4];
  const shape = [1, t, 1, dh];
  const [qa, ka, va] = [1, 2, 3].map((s) => randomArr(shape, s));
  const [q, k, v] = [qa, ka, va].map(toTensor);
  // The composition needs T² floats of scores in one binding: past it on software adapters
  // (128 MiB), within it where bindings are large (Chromium: 1 GiB), where it must agree.
  const heads = (x: Tensor) => x.view([1, 1, t, dh]);
  const composed = () => scope(() => o.causalSelfAttention(heads(q), heads(k), heads(v)));
  let reference: Tensor | null = null;
  if (t * t * 4 > gpuDevice().limits.maxStorageBufferBindingSize) {
    assert.throws(composed, DeviceLimitError);
  } else reference = composed();
  const rows = [0, 1, 7, 8, 2999, 5991, 5999];
  const y = flashAttention(q, k, v);
  const g = valueAndGrad((p: Tensor[]) => o.sum(flashAttention(p[0], p[1], p[2])))([q, k, v]);
  const [yd, ...gd] = await readAll([y, ...g.grads]);
  const ref = flashRef(qa, ka, va, undefined, rows);
  const pick = (d: ArrayLike<number>) =>
    rows.flatMap((r) => Array.from({ length: dh }, (_, c) => d[r * dh + c]));
  assertClose(pick(yd), pick(ref.data), { atol: 1e-5, rtol: 1e-4, what: "sampled rows" });
  if (reference) {
    const [rd] = await readAll([reference]);
    assertClose(yd, rd, { atol: 1e-5, rtol: 1e-4, what: "flash vs the composition" });
    reference.dispose();
  }
  // d(sum of outputs)/dv_jc = Σ_i P_ij, and every row of P sums to 1: all of dv sums to T·Dh.
  const dvSum = Array.from(gd[2]).reduce((a, x) => a + x, 0);
  assertClose([dvSum], [t * dh], { rtol: 1e-4, what: "sum of dv" });
  assert.ok(gd.every((d) => Array.from(d).every(Number.isFinite)));
  for (const x of [q, k, v, y, g.value, ...g.grads]) x.dispose();
});

Deno.test("flashAttention: configs per adapter; bad inputs throw the specific error", () => {
  const { kind, subgroupSize } = deviceInfo();
  const cfg = attentionConfig(64, true);
  assert.equal(cfg.variant, kind === "cpu" && subgroupSize === 8 ? "subgroup" : "workgroup");
  if (kind === "cpu" && cfg.variant === "workgroup") assert.equal(cfg.wg, 8);
  const prev = setFusedTarget("gpu");
  // The GPU configuration: the largest tile of 8..64 rows within the workgroup memory.
  const { variant, wg } = attentionConfig(64, true);
  assert.equal(variant, "workgroup");
  const fits = (rows: number) =>
    rows * (2 * 64 + 2) * 4 <= deviceInfo().limits.maxComputeWorkgroupStorageSize;
  assert.ok(fits(wg) && (wg === 64 || !fits(2 * wg)), `${wg} rows`);
  setFusedTarget(prev);
  const q = tensor(new Float32Array(24), [1, 3, 2, 4]);
  assert.throws(() => flashAttention(q, q, tensor(new Float32Array(24), [1, 3, 4, 2])), ShapeError);
  assert.throws(() => flashAttention(q.view([3, 2, 4]), q, q), ShapeError);
  assert.throws(() => flashAttention(q, q, tensor(new Int32Array(24), [1, 3, 2, 4])), DTypeError);
  const odd = tensor(new Float32Array(18), [1, 3, 2, 3]);
  assert.throws(() => flashAttention(odd, odd, odd, { ropeBase: 10000 }), ShapeError);
  assert.throws(() => flashAttention(q, q, q, { ropeBase: 0 }), ShapeError);
  const wide = tensor(new Float32Array(260), [1, 1, 1, 260]);
  assert.throws(() => flashAttention(wide, wide, wide), ShapeError);
  for (const x of [q, odd, wide]) x.dispose();
});

Deno.test("flashAttention leaves no buffer behind, with and without a tape", async () => {
  const shape = [2, 9, 2, 8];
  const [q, k, v] = [1, 2, 3].map((s) => toTensor(randomArr(shape, s)));
  await readAll([q]);
  const before = memoryStats().liveBuffers;
  const y = flashAttention(q, k, v, { ropeBase: 10000 });
  assert.equal(memoryStats().liveBuffers, before + 1);
  const g = valueAndGrad((p: Tensor[]) =>
    o.sum(flashAttention(p[0], p[1], p[2], { ropeBase: 10000 }))
  )([q, k, v]);
  await readAll([y, g.value, ...g.grads]);
  for (const x of [y, g.value, ...g.grads]) x.dispose();
  assert.equal(memoryStats().liveBuffers, before);
  for (const x of [q, k, v]) x.dispose();
});
