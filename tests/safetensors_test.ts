import fc from "fast-check";
import assert from "node:assert/strict";
import { checksumOf } from "../core/checksum.ts";
import { sha256 } from "../core/sha256.ts";
import {
  CHECKSUM_ALGORITHM_KEY,
  CHECKSUMS_KEY,
  decodeSafetensors,
  encodeSafetensors,
  HEADER_CHECKSUM_KEY,
  openSafetensors,
  readSafetensors,
  type SafetensorsDType,
  writeSafetensors,
  writeSafetensorsStream,
} from "../cli/safetensors.ts";

const DTYPES: SafetensorsDType[] = ["F32", "I32", "U32", "BF16", "F16", "U8"];
const SIZE = { F32: 4, I32: 4, U32: 4, BF16: 2, F16: 2, U8: 1 };

const fileArb = fc.record({
  tensors: fc.dictionary(
    fc.string({ minLength: 1, maxLength: 12 }).filter((s) => s !== "__metadata__"),
    fc.record({
      dtype: fc.constantFrom(...DTYPES),
      count: fc.integer({ min: 0, max: 40 }),
      seed: fc.integer(),
    }),
    { maxKeys: 5 },
  ).map((spec) =>
    Object.fromEntries(
      Object.entries(spec).map(([k, { dtype, count, seed }]) => {
        const data = new Uint8Array(count * SIZE[dtype]);
        let s = seed | 1;
        for (let i = 0; i < data.length; i++) data[i] = (s = (s * 48271) % 2147483647) & 255;
        return [k, { dtype, shape: [count], data }];
      }),
    )
  ),
  metadata: fc.dictionary(fc.string(), fc.string(), { maxKeys: 3 }),
});

Deno.test("safetensors round-trips every dtype bit-exactly in memory", () => {
  fc.assert(
    fc.property(fileArb, (file) => {
      const back = decodeSafetensors(encodeSafetensors(file));
      assert.deepEqual({ ...back.metadata }, { ...file.metadata });
      for (const [k, t] of Object.entries(file.tensors)) {
        assert.equal(back.tensors[k].dtype, t.dtype);
        assert.deepEqual(back.tensors[k].shape, t.shape);
        assert.deepEqual(back.tensors[k].data, t.data);
      }
    }),
    { numRuns: 200, seed: 3 },
  );
});

