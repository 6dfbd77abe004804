/** Checkpoints stream every dtype bit-exactly and leave nothing behind on failure. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { keptCheckpoints, loadCheckpoint, saveCheckpoint } from "../cli/checkpoint.ts";
import { NonFiniteError } from "../core/errors.ts";
import { memoryStats } from "../core/memory.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { FC, setup } from "./util.ts";

await setup();

function make(dtype: string, n: number, seed: number): Tensor {
  let s = seed | 1;
  const next = () => (s = (s * 48271) % 2147483647);
  if (dtype === "u8") return tensor(Uint8Array.from({ length: n }, () => next() & 255), [n], "u8");
  if (dtype === "i32") return tensor(Int32Array.from({ length: n }, () => next() - 2 ** 30), [n]);
  const v = Float32Array.from({ length: n }, () => (next() / 2 ** 31 - 0.5) * 1e3);
  return tensor(v, [n], dtype === "bf16" ? "bf16" : "f32");
}

Deno.test("checkpoints round-trip f32, bf16, u8 and i32 tensors of any size bit for bit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            dtype: fc.constantFrom("f32", "bf16", "u8", "i32"),
            n: fc.integer({ min: 0, max: 37 }),
            seed: fc.integer(),
          }),
          { minLength: 1, maxLength: 6 },
        ),
        async (specs) => {
          const params = specs.map((s) => make(s.dtype, s.n, s.seed));
          const path = `${dir}/ck.safetensors`;
          await saveCheckpoint(path, {
            params,
            buffers: {},
            optState: { count: 3 },
            step: 7,
            meta: { note: "x" },
          });
          const back = await loadCheckpoint(path);
          const got = back.params as Tensor[];
          assert.equal(back.step, 7);
          assert.deepEqual(back.optState, { count: 3 });
          const [a, b] = [await readAll(params), await readAll(got)];
          got.forEach((t, i) => {
            assert.equal(t.dtype, params[i].dtype);
            assert.deepEqual(t.shape, params[i].shape);
            assert.deepEqual(b[i], a[i]);
          });
          tree.dispose([params, back.params]);
        },
      ),
      FC,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a checkpoint that cannot be read frees whatever it had allocated", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/ck.safetensors`;
    const params = [make("f32", 1000, 1), make("bf16", 999, 2)];
    await saveCheckpoint(path, { params, buffers: {}, optState: {}, step: 1, meta: {} });
    tree.dispose(params);
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.slice(0, bytes.length - 100));
    const before = memoryStats().liveBytes;
    await assert.rejects(() => loadCheckpoint(path), /truncated/);
    assert.equal(memoryStats().liveBytes, before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a tensor holding NaN or Inf is never checkpointed: a NonFiniteError names it, the old file stays", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/ck.safetensors`;
    const good = [make("f32", 10, 1)];
    await saveCheckpoint(path, { params: good, buffers: {}, optState: {}, step: 1, meta: {} });
    const before = await Deno.readFile(path);
    for (const [dtype, bad] of [["f32", NaN], ["bf16", Infinity], ["f32", -Infinity]] as const) {
      const v = new Float32Array(300).fill(1);
      v[257] = bad;
      const params = { a: good[0], b: tensor(v, [300], dtype) };
      await assert.rejects(
        () => saveCheckpoint(path, { params, buffers: {}, optState: {}, step: 2, meta: {} }),
        (e) =>
          e instanceof NonFiniteError &&
          /params\.b holds a non-finite value \(element 257\)/.test(e.message),
      );
      params.b.dispose();
      assert.deepEqual(await Deno.readFile(path), before);
      assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["ck.safetensors"]);
    }
    tree.dispose(good);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--keep: the latest checkpoint and the keep - 1 before it; the same step again replaces, never rotates", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/checkpoint.safetensors`;
    const params = [make("f32", 4, 1)];
    const save = (step: number) =>
      saveCheckpoint(path, { params, buffers: {}, optState: {}, step, meta: {} }, { keep: 3 });
    for (const step of [1, 2, 3, 4, 5, 5]) await save(step);
    assert.deepEqual((await keptCheckpoints(path)).map(([s]) => s), [3, 4]);
    assert.equal((await loadCheckpoint(path)).step, 5);
    const back = await loadCheckpoint(`${dir}/checkpoint.step-4.safetensors`);
    assert.equal(back.step, 4);
    tree.dispose([params, back.params]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
