/**
 * Content hashes for cache keys and tokenizer identities.
 * @module
 */

/** SHA-256 of `bytes` as lowercase hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(h, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * SHA-256 of several strings, each length-prefixed so that different splits of the same
 * characters (["ab", "c"] vs ["a", "bc"]) hash differently.
 */
export function sha256OfParts(parts: readonly string[]): Promise<string> {
  const enc = new TextEncoder();
  const chunks = parts.map((p) => enc.encode(p));
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length + 4, 0));
  let off = 0;
  for (const c of chunks) {
    new DataView(all.buffer).setUint32(off, c.length);
    all.set(c, off + 4);
    off += c.length + 4;
  }
  return sha256Hex(all);
}
