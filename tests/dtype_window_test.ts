/**
 * Packed dtypes (bf16, u8) on the device, row windows, tensors larger than one storage binding,
 * and chunked transfers.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { fromBf16Bits, toBf16Bits } from "../core/bf16.ts";
import { convert } from "../core/convert.ts";
import { defineKernel } from "../core/define_kernel.ts";
import { gpuDevice } from "../core/device.ts";
import { DeviceLimitError } from "../core/errors.ts";
import { readRanges } from "../core/kernel.ts";
import { memoryStats } from "../core/memory.ts";
import { valueAndGrad } from "../core/tape.ts";
import {
  full,
  randomNormal,
  readAll,
  streamBytes,
  Tensor,
  tensor,
  writeBytes,
} from "../core/tensor.ts";
import { forEachWindow, rowWindow } from "../core/windows.ts";
import { cast, mul, sum } from "../ops/mod.ts";
import { FC, setup, withBindingWindow } from "./util.ts";

await setup();

const f32Arb = fc.float({ noNaN: true, min: Math.fround(-3e38), max: Math.fround(3e38) });

Deno.test("bf16 tensors: upload rounds to nearest even, readback and device conversion agree with the CPU", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(f32Arb, { minLength: 1, maxLength: 67 }), async (xs) => {
      const want = xs.map((x) => fromBf16Bits(toBf16Bits(x)));
      const a = tensor(Float32Array.from(xs), [xs.length], "bf16");
      const b = convert(tensor(Float32Array.from(xs)), "bf16");
      const c = convert(b, "f32");
      const [ra, rb, rc] = await readAll([a, b, c]);
      assert.equal(a.dtype, "bf16");
      assert.equal(a.bytes, Math.ceil(xs.length / 2) * 4);
      assert.deepEqual([...ra], want);
      assert.deepEqual([...rb], want);
      assert.deepEqual([...rc], want);
      for (const t of [a, b, c]) t.dispose();
    }),
    FC,
  );
});

Deno.test("full fills packed dtypes element by element", async () => {
  const b = full([5], 1.5, "bf16");
  const u = full([7], 200, "u8");
  const [rb, ru] = await readAll([b, u]);
  assert.deepEqual([...rb], [1.5, 1.5, 1.5, 1.5, 1.5]);
  assert.deepEqual([...ru], [200, 200, 200, 200, 200, 200, 200]);
  assert.ok(ru instanceof Uint8Array);
  b.dispose();
  u.dispose();
});

const PAIRS = defineKernel({
  name: "test_bf16_pairs",
  inputs: { x: "bf16" },
  outputs: { y: "bf16", codes: "u8" },
  grid: "flat",
  body: `  store_y_pair(i, 2.0 * load_x(2u * i), load_x(2u * i + 1u) + 1.0);
  if (i % 2u == 0u) { store_codes_word(i / 2u, (i & 255u) | (7u << 8u) | (load_codes(4u * (i / 2u)) << 16u)); }`,
});

Deno.test("defineKernel: bf16 and u8 accessors load and store whole words", async () => {
  const x = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), [6], "bf16");
  const y = Tensor.empty([6], "bf16");
  const codes = tensor(new Uint8Array([9, 0, 0, 0, 0, 0, 0, 0]), [8], "u8");
  PAIRS({ x, y, codes }, { n: 3 });
  const [ry, rc] = await readAll([y, codes]);
  assert.deepEqual([...ry], [2, 3, 6, 5, 10, 7]);
  assert.deepEqual([...rc], [0, 7, 9, 0, 2, 7, 0, 0]);
  assert.throws(() => PAIRS({ x: y, y: x, codes: x }, { n: 1 }), /codes is declared u8/);
  for (const t of [x, y, codes]) t.dispose();
});

Deno.test("rows: zero-copy windows that read and write their part of the storage", async () => {
  const t = tensor(Float32Array.from({ length: 64 * 3 }, (_, i) => i), [64, 3]);
  const w = t.rows(32, 16);
  assert.deepEqual(w.shape, [16, 3]);
  assert.equal(w.offset, 32 * 3 * 4);
  const before = memoryStats().liveBuffers;
  const x = t.rows(8, 8);
  assert.equal(memoryStats().liveBuffers, before, "a window allocates nothing");
  writeBytes(w, new Uint8Array(new Float32Array([-1, -2]).buffer), 4);
  const [rw, rx, rt] = await readAll([w, x, t]);
  assert.equal(rw[0], 96);
  assert.deepEqual([...rw.subarray(1, 3)], [-1, -2]);
  assert.equal(rx[0], 24);
  assert.equal(rt[97], -1);
  assert.throws(() => t.rows(60, 8), /outside/);
  for (const v of [w, x]) v.dispose();
  assert.equal(memoryStats().liveBuffers, before);
  t.dispose();
});

Deno.test("readRanges streams any set of ranges through small staging chunks, in order", async () => {
  const a = tensor(Uint32Array.from({ length: 37 }, (_, i) => i * 7 + 1));
  const b = tensor(Uint32Array.from({ length: 5 }, (_, i) => 1000 + i));
  for (const chunk of [12, 40, 1 << 20]) {
    const got = [new Uint8Array(a.bytes), new Uint8Array(b.bytes)];
    const seen: number[] = [];
    await readRanges(
      [{ storage: a.storage, offset: 0, bytes: a.bytes }, {
        storage: b.storage,
        offset: 0,
        bytes: b.bytes,
      }],
      (i, bytes, off) => {
        seen.push(i);
        got[i].set(bytes, off);
      },
      chunk,
    );
    assert.deepEqual([...new Uint32Array(got[0].buffer)], [...(await a.data())]);
    assert.deepEqual([...new Uint32Array(got[1].buffer)], [...(await b.data())]);
    assert.deepEqual(seen, [...seen].sort(), "pieces arrive in order");
  }
  const parts: number[] = [];
  await streamBytes(a, (bytes) => void parts.push(bytes.byteLength), 16);
  assert.deepEqual(parts, [16, 16, 16, 16, 16, 16, 16, 16, 16, 4]);
  a.dispose();
  b.dispose();
});

const DOUBLE = defineKernel({
  name: "test_double",
  inputs: { x: "f32" },
  outputs: { y: "f32" },
  grid: "flat",
  body: "  store_y(i, 2.0 * load_x(i));",
});

Deno.test("a tensor over one binding: allocated, refused whole by name, processed in windows", async () => {
  await withBindingWindow(async (limit, real) => {
    const n = limit / 4 + 96;
    const x = full([n], 1.25);
    const y = Tensor.empty([n]);
    if (real) {
      assert.throws(
        () => DOUBLE({ x, y }, { n }),
        (e: Error) =>
          e instanceof DeviceLimitError && /maxStorageBufferBindingSize/.test(e.message) &&
          e.message.includes(`[${n}]`),
      );
    } else {
      // A binding holds a whole buffer here: what no tensor may exceed is the buffer limit.
      const max = gpuDevice().limits.maxBufferSize;
      assert.throws(
        () => Tensor.empty([max / 4 + 1]),
        (e: Error) => e instanceof DeviceLimitError && /maxBufferSize/.test(e.message),
      );
    }
    let windows = 0;
    forEachWindow([x, y], ([xv, yv], _s, count) => {
      windows++;
      DOUBLE({ x: xv, y: yv }, { n: count });
    });
    assert.ok(windows >= 2);
    const b = convert(y, "bf16");
    // Spot-check both ends and the window seam without reading the whole tensor back.
    const per = rowWindow(4);
    const picks = [0, per - 1, per, n - 1];
    const starts = picks.map((i) => Math.min(Math.floor(i / 64) * 64, n - 64));
    const flat = b.view([n]);
    const views = starts.map((s0) => flat.rows(s0, 64));
    const got = await readAll(views);
    picks.forEach((i, k) => assert.equal(got[k][i - starts[k]], 2.5, `element ${i}`));
    flat.dispose();
    for (const t of [x, y, b, ...views]) t.dispose();
  });
});

Deno.test("random tensors draw the same values in bf16 as in f32, rounded", async () => {
  const a = randomNormal([33, 5], 0, 1, { seed: 3 });
  const b = randomNormal([33, 5], 0, 1, { seed: 3, dtype: "bf16" });
  const [ra, rb] = await readAll([a, b]);
  assert.deepEqual([...rb], [...ra].map((v) => fromBf16Bits(toBf16Bits(v))));
  a.dispose();
  b.dispose();
});

Deno.test("a bf16 leaf gets a bf16 gradient", async () => {
  const w = tensor(new Float32Array([0.5, -1.25, 3]), [3], "bf16");
  const x = tensor(new Float32Array([2, 4, 1 + 2 ** -9]));
  const { value, grads } = valueAndGrad((p: Tensor) => sum(mul(cast(p, "f32"), x)))(w);
  assert.equal(grads.dtype, "bf16");
  assert.deepEqual([...(await grads.data())], [2, 4, 1]);
  assert.equal(await value.item(), 0.5 * 2 - 1.25 * 4 + 3 * Math.fround(1 + 2 ** -9));
  for (const t of [w, x, value, grads]) t.dispose();
});
