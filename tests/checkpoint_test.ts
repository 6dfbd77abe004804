/** Checkpoints stream every dtype bit-exactly and leave nothing behind on failure. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { loadCheckpoint, saveCheckpoint } from "../cli/checkpoint.ts";
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
