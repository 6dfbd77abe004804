/**
 * A seeded, portable pseudo-random generator (xoshiro128**, seeded by splitmix32). It runs on the
 * CPU with 32-bit integer arithmetic only, so a seed gives the same stream on every machine.
 * @module
 */

/** Serializable generator state, e.g. for checkpoints. */
export type RngState = [number, number, number, number];

function splitmix32(x: number): [number, number] {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return [x, (z ^ (z >>> 16)) >>> 0];
}

/** A xoshiro128** generator. */
export class Rng {
  #s: Uint32Array;

  /** Seeds from any safe integer (both 32-bit halves are used). */
  constructor(seed: number | RngState) {
    this.#s = new Uint32Array(4);
    if (Array.isArray(seed)) {
      this.#s.set(seed);
    } else {
      if (!Number.isSafeInteger(seed)) {
        throw new RangeError(`Rng seed must be a safe integer, got ${seed}`);
      }
      let x = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) | 0, 0x27d4eb2d);
      for (let i = 0; i < 4; i++) {
        const [nx, out] = splitmix32(x);
        x = nx;
        this.#s[i] = out;
      }
      if (this.#s.every((v) => v === 0)) this.#s[0] = 1;
    }
  }

  /** The next uniformly distributed 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** A uniform float in [0, 1) with 24 random bits (exactly representable in f32). */
  nextFloat(): number {
    return (this.nextU32() >>> 8) * 2 ** -24;
  }

  /** A uniform integer in [0, n) without modulo bias. */
  nextInt(n: number): number {
    if (!(n > 0 && n <= 2 ** 32)) {
      throw new RangeError(`nextInt bound must be in (0, 2^32], got ${n}`);
    }
    const limit = 2 ** 32 - (2 ** 32 % n);
    let x: number;
    do x = this.nextU32(); while (x >= limit);
    return x % n;
  }

  /** A standard normal sample (Box–Muller). */
  nextNormal(): number {
    const u1 = 1 - this.nextFloat();
    const u2 = this.nextFloat();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** The generator's state, restorable with `new Rng(state)`. */
  state(): RngState {
    return [this.#s[0], this.#s[1], this.#s[2], this.#s[3]];
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** The 32-bit FNV-1a hash of `s`'s UTF-8 bytes: a stable key for a parameter path and the like. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(s)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}