Deno.test("safetensors streams: chunked writes and chunked reads equal the in-memory encoding", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await fc.assert(
      fc.asyncProperty(fileArb, fc.integer({ min: 1, max: 64 }), async (file, chunk) => {
        const names = Object.keys(file.tensors).sort();
        const path = `${dir}/s.safetensors`;
        await writeSafetensorsStream(
          path,
          names.map((name) => ({
            name,
            dtype: file.tensors[name].dtype,
            shape: file.tensors[name].shape,
            async write(sink) {
              const d = file.tensors[name].data as Uint8Array;
              for (let o = 0; o < d.length; o += chunk) await sink(d.slice(o, o + chunk));
            },
          })),
          file.metadata,
        );
        assert.deepEqual(await Deno.readFile(path), encodeSafetensors(file));
        const r = await openSafetensors(path);
        try {
          assert.deepEqual({ ...r.metadata }, { ...file.metadata });
          for (const name of names) {
            const want = file.tensors[name].data as Uint8Array;
            const got = new Uint8Array(want.length);
            await r.read(name, (b, off) => got.set(b, off), chunk);
            assert.deepEqual(got, want);
          }
        } finally {
          r.close();
        }
      }),
      { numRuns: 60, seed: 9 },
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["s.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: a source that writes too few or too many bytes leaves the old file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.safetensors`;
    await writeSafetensors(path, {
      tensors: { w: { dtype: "F32", shape: [1], data: new Float32Array([1]) } },
      metadata: {},
    });
    const before = await Deno.readFile(path);
    for (const n of [3, 5]) {
      await assert.rejects(
        () =>
          writeSafetensorsStream(
            path,
            [{ name: "w", dtype: "F32", shape: [1], write: (sink) => sink(new Uint8Array(n)) }],
            {},
          ),
        /wrote/,
      );
      assert.deepEqual(await Deno.readFile(path), before);
    }
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["c.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
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
  const withGap = encodeSafetensors({
    tensors: { w: { dtype: "U8", shape: [4], data: new Uint8Array(4) } },
    metadata: {},
  });
  const text = new TextDecoder().decode(withGap.subarray(8, withGap.length - 4));
  const shifted = new TextEncoder().encode(text.replace("[0,4]", "[1,5]"));
  const bad = new Uint8Array(8 + shifted.length + 5);
  new DataView(bad.buffer).setBigUint64(0, BigInt(shifted.length), true);
  bad.set(shifted, 8);
  assert.throws(() => decodeSafetensors(bad, "ck"), /unused bytes/);
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/t.safetensors`, good.slice(0, good.length - 4));
    await assert.rejects(() => openSafetensors(`${dir}/t.safetensors`), /truncated/);
    await assert.rejects(() => openSafetensors(`${dir}/missing.safetensors`), /cannot read/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors with checksums: any flipped bytes or cut are an error naming the file, or change nothing", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/c.safetensors`;
  let rejected = 0;
  try {
    await fc.assert(
      fc.asyncProperty(
        fileArb,
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), {
          minLength: 1,
          maxLength: 3,
        }),
        fc.option(fc.nat(), { freq: 4 }),
        async (file, flips, cut) => {
          await writeSafetensors(path, file, { checksums: true });
          const bytes = await Deno.readFile(path);
          for (const [at, x] of flips) bytes[at % bytes.length] ^= x;
          const damaged = cut === null ? bytes : bytes.subarray(0, cut % bytes.length);
          let back;
          try {
            back = decodeSafetensors(damaged, "ck");
          } catch (e) {
            rejected++;
            assert.match((e as Error).message, /^ck is not a valid safetensors file: /);
            return;
          }
          // Accepted: then it is the very same content (e.g. a flip inside header padding).
          assert.deepEqual(
            Object.fromEntries(
              Object.entries(back.metadata).filter(([k]) => !k.startsWith("sltrain.")),
            ),
            { ...file.metadata },
          );
          assert.deepEqual(Object.keys(back.tensors).sort(), Object.keys(file.tensors).sort());
          for (const [k, t] of Object.entries(file.tensors)) {
            assert.deepEqual(back.tensors[k].data, t.data, k);
          }
        },
      ),
      { numRuns: 300, seed: 11 },
    );
    assert.ok(rejected > 250, `only ${rejected} of 300 damaged files were rejected`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors with checksums: the streamed reader rejects a flipped data byte after the tensor's last chunk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.safetensors`;
    const data = new Float32Array([1, 2, 3, 4, 5]);
    await writeSafetensors(path, {
      tensors: { w: { dtype: "F32", shape: [5], data } },
      metadata: { note: "x" },
    }, { checksums: true });
    const bytes = await Deno.readFile(path);
    bytes[bytes.length - 3] ^= 1;
    await Deno.writeFile(path, bytes);
    const r = await openSafetensors(path);
    try {
      assert.ok(r.checksummed);
      await assert.rejects(
        () => r.read("w", () => {}, 4),
        /tensor w does not match its checksum/,
      );
    } finally {
      r.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checksums are SHA-256, named in the header; files with the older 64-bit sum still verify", async () => {
  const data = new Float32Array([1, 2, 3, 4, 5]);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.safetensors`;
    await writeSafetensors(path, {
      tensors: { w: { dtype: "F32", shape: [5], data } },
      metadata: { note: "x" },
    }, { checksums: true });
    const md = (await readSafetensors(path)).metadata;
    assert.equal(md[CHECKSUM_ALGORITHM_KEY], "sha256");
    // Any SHA-256 tool can verify it.
    assert.equal(md[CHECKSUMS_KEY], sha256(new Uint8Array(data.buffer)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // A file as checkpoints v2 wrote it: no algorithm entry, 16-digit sums of core/checksum.ts.
  const legacy = (sums: string, algorithm?: string) => {
    const md: Record<string, string> = { note: "x" };
    if (algorithm !== undefined) md[CHECKSUM_ALGORITHM_KEY] = algorithm;
    const ts = [["w", "F32", [5], 0, 20]];
    const head = [...Object.keys(md).sort().map((k) => [k, md[k]])];
    md[CHECKSUMS_KEY] = sums;
    md[HEADER_CHECKSUM_KEY] = checksumOf(JSON.stringify([head, ts]));
    return encodeSafetensors({ tensors: { w: { dtype: "F32", shape: [5], data } }, metadata: md });
  };
  const good = checksumOf(new Uint8Array(data.buffer));
  assert.deepEqual(decodeSafetensors(legacy(good)).tensors.w.shape, [5]);
  const bad = legacy(good);
  bad[bad.length - 1] ^= 1;
  assert.throws(() => decodeSafetensors(bad), /tensor w does not match its checksum/);
  assert.throws(
    () => decodeSafetensors(legacy(good, "md5")),
    /checksums by "md5"; this build verifies sha256/,
  );
});
