import assert from "node:assert/strict";
import * as o from "../ops/mod.ts";
import { DeviceLimitError, DTypeError, GradientError } from "../core/errors.ts";
import { gpuDevice } from "../core/device.ts";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { recompute, recordMultiOp, recordOp, Tape, untracked, valueAndGrad } from "../core/tape.ts";
import { readAll, scope, type Tensor, tensor, zeros } from "../core/tensor.ts";
import { backward, randomArr, setup, withWindowBytes } from "./util.ts";

await setup();

const loss = (p: { w: Tensor; b: Tensor; x: Tensor }) =>
  o.mean(o.square(o.sub(o.add(o.mul(p.x, p.w), p.b), o.silu(p.x))));

Deno.test("valueAndGrad returns grads shaped like a nested params tree", async () => {
  const params = { w: tensor([[0.5, -1, 2]]), b: tensor([0.1]), x: tensor([[1, 2, 3], [4, 5, 6]]) };
  const { value, grads } = valueAndGrad(loss)(params);
  assert.deepEqual(Object.keys(grads), ["w", "b", "x"]);
  assert.deepEqual(grads.w.shape, [1, 3]);
  assert.deepEqual(grads.b.shape, [1]);
  assert.deepEqual(grads.x.shape, [2, 3]);
  assert.ok(Number.isFinite(await value.item()));
  for (const t of [value, grads.w, grads.b, grads.x, params.w, params.b, params.x]) t.dispose();
});

Deno.test("memory: 200 iterations of valueAndGrad + dispose leave live buffers and bytes unchanged", async () => {
  const params = { w: tensor([[0.5, -1, 2]]), b: tensor([0.1]), x: tensor([[1, 2, 3], [4, 5, 6]]) };
  const f = valueAndGrad(loss);
  const before = memoryStats();
  for (let i = 0; i < 200; i++) {
    const { value, grads } = f(params);
    value.dispose();
    for (const g of Object.values(grads)) g.dispose();
  }
  await params.w.data();
  const after = memoryStats();
  assert.equal(after.liveBuffers, before.liveBuffers);
  assert.equal(after.liveBytes, before.liveBytes);
  for (const t of Object.values(params)) t.dispose();
});

Deno.test("an unused parameter gets a zero gradient; a repeated one gets the full gradient twice", async () => {
  const a = tensor([1, 2]);
  const unused = tensor([7, 7, 7]);
  const { value, grads } = valueAndGrad(([p]: Tensor[]) => o.sum(o.mul(p, p)))([a, unused, a]);
  const [g0, g1, g2] = await readAll(grads);
  assert.deepEqual(Array.from(g0), [2, 4]);
  assert.deepEqual(Array.from(g1), [0, 0, 0]);
  assert.deepEqual(Array.from(g2), [2, 4]);
  for (const t of [a, unused, value, ...grads]) t.dispose();
});

Deno.test("a tensor used by several ops accumulates its gradient", async () => {
  const x = tensor([1, 2, 3]);
  // d/dx [sum(x) + sum(x*x) + sum(exp(x))] = 1 + 2x + e^x
  const { value, grads } = valueAndGrad((p: Tensor) =>
    o.add(o.add(o.sum(p), o.sum(o.mul(p, p))), o.sum(o.exp(p)))
  )(x);
  const g = await grads.data();
  [1, 2, 3].forEach((v, i) => assert.ok(Math.abs(g[i] - (1 + 2 * v + Math.exp(v))) < 1e-4));
  for (const t of [x, value, grads]) t.dispose();
});

Deno.test("clear errors: non-scalar output, output off the tape, integer params, unwatched wrt", () => {
  const x = tensor([1, 2]);
  const ids = tensor([1, 2], [2], "i32");
  assert.throws(() => valueAndGrad((p: Tensor) => o.mul(p, p))(x), /scalar output/);
  const c = tensor([3]);
  assert.throws(() => valueAndGrad((_p: Tensor) => o.sum(c))(x), /not on this tape/);
  assert.throws(() => valueAndGrad((p: Tensor) => o.sum(p))(ids), DTypeError);
  const tape = new Tape();
  tape.watch(x);
  const y = tape.run(() => o.sum(o.square(x)));
  assert.throws(() => tape.backward(y, [c]), GradientError);
  tape.dispose();
  for (const t of [x, ids, c, y]) t.dispose();
});

Deno.test("Tape.onGrad hands each gradient over once it is final, in reverse order of first use", async () => {
  const w1 = tensor([1, 2]);
  const w2 = tensor([3, 4]);
  const tape = new Tape();
  tape.watch(w1, w2);
  const value = tape.run(() => {
    const h = o.mul(w1, w1); // w1 used first
    return o.sum(o.mul(h, w2));
  });
  const order: number[] = [];
  const got: Tensor[] = [];
  const result = tape.backward(value, [w1, w2], {
    onGrad: (g, k) => {
      order.push(k);
      got[k] = g;
    },
  });
  assert.deepEqual(order, [1, 0]);
  assert.deepEqual(result, [undefined, undefined]);
  const [g1, g2] = await readAll(got);
  assert.deepEqual(Array.from(g1), [6, 16]); // 2*w1*w2
  assert.deepEqual(Array.from(g2), [1, 4]); // w1^2
  for (const t of [w1, w2, value, ...got]) t.dispose();
});

