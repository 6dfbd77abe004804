import fc from "fast-check";
import assert from "node:assert/strict";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  writeSafetensors,
} from "../cli/safetensors.ts";

Deno.test("safetensors round-trips tensors bit-exactly, NaN payloads and -0 included", () => {
  fc.assert(
    fc.property(
      fc.dictionary(
        fc.string({ minLength: 1, maxLength: 12 }).filter((s) => s !== "__metadata__"),
        fc.record({
          dtype: fc.constantFrom("F32" as const, "I32" as const, "U32" as const),
          words: fc.array(fc.integer({ min: 0, max: 2 ** 32 - 1 }), { maxLength: 40 }),
        }),
        { maxKeys: 5 },
      ),
      fc.dictionary(fc.string(), fc.string(), { maxKeys: 3 }),
      (spec, metadata) => {
        const tensors = Object.fromEntries(
          Object.entries(spec).map(([k, { dtype, words }]) => {
            const u = Uint32Array.from(words);
            const data = dtype === "F32"
              ? new Float32Array(u.buffer)
              : dtype === "I32"
              ? new Int32Array(u.buffer)
              : u;
            return [k, { dtype, shape: [words.length], data }];
          }),
        );
        const back = decodeSafetensors(encodeSafetensors({ tensors, metadata }));
        assert.deepEqual({ ...back.metadata }, { ...metadata });
        for (const [k, t] of Object.entries(tensors)) {
          assert.equal(back.tensors[k].dtype, t.dtype);
          assert.deepEqual(back.tensors[k].shape, t.shape);
          assert.deepEqual(
            new Uint32Array(back.tensors[k].data.buffer),
            new Uint32Array(t.data.buffer),
          );
        }
      },
    ),
    { numRuns: 200, seed: 3 },
  );
});

Deno.test("safetensors: truncated, foreign and inconsistent files are clear errors", async () => {
  const good = encodeSafetensors({
    tensors: { w: { dtype: "F32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) } },
    metadata: { step: "3" },
  });
  assert.throws(() => decodeSafetensors(good.slice(0, good.length - 4), "ck"), /ck .*truncated/);
  assert.throws(() => decodeSafetensors(good.slice(0, 5), "ck"), /truncated/);
  assert.throws(
    () => decodeSafetensors(new TextEncoder().encode("PK\u0003\u0004 this is a zip file"), "ck"),
    /not a valid safetensors/,
  );
  const dir = await Deno.makeTempDir();
  await writeSafetensors(`${dir}/a.safetensors`, decodeSafetensors(good));
  assert.deepEqual((await readSafetensors(`${dir}/a.safetensors`)).metadata, { step: "3" });
  assert.deepEqual(
    [...Deno.readDirSync(dir)].map((e) => e.name),
    ["a.safetensors"],
    "no temp file left",
  );
  await assert.rejects(
    () => readSafetensors(`${dir}/missing.safetensors`),
    /cannot read checkpoint/,
  );
  await Deno.remove(dir, { recursive: true });
});
