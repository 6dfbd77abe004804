/**
 * CPU halves of the reduced-precision formats: bf16 conversions and the 8-bit dynamic code books
 * with block-wise quantization (the device kernels are checked against these).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { fromBf16Bits, packBf16, toBf16Bits, unpackBf16 } from "../core/bf16.ts";
import {
  dequantizeBlockwise,
  dynamicMap,
  nearestCode,
  QUANT_BLOCK,
  quantizeBlockwise,
} from "../ops/quant_maps.ts";

const f32 = fc.float({ noNaN: true, noDefaultInfinity: true });
// bf16's largest finite value is 3.3895e38; beyond max + half an ulp values round to ±Infinity.
const inRange = fc.float({ noNaN: true, min: Math.fround(-3.38e38), max: Math.fround(3.38e38) });

Deno.test("bf16: the nearest representable value, ties to even, exact for bf16 values", () => {
  fc.assert(
    fc.property(inRange, (x) => {
      const b = toBf16Bits(x);
      const y = fromBf16Bits(b);
      // No other bf16 value is closer: check both neighbours of the chosen bit pattern.
      for (const nb of [b - 1, b + 1]) {
        if ((nb & 0x7f80) === 0x7f80 || nb < 0 || nb > 0xffff || ((nb ^ b) & 0x8000) !== 0) {
          continue;
        }
        assert.ok(Math.abs(x - y) <= Math.abs(x - fromBf16Bits(nb)), `${x} -> ${y}`);
      }
      // Round trip of a bf16 value is exact.
      assert.equal(fromBf16Bits(toBf16Bits(y)), y);
    }),
    { numRuns: 2000, seed: 7 },
  );
  // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and rounds to the even one (1).
  assert.equal(fromBf16Bits(toBf16Bits(1 + 2 ** -8)), 1);
  assert.equal(fromBf16Bits(toBf16Bits(1 + 3 * 2 ** -8)), 1 + 2 ** -6);
  assert.ok(Number.isNaN(fromBf16Bits(toBf16Bits(NaN))));
  assert.equal(fromBf16Bits(toBf16Bits(Infinity)), Infinity);
  assert.equal(fromBf16Bits(toBf16Bits(3.5e38)), Infinity);
});

Deno.test("bf16: pack and unpack round-trip bf16 values of any length", () => {
  fc.assert(
    fc.property(fc.array(f32, { maxLength: 33 }), (xs) => {
      const rounded = xs.map((x) => fromBf16Bits(toBf16Bits(x)));
      const back = unpackBf16(packBf16(xs), xs.length);
      assert.deepEqual([...back], rounded.map((v) => Math.fround(v)));
    }),
    { numRuns: 300, seed: 11 },
  );
});

Deno.test("dynamic maps: 256 sorted distinct codes in [-1, 1] (signed) or [0, 1] (unsigned)", () => {
  for (const signed of [true, false]) {
    const m = dynamicMap(signed);
    assert.equal(m.length, 256);
    for (let i = 1; i < 256; i++) assert.ok(m[i] > m[i - 1], `code ${i} not above code ${i - 1}`);
    assert.equal(m[255], 1);
    assert.equal(m[signed ? 0 : 0], signed ? -m[254] : 0);
    assert.ok(m.includes(0));
    // Seven decades: the smallest nonzero magnitude is about 1e-7 (0.1 · 1e-6 scaled midpoints).
    const small = Math.min(...[...m].filter((v) => v > 0));
    assert.ok(small > 5e-8 && small < 1e-6, `smallest positive code ${small}`);
  }
});

Deno.test("nearestCode picks a code no farther than any other", () => {
  const maps = [dynamicMap(true), dynamicMap(false)];
  fc.assert(
    fc.property(fc.boolean(), fc.double({ min: -1.2, max: 1.2, noNaN: true }), (signed, x) => {
      const m = maps[signed ? 0 : 1];
      const c = nearestCode(m, x);
      const best = Math.min(...[...m].map((v) => Math.abs(v - x)));
      assert.equal(Math.abs(m[c] - x), best);
    }),
    { numRuns: 2000, seed: 3 },
  );
});

Deno.test("block-wise quantization: error per element within half the local code gap times absmax", () => {
  const maps = [dynamicMap(true), dynamicMap(false)];
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.integer({ min: 1, max: 3 * QUANT_BLOCK + 17 }),
      fc.integer({ min: 1, max: 2 ** 30 }),
      fc.double({ min: 1e-6, max: 1e3, noNaN: true }),
      (signed, n, seed, scale) => {
        const map = maps[signed ? 0 : 1];
        let s = seed;
        const x = Float32Array.from({ length: n }, () => {
          s = (s * 1103515245 + 12345) % 2 ** 31;
          const u = s / 2 ** 31;
          return signed ? (2 * u - 1) * scale : u * scale;
        });
        const { codes, absmax } = quantizeBlockwise(x, map);
        const y = dequantizeBlockwise(codes, absmax, map);
        for (let i = 0; i < n; i++) {
          const a = absmax[Math.floor(i / QUANT_BLOCK)];
          const c = codes[i];
          const gap = Math.max(
            c > 0 ? map[c] - map[c - 1] : 0,
            c < 255 ? map[c + 1] - map[c] : 0,
          );
          assert.ok(
            Math.abs(x[i] - y[i]) <= (gap / 2) * a * (1 + 1e-4) + 1e-12 * a,
            `element ${i}: ${x[i]} -> ${y[i]} (absmax ${a}, gap ${gap})`,
          );
        }
        // A block's largest positive magnitude is exact (code 1.0); the signed map has no -1.0.
        for (let b = 0; b < absmax.length; b++) {
          const blk = [...x.subarray(b * QUANT_BLOCK, (b + 1) * QUANT_BLOCK)];
          const k = blk.findIndex((v) => v === absmax[b]);
          if (k >= 0) assert.equal(y[b * QUANT_BLOCK + k], absmax[b]);
        }
      },
    ),
    { numRuns: 60, seed: 5 },
  );
});