Deno.test("onGradRows: a final gradient comes in checked blocks of rows instead of whole; a gradient other ops add to comes whole", async () => {
  const ids = tensor(Int32Array.from([299, 0, 299, 130, 1, 255, 256]), [7], "i32");
  const c = tensor(Float32Array.from(randomArr([7, 2], 3).data), [7, 2]);
  const lossOf = (alsoSum: boolean) => (t: Tensor) => {
    const l = o.sum(o.mul(o.embedding(t, ids), c));
    return alsoSum ? o.add(l, o.sum(t)) : l;
  };
  for (const alsoSum of [false, true]) {
    const table = tensor(Float32Array.from(randomArr([300, 2], 4).data), [300, 2]);
    const { value, grads } = valueAndGrad(lossOf(alsoSum))(table);
    const [want] = await readAll([grads]);
    const tape = new Tape();
    tape.watch(table);
    const loss = tape.run(() => lossOf(alsoSum)(table));
    const blocks: [number, Tensor][] = [];
    const onGrad: Tensor[] = [];
    // 1 KiB windows: blocks of 128 rows of 8 bytes (a multiple of 2), the last one of 44.
    await withWindowBytes(1024, () =>
      Promise.resolve(tape.backward(loss, [table], {
        onGrad: (g) => void onGrad.push(g),
        onGradRows: () => ({ multiple: 2, take: (g, r0) => void blocks.push([r0, g]), end() {} }),
      })));
    if (alsoSum) {
      assert.equal(blocks.length, 0, "not final at the embedding: no blocks");
      assert.deepEqual((await readAll(onGrad))[0], want);
    } else {
      assert.equal(onGrad.length, 0, "no whole gradient");
      const spans = blocks.map(([r0, g]) => [r0, g.shape[0]]);
      assert.deepEqual(spans, [[0, 128], [128, 128], [256, 44]]);
      const got = await readAll(blocks.map(([, g]) => g));
      assert.deepEqual(Float32Array.from(got.flatMap((b) => [...b])), want);
    }
    for (const t of [value, grads, loss, table, ...onGrad, ...blocks.map(([, g]) => g)]) {
      t.dispose();
    }
  }
  // An op that breaks the protocol gets a clear error.
  for (const misuse of ["order", "short"] as const) {
    const x = zeros([4, 2]);
    const tape = new Tape();
    tape.watch(x);
    const y = tape.run(() => {
      const out = untracked(() => o.sum(x));
      recordOp("blocky", [x], out, (_g, ctx) => {
        const rows = ctx.gradRows(x)!;
        if (misuse === "order") rows.take(zeros([2, 2]), 2);
        else rows.take(zeros([2, 2]), 0);
        rows.end();
        return [null];
      });
      return out;
    });
    assert.throws(
      () =>
        tape.backward(y, [x], {
          onGrad: (g) => g.dispose(),
          onGradRows: () => ({ multiple: 1, take: (g) => g.dispose(), end() {} }),
        }),
      (e: Error) =>
        e instanceof GradientError &&
        (misuse === "order" ? /at row 2, expected row 0/ : /ended after 2 of 4 rows/).test(
          e.message,
        ),
    );
    for (const t of [x, y]) t.dispose();
  }
});

Deno.test("the tape keeps a saved tensor alive even if f disposes it", async () => {
  const x = tensor([0.5, 1.5]);
  const { value, grads } = valueAndGrad((p: Tensor) => {
    const e = o.exp(p);
    const s = o.sum(o.mul(e, e));
    e.dispose();
    return s;
  })(x);
  const g = await grads.data();
  [0.5, 1.5].forEach((v, i) =>
    assert.ok(Math.abs(g[i] - 2 * Math.exp(2 * v)) < 1e-3 * Math.exp(2 * v))
  );
  for (const t of [x, value, grads]) t.dispose();
});

Deno.test("scope frees everything created inside except the result, also on throw", async () => {
  const before = memoryStats().liveBytes;
  const kept = scope(() => {
    const a = tensor([1, 2, 3]);
    const b = o.mul(a, a);
    return { out: o.add(b, a) };
  });
  assert.equal(memoryStats().liveBytes, before + 12);
  assert.deepEqual(Array.from(await kept.out.data()), [2, 6, 12]);
  kept.out.dispose();
  assert.throws(() =>
    scope(() => {
      zeros([100]);
      throw new Error("boom");
    }), /boom/);
  assert.equal(memoryStats().liveBytes, before);
});

Deno.test("oversized tensors: the buffer limit is a specific error, nothing left allocated", () => {
  const limits = gpuDevice().limits;
  const before = memoryStats();
  const huge = Math.floor(limits.maxBufferSize / 4) + 1;
  assert.throws(
    () => zeros([huge]),
    (e: Error) =>
      e instanceof DeviceLimitError && /maxBufferSize/.test(e.message) &&
      e.message.includes(`${huge}`),
  );
  assert.deepEqual(memoryStats().liveBytes, before.liveBytes);
});

