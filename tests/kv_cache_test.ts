/**
 * Generation with a KV cache against the full recompute: the same logits position by position, the
 * same greedy tokens, the window restart, stopping at the end of text; and the merged dense model
 * against every method it merges.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { initLlama, type LlamaModel, type LlamaParams } from "../models/llama.ts";
import { disposeModel, forward, mapLinears } from "../models/llama.ts";
import { disposeCache, extend, type KVCache } from "../models/kv_cache.ts";
import { denseModel } from "../models/merge.ts";
import type { LinearMethod } from "../models/method.ts";
import { argmax, generate, nextLogits } from "../cli/generate.ts";
import { randomNormal, tensor } from "../core/tensor.ts";
import { memoryStats } from "../core/memory.ts";
import { toyConfig } from "./fixtures.ts";
import { matvecT } from "../ops/matvec.ts";
import { Tape } from "../core/tape.ts";
import { assertClose, FC, randomArr, setup, shapeArb, toTensor } from "./util.ts";

await setup();

const METHODS: LinearMethod[] = [
  { kind: "dense" },
  { kind: "lowrank", rank: 4, alpha: 8 },
  { kind: "sltrain", rank: 4, alpha: 8, delta: 0.1, seed: 3 },
  { kind: "relora", rank: 4, alpha: 8 },
];

/** A toy model whose B factors are not zero (a fresh SLTrain/ReLoRA has B = 0). */
function toy(method: LinearMethod, seed = 7): { model: LlamaModel; params: LlamaParams } {
  const m = initLlama(toyConfig(48, 64), method, seed);
  let k = 0;
  const params = mapLinears(m.params, (lin) => {
    if (!("B" in lin)) return lin;
    lin.B.dispose();
    return { ...lin, B: randomNormal(lin.B.shape, 0, 0.3, { seed: seed * 100 + k++ }) };
  });
  return { model: m, params };
}

type Toy = { model: LlamaModel; params: LlamaParams };
const free = (m: Toy) => disposeModel({ params: m.params, buffers: m.model.buffers });

async function fullLogits(
  m: { model: LlamaModel; params: LlamaParams },
  ids: number[],
): Promise<Float32Array> {
  const t = tensor(Int32Array.from(ids), [1, ids.length], "i32");
  const l = forward(m.model, m.params, t);
  t.dispose();
  try {
    return (await l.data()) as Float32Array;
  } finally {
    l.dispose();
  }
}

Deno.test("the merged dense model computes what each method computes", async () => {
  const ids = [1, 5, 9, 2, 33, 47, 0, 12];
  for (const method of METHODS) {
    const m = toy(method);
    const d = denseModel(m.model, m.params);
    assertClose(await fullLogits(d, ids), await fullLogits(m, ids), {
      atol: 1e-6,
      rtol: 1e-5,
      what: method.kind,
    });
    d.dispose();
    free(m);
  }
});

Deno.test("prefill + one cached step per token = the full forward at every position", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...METHODS),
      fc.array(fc.integer({ min: 0, max: 47 }), { minLength: 2, maxLength: 20 }),
      fc.integer({ min: 1, max: 19 }),
      async (method, ids, split) => {
        const k = Math.min(split, ids.length - 1);
        const m = toy(method, ids.length);
        const full = await fullLogits(m, ids);
        const before = memoryStats().liveBuffers;
        let step = extend(m.model, m.params, null, ids.slice(0, k));
        const check = async (pos: number) => {
          const got = await step.logits.data();
          step.logits.dispose();
          assertClose(got, full.subarray(pos * 48, (pos + 1) * 48), {
            atol: 1e-5,
            rtol: 1e-4,
            what: `${method.kind} position ${pos}`,
          });
        };
        await check(k - 1);
        for (let pos = k; pos < ids.length; pos++) {
          step = extend(m.model, m.params, step.cache, [ids[pos]]);
          assert.equal(step.cache.length, pos + 1);
          await check(pos);
        }
        disposeCache(step.cache);
        // Nothing but the model outlives the decoding.
        assert.equal(memoryStats().liveBuffers, before);
        free(m);
      },
    ),
    FC,
  );
});

Deno.test("extend refuses a step of several tokens and an empty prefill", () => {
  const m = toy({ kind: "dense" });
  const first = extend(m.model, m.params, null, [1, 2]);
  first.logits.dispose();
  assert.throws(() => extend(m.model, m.params, first.cache, [3, 4]), /exactly one/);
  assert.throws(() => extend(m.model, m.params, null, []), /one or more ids/);
  disposeCache(first.cache as KVCache);
  free(m);
});

