import fc from "fast-check";
import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DTypeError, ShapeError } from "../core/errors.ts";
import { memoryStats } from "../core/memory.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { type Arr, checkOp, FC, randomArr, setup } from "./util.ts";

await setup();

/** Float64 causal softmax of scale * x over the last axis of [..., T, T]. */
function causalSoftmaxRef(x: Arr, scale: number): Arr {
  const t = x.shape[x.shape.length - 1];
  const out = new Float64Array(x.data.length);
  for (let r = 0; r * t < x.data.length; r++) {
    const i = r % t;
    const base = r * t;
    let m = -Infinity;
    for (let j = 0; j <= i; j++) m = Math.max(m, scale * x.data[base + j]);
    let s = 0;
    for (let j = 0; j <= i; j++) s += Math.exp(scale * x.data[base + j] - m);
    for (let j = 0; j <= i; j++) out[base + j] = Math.exp(scale * x.data[base + j] - m) / s;
  }
  return { shape: x.shape, data: out };
}

/** Naive float64 batched matmul: a [batch, m, k] · op(b), b [batch, k, n] or [batch, n, k] with transB. */
function bmm(
  a: Float64Array,
  b: Float64Array,
  batch: number,
  m: number,
  k: number,
  n: number,
  transB: boolean,
) {
  const out = new Float64Array(batch * m * n);
  for (let z = 0; z < batch; z++) {
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let l = 0; l < k; l++) {
          s += a[z * m * k + i * k + l] *
            (transB ? b[z * n * k + j * k + l] : b[z * k * n + l * n + j]);
        }
        out[z * m * n + i * n + j] = s;
      }
    }
  }
  return out;
}

/** Float64 causal self-attention on [B, H, T, Dh]. */
function attentionRef(q: Arr, k: Arr, v: Arr): Arr {
  const [b, h, t, dh] = q.shape;
  const bh = b * h;
  const scores = bmm(q.data, k.data, bh, t, dh, t, true);
  const p = causalSoftmaxRef({ shape: [bh, t, t], data: scores }, 1 / Math.sqrt(dh));
  return { shape: q.shape, data: bmm(p.data, v.data, bh, t, t, dh, false) };
}

const attnArb = fc.record({
  b: fc.integer({ min: 1, max: 2 }),
  h: fc.integer({ min: 1, max: 3 }),
  t: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.constant(17)),
  dh: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.constant(16)),
  seed: fc.integer({ min: 1, max: 1e6 }),
});

Deno.test("causalSelfAttention: [B, H, T, Dh] matches float64 reference (atol 1e-5, rtol 1e-4) and finite differences for q, k, v (2e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(attnArb, async ({ b, h, t, dh, seed }) => {
      const shape = [b, h, t, dh];
      await checkOp({
        op: ([q, k, v]) => o.causalSelfAttention(q, k, v),
        ref: ([q, k, v]) => attentionRef(q, k, v),
        inputs: [randomArr(shape, seed), randomArr(shape, seed + 1), randomArr(shape, seed + 2)],
        grad: { atol: 2e-3, rtol: 2e-3 },
      });
    }),
    { ...FC, numRuns: 10 },
  );
});

Deno.test("causalSoftmax: [..., T, T] with a scale matches float64 reference and finite differences (2e-3)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        lead: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 0, maxLength: 2 }),
        t: fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 30, max: 40 })),
        scale: fc.constantFrom(1, 0.125, -2),
        seed: fc.integer({ min: 1, max: 1e6 }),
      }),
      async ({ lead, t, scale, seed }) => {
        await checkOp({
          op: ([x]) => o.causalSoftmax(x, scale),
          ref: ([x]) => causalSoftmaxRef(x, scale),
          inputs: [randomArr([...lead, t, t], seed, -3, 3)],
          grad: { atol: 2e-3, rtol: 2e-3 },
        });
      },
    ),
    { ...FC, numRuns: 10 },
  );
});

Deno.test("causalSelfAttention, causalSoftmax: bad inputs throw the specific error", () => {
  const q = tensor(new Float32Array(24), [1, 2, 3, 4]);
  const k = tensor(new Float32Array(24), [1, 2, 3, 4]);
  assert.throws(
    () => o.causalSelfAttention(q, k, tensor(new Float32Array(24), [1, 2, 4, 3])),
    ShapeError,
  );
  assert.throws(
    () => o.causalSelfAttention(q, k, tensor(new Float32Array(12), [1, 1, 3, 4])),
    ShapeError,
  );
  assert.throws(
    () => o.causalSelfAttention(q, k, tensor(new Int32Array(24), [1, 2, 3, 4])),
    DTypeError,
  );
  assert.throws(() => o.causalSoftmax(tensor(new Float32Array(6), [2, 3])), ShapeError);
  assert.throws(() => o.causalSoftmax(tensor(new Float32Array(3), [3])), ShapeError);
  assert.throws(() => o.causalSoftmax(tensor(new Int32Array(4), [2, 2])), DTypeError);
});

Deno.test("nn ops leave no buffer behind, with and without a tape", async () => {
  const q = tensor(Float32Array.from(randomArr([2, 2, 5, 4], 1).data), [2, 2, 5, 4]);
  const w = tensor(Float32Array.from(randomArr([4], 2).data), [4]);
  const table = tensor(Float32Array.from(randomArr([7, 4], 3).data), [7, 4]);
  const ids = tensor(
    [1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 4, 4, 6, 6, 6, 0, 0, 1, 1],
    [2, 2, 5],
    "i32",
  );
  const targets = tensor(
    [1, 2, -100, 4, 5, 6, 0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3],
    [2, 2, 5],
    "i32",
  );
  await readAll([q]);
  const before = memoryStats().liveBuffers;
  const scores = o.matmul(q, q, { transB: true });
  // Each op alone, outside any tape or scope: only its output may remain.
  const outs = [
    o.softmax(q),
    o.logSoftmax(q),
    o.embedding(table, ids),
    o.crossEntropy(q, targets),
    o.crossEntropy(q, targets, { reduction: "none" }),
    o.countTargets(targets),
    o.rmsNorm(q, w),
    o.rope(q),
    o.causalSoftmax(scores),
    o.causalSelfAttention(q, q, q),
  ];
  assert.equal(memoryStats().liveBuffers, before + outs.length + 1);
  const model = (ps: { q: Tensor; w: Tensor; table: Tensor }) => {
    const x = o.add(ps.q, o.embedding(ps.table, ids));
    const n = o.rope(o.rmsNorm(x, ps.w));
    const a = o.causalSelfAttention(n, n, o.softmax(x));
    return o.crossEntropy(o.logSoftmax(a), targets);
  };
  const { value, grads } = valueAndGrad(model)({ q, w, table });
  await readAll([value, grads.q, grads.w, grads.table, ...outs]);
  for (const t of [value, grads.q, grads.w, grads.table, scores, ...outs]) t.dispose();
  assert.equal(memoryStats().liveBuffers, before);
});
