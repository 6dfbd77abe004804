/**
 * bfloat16 on the CPU: conversions between f32 values and bf16 bit patterns, packed two per 32-bit
 * word (element 2k in the low half, 2k+1 in the high half), the layout bf16 tensors have on the
 * device and in safetensors files (little-endian).
 * @module
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * The bf16 bit pattern nearest to `x` (round to nearest, ties to even), as the GPU kernels store
 * it. NaN stays a (quiet) NaN; values beyond bf16's range round to ±Infinity.
 */
export function toBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) {
    return ((bits >>> 16) | 0x0040) & 0xffff;
  }
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** The f32 value of a bf16 bit pattern (exact: bf16 is a truncated f32). */
export function fromBf16Bits(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/** Packs f32 values into bf16 words (two per u32, round to nearest even); odd lengths pad with 0. */
export function packBf16(values: ArrayLike<number>): Uint32Array {
  const out = new Uint32Array(Math.ceil(values.length / 2));
  for (let i = 0; i < values.length; i += 2) {
    const lo = toBf16Bits(values[i]);
    const hi = i + 1 < values.length ? toBf16Bits(values[i + 1]) : 0;
    out[i >> 1] = (lo | (hi << 16)) >>> 0;
  }
  return out;
}

/** Unpacks `n` bf16 values from packed words into f32. */
export function unpackBf16(words: Uint32Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const view = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) {
    const w = words[i >> 1];
    view[i] = (i & 1) === 0 ? (w << 16) >>> 0 : (w & 0xffff0000) >>> 0;
  }
  return out;
}