// Three "blocks" x -> x + silu(x·w1)·w2 with f32 or bf16 weights, as plain ops or recomputed.
function blocks(ws: Tensor[], x: Tensor, segmented: boolean): Tensor {
  let h = x;
  for (let i = 0; i < ws.length; i += 2) {
    const block = ([hin, w1, w2]: readonly Tensor[]) =>
      o.add(hin, o.matmul(o.silu(o.matmul(hin, w1)), w2));
    h = segmented ? recompute(block, [h, ws[i], ws[i + 1]]) : block([h, ws[i], ws[i + 1]]);
  }
  return o.mean(o.square(h));
}

for (const dtype of ["f32", "bf16"] as const) {
  Deno.test(`recompute: recomputed blocks give bit-identical ${dtype} gradients, also handed out through onGrad, and hold only block boundaries`, async () => {
    const rnd = (shape: number[], seed: number, scale: number) =>
      tensor(Float32Array.from(randomArr(shape, seed).data, (v) => v * scale), shape, dtype);
    const ws = [0, 1, 2, 3, 4, 5].map((i) => rnd(i % 2 ? [64, 16] : [16, 64], i + 1, 0.3));
    const x = tensor(Float32Array.from(randomArr([32, 16], 9).data), [32, 16]);
    const run = (segmented: boolean, hook: boolean) => {
      const got: Tensor[] = [];
      resetPeakBytes();
      const before = memoryStats().liveBytes;
      const grads = backward(
        ws,
        (p) => blocks(p, x, segmented),
        hook ? (g, i) => void (got[i] = g) : undefined,
      );
      return { grads: hook ? got : grads, peak: memoryStats().peakBytes - before };
    };
    const plain = run(false, false);
    const rec = run(true, false);
    const hooked = run(true, true);
    assert.ok(
      plain.grads.every((g) => g.dtype === dtype) && rec.grads.every((g) => g.dtype === dtype),
    );
    const [p, r, h] = await Promise.all([plain, rec, hooked].map((s) => readAll(s.grads)));
    assert.deepEqual(r, p);
    assert.deepEqual(h, p);
    // Plain keeps every block's [32, 64] hidden activations; recomputed keeps the [32, 16] inputs.
    assert.ok(rec.peak < plain.peak, `recomputed peak ${rec.peak} >= plain ${plain.peak}`);
    for (const t of [...ws, x, ...plain.grads, ...rec.grads, ...hooked.grads]) t.dispose();
  });
}

Deno.test("recompute: without a tape it is the plain function; a vector outputGrad seeds backward", async () => {
  const w = tensor([[2, 0], [0, 3]]);
  const y = recompute(([a]) => o.mulScalar(a, 2), [w]);
  assert.deepEqual([...(await y.data())], [4, 0, 0, 6]);
  const tape = new Tape();
  tape.watch(w);
  const z = tape.run(() => o.mul(w, w));
  const seed = tensor([[1, 1], [0, 2]]);
  const [g] = tape.backward(z, [w], { outputGrad: seed });
  assert.deepEqual([...(await g!.data())], [4, 0, 0, 12]);
  assert.throws(() => new Tape().backward(z, [w], { outputGrad: w.view([4]) }), GradientError);
  for (const t of [w, y, z, seed, g!]) t.dispose();
});

Deno.test("recordMultiOp: one VJP call gets every output's gradient (undefined for an unused output), and what it returns flows on", async () => {
  // split(x) = (2x, x²) as one node: the VJP sees both gradients together.
  const split = (x: Tensor, seen: string[]): [Tensor, Tensor] => {
    const [a, b] = untracked(() => [o.mulScalar(x, 2), o.mul(x, x)]);
    recordMultiOp("split", [x], [a, b], ([ga, gb]) => {
      seen.push(ga ? "a" : "-", gb ? "b" : "-");
      const parts = [ga ? o.mulScalar(ga, 2) : null, gb ? o.mul(o.mulScalar(gb, 2), x) : null];
      const [p, q] = parts;
      return [p && q ? o.add(p, q) : p ?? q];
    });
    return [a, b];
  };
  const x = tensor([1, 2, 3]);
  const cases: [string, (a: Tensor, b: Tensor) => Tensor, number[], string[]][] = [
    ["both", (a, b) => o.add(o.sum(a), o.sum(b)), [4, 6, 8], ["a", "b"]],
    ["only the first", (a) => o.sum(o.mul(a, a)), [8, 16, 24], ["a", "-"]],
    ["only the second", (_, b) => o.sum(b), [2, 4, 6], ["-", "b"]],
  ];
  for (const [what, f, expected, calls] of cases) {
    const seen: string[] = [];
    const { value, grads } = valueAndGrad((p: Tensor) => f(...split(p, seen)))(x);
    assert.deepEqual(Array.from(await grads.data()), expected, what);
    assert.deepEqual(seen, calls, what);
    value.dispose();
    grads.dispose();
  }
  x.dispose();
});
