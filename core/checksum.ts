/**
 * A fast streaming 64-bit checksum for files the trainer writes (checkpoints, token caches), so a
 * flipped bit or a cut file is reported instead of silently changing a run. Not cryptographic: it
 * guards against corruption, not against someone forging a file.
 * @module
 */

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

function fmix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), P2);
  h = Math.imul(h ^ (h >>> 13), P3);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Hashes bytes fed in pieces of any size into 16 hex digits. Each 32-bit word updates two lanes
 * through steps that are one-to-one in both the lane and the word, so changing any single word
 * always changes the digest; other corruptions go unnoticed with probability about 2⁻⁶⁴.
 */
export class Checksum {
  #a = 0x165667b1;
  #b = 0x27d4eb2f;
  #bytes = 0;
  #tail = new Uint8Array(4);
  #tailLen = 0;

  /** Feeds the next bytes. */
  update(bytes: Uint8Array): this {
    let i = 0;
    this.#bytes += bytes.byteLength;
    while (this.#tailLen > 0 && this.#tailLen < 4 && i < bytes.byteLength) {
      this.#tail[this.#tailLen++] = bytes[i++];
    }
    if (this.#tailLen === 4) {
      this.#word(new Uint32Array(this.#tail.buffer)[0]);
      this.#tailLen = 0;
    }
    const words = (bytes.byteLength - i) >> 2;
    if (words > 0) {
      const start = bytes.byteOffset + i;
      const w = start % 4 === 0
        ? new Uint32Array(bytes.buffer, start, words)
        : new Uint32Array(bytes.slice(i, i + 4 * words).buffer);
      let a = this.#a, b = this.#b;
      for (let k = 0; k < w.length; k++) {
        const x = w[k];
        a = Math.imul(rotl(a ^ x, 13), P1);
        b = Math.imul(rotl((b + x) | 0, 17), P2);
      }
      this.#a = a;
      this.#b = b;
      i += 4 * words;
    }
    while (i < bytes.byteLength) this.#tail[this.#tailLen++] = bytes[i++];
    return this;
  }

  #word(x: number): void {
    this.#a = Math.imul(rotl(this.#a ^ x, 13), P1);
    this.#b = Math.imul(rotl((this.#b + x) | 0, 17), P2);
  }

  /** The digest of everything fed so far: 16 lowercase hex digits (the length is mixed in). */
  digest(): string {
    let a = this.#a, b = this.#b;
    for (let k = 0; k < this.#tailLen; k++) {
      a = Math.imul(rotl(a ^ (this.#tail[k] | 0x100), 13), P1);
      b = Math.imul(rotl((b + this.#tail[k]) | 0, 17), P2);
    }
    const n = this.#bytes;
    a = fmix(a ^ (n >>> 0) ^ Math.imul(b, P3));
    b = fmix(b ^ Math.floor(n / 2 ** 32) ^ a);
    return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
  }
}

/** The checksum of one byte array (or of a string's UTF-8 bytes). */
export function checksumOf(data: Uint8Array | string): string {
  return new Checksum().update(typeof data === "string" ? new TextEncoder().encode(data) : data)
    .digest();
}
