/**
 * The 8-bit "dynamic" code books of block-wise quantization (bitsandbytes' `create_dynamic_map`,
 * Dettmers et al. 2022) and a float64 CPU reference of block-wise quantization, used by the
 * device kernels' tests and by the 8-bit optimizer states.
 *
 * A value x of a block is stored as the index of the code nearest to x / absmax(block), with one
 * f32 absmax per block. The dynamic map spends its 8 bits like a float with a variable-width
 * exponent: 7 decades (1e-6 … 1) with more codes in the upper decades, so both the large and the
 * small entries of an optimizer moment keep a few significant digits.
 * @module
 */

/** Elements per quantization block (bitsandbytes' blockwise default since 2024, torchao's 8-bit). */
export const QUANT_BLOCK = 256;

/** Tensors with fewer elements keep f32 states (bitsandbytes' `min_8bit_size`). */
export const MIN_8BIT_SIZE = 4096;

/**
 * The 256 sorted codes of the dynamic map: `signed` (for Adam's first moment) has 127 negative,
 * 0, 127 positive codes and 1.0; unsigned (for the second moment) has 0, 254 positive codes and
 * 1.0. For decade i = 0…6, the midpoints of `linspace(0.1, 1, k + 1)` scaled by 10^(i−6), with
 * k = 2^i (signed, both signs) or 2^(i+1) (unsigned).
 */
export function dynamicMap(signed: boolean): Float32Array {
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const k = signed ? 2 ** i : 2 ** (i + 1);
    const scale = 10 ** (i - 6);
    for (let j = 0; j < k; j++) {
      const a = 0.1 + (0.9 * j) / k;
      const b = 0.1 + (0.9 * (j + 1)) / k;
      const mid = scale * ((a + b) / 2);
      data.push(mid);
      if (signed) data.push(-mid);
    }
  }
  data.push(0, 1);
  if (data.length !== 256) throw new Error(`dynamicMap: built ${data.length} codes, not 256`);
  return Float32Array.from(data.sort((x, y) => x - y));
}

/**
 * Index of the code nearest to `x` in the sorted `map` (ties to the lower index), by binary search
 * as the kernels do it: the first code >= x, then whichever neighbour is closer.
 */
export function nearestCode(map: Float32Array, x: number): number {
  let lo = 0;
  let hi = map.length - 1;
  if (x <= map[0]) return 0;
  if (x >= map[hi]) return hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (map[mid] < x) lo = mid;
    else hi = mid;
  }
  return x - map[lo] <= map[hi] - x ? lo : hi;
}

/** Block-wise quantization of `x` on the CPU: codes (one byte each) and one absmax per block. */
export function quantizeBlockwise(
  x: ArrayLike<number>,
  map: Float32Array,
  block = QUANT_BLOCK,
): { codes: Uint8Array; absmax: Float32Array } {
  const n = x.length;
  const codes = new Uint8Array(n);
  const absmax = new Float32Array(Math.ceil(n / block));
  for (let b = 0; b * block < n; b++) {
    const end = Math.min(n, (b + 1) * block);
    let m = 0;
    for (let i = b * block; i < end; i++) m = Math.max(m, Math.abs(x[i]));
    absmax[b] = m;
    const inv = m > 0 ? 1 / Math.fround(m) : 0;
    for (let i = b * block; i < end; i++) codes[i] = nearestCode(map, Math.fround(x[i] * inv));
  }
  return { codes, absmax };
}

/** The values that block-wise `codes` and `absmax` stand for. */
export function dequantizeBlockwise(
  codes: Uint8Array,
  absmax: Float32Array,
  map: Float32Array,
  block = QUANT_BLOCK,
): Float32Array {
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) out[i] = map[codes[i]] * absmax[Math.floor(i / block)];
  return out;
}