/**
 * Greedy tokens of the cached path equal the full recompute's, except where the full recompute's
 * two best logits are closer than f32 rounding can separate (a genuine tie, checked, not assumed).
 */
async function assertSameGreedy(
  m: { model: LlamaModel; params: LlamaParams },
  prompt: number[],
  tokens: number,
  window: number,
): Promise<void> {
  const opts = { tokens, window, seed: 1, greedy: true };
  const cached = await generate(m, prompt, opts);
  const full = await generate(m, prompt, { ...opts, cache: false });
  const at = cached.findIndex((id, i) => id !== full[i]);
  if (at < 0) return assert.deepEqual(cached, full);
  const l = await nextLogits(m.model, m.params, [...prompt, ...full.slice(0, at)].slice(-window));
  const best = argmax(l);
  const gap = l[best] - l[cached[at]];
  assert.ok(gap < 1e-5, `token ${at}: cached ${cached[at]}, full ${full[at]}, gap ${gap}`);
}

Deno.test("greedy decoding: cached = full recompute, many prompts", async () => {
  const models = METHODS.map((method) => toy(method, 11));
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: METHODS.length - 1 }),
      fc.array(fc.integer({ min: 0, max: 47 }), { minLength: 1, maxLength: 12 }),
      async (which, prompt) => await assertSameGreedy(models[which], prompt, 6, 64),
    ),
    FC,
  );
  models.forEach(free);
});

Deno.test("past the window the cache restarts from the last half window", async () => {
  const m = toy({ kind: "sltrain", rank: 4, alpha: 8, delta: 0.1, seed: 3 }, 5);
  const prompt = [3, 14, 15];
  // Within the window both paths see the same context.
  await assertSameGreedy(m, prompt, 5, 8);
  // Beyond it: 12 valid tokens, deterministic, and the first 5 as above.
  const opts = { tokens: 12, window: 8, seed: 2, temperature: 1, topK: 0 };
  const a = await generate(m, prompt, opts);
  assert.equal(a.length, 12);
  assert.ok(a.every((id) => Number.isInteger(id) && id >= 0 && id < 48));
  assert.deepEqual(await generate(m, prompt, opts), a);
  const greedy = await generate(m, prompt, { tokens: 12, window: 8, seed: 0, greedy: true });
  const short = await generate(m, prompt, { tokens: 5, window: 8, seed: 0, greedy: true });
  assert.deepEqual(greedy.slice(0, 5), short);
  free(m);
});

Deno.test("generation stops at the end-of-text id, which it does not return", async () => {
  const m = toy({ kind: "dense" }, 9);
  const prompt = [4, 8, 15];
  for (const cache of [true, false]) {
    const opts = { tokens: 6, window: 32, seed: 0, greedy: true, cache };
    const all = await generate(m, prompt, opts);
    const stopAt = all[3];
    const seen: number[] = [];
    const cut = await generate(m, prompt, { ...opts, stopAt, onToken: (id) => void seen.push(id) });
    assert.deepEqual(cut, all.slice(0, all.indexOf(stopAt)));
    assert.deepEqual(seen, cut);
  }
  free(m);
});

Deno.test("matvecT: x·Wᵀ for a few rows matches a float64 reference; refuses tapes and odd shapes", async () => {
  await fc.assert(
    fc.asyncProperty(
      shapeArb(1, 3),
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 1000 }),
      async ([rows], k4, n4, seed) => {
        const [k, n] = [4 * k4, 4 * n4];
        const x = randomArr([rows, k], seed), w = randomArr([n, k], seed + 1);
        const want = new Float64Array(rows * n);
        for (let r = 0; r < rows; r++) {
          for (let c = 0; c < n; c++) {
            for (let j = 0; j < k; j++) want[r * n + c] += x.data[r * k + j] * w.data[c * k + j];
          }
        }
        const [xt, wt] = [toTensor(x), toTensor(w)];
        const y = matvecT(xt, wt);
        assert.deepEqual(y.shape, [rows, n]);
        assertClose(await y.data(), want, { atol: 1e-4, rtol: 1e-5 });
        [xt, wt, y].forEach((t) => t.dispose());
      },
    ),
    FC,
  );
  const x = toTensor(randomArr([1, 8], 1));
  const w = toTensor(randomArr([6, 8], 2));
  assert.throws(() => matvecT(x, w), /multiples of 4/);
  const tape = new Tape();
  const w4 = toTensor(randomArr([4, 8], 3));
  assert.throws(() => tape.run(() => matvecT(x, w4)), /inference only/);
  tape.dispose();
  [x, w, w4].forEach((t) => t.dispose());
});
