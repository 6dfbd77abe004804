/**
 * On-disk token cache keyed by the corpus content and the tokenizer, so a second run starts at once.
 * @module
 */
import { Checksum } from "../core/checksum.ts";
import type { Doc } from "./brown.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { sha256OfParts } from "./hash.ts";

/** Tokenized documents: one Uint32Array of ids per document. */
export type TokenizedDocs = Uint32Array[];

/** Default cache folder: `$SLTRAIN_CACHE` or `~/.cache/sltrain/tokens`. */
export function defaultCacheDir(): string {
  const env = Deno.env.get("SLTRAIN_CACHE");
  if (env) return env;
  return `${Deno.env.get("HOME") ?? "."}/.cache/sltrain/tokens`;
}

/**
 * Tokenizes documents, reading from or writing to the cache. The file is a small header (magic,
 * count, lengths), the ids, and a checksum of all of it; a file that fails validation (cut, a
 * flipped bit, an older format) is ignored and rewritten, so a damaged cache costs a
 * re-tokenization, never different tokens.
 */
export async function tokenizeCached(
  docs: readonly Doc[],
  tok: Tokenizer,
  cacheDir: string | null = defaultCacheDir(),
): Promise<{ docs: TokenizedDocs; cached: boolean }> {
  const key = await sha256OfParts([tok.name, ...docs.map((d) => d.text)]);
  const file = cacheDir ? `${cacheDir}/${key}.bin` : null;
  if (file) {
    const hit = await readCache(file, docs.length);
    if (hit) return { docs: hit, cached: true };
  }
  const out = docs.map((d) => Uint32Array.from(tok.encode(d.text)));
  if (file) await writeCache(file, out);
  return { docs: out, cached: false };
}

const MAGIC = 0x324c5453; // "STL2": the checksummed format
const CHECKSUM_WORDS = 2;

async function readCache(file: string, count: number): Promise<TokenizedDocs | null> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch {
    return null;
  }
  if (bytes.byteLength < 8 + 4 * CHECKSUM_WORDS || bytes.byteLength % 4 !== 0) return null;
  const body = bytes.subarray(0, bytes.byteLength - 4 * CHECKSUM_WORDS);
  if (digestWords(body).some((w, i) => w !== tail(bytes)[i])) return null;
  const u = new Uint32Array(body.buffer, body.byteOffset, body.byteLength / 4);
  if (u[0] !== MAGIC || u[1] !== count || u.length < 2 + count) return null;
  const lens = u.subarray(2, 2 + count);
  const total = lens.reduce((a, b) => a + b, 0);
  if (u.length !== 2 + count + total) return null;
  const docs: TokenizedDocs = [];
  let off = 2 + count;
  for (const n of lens) {
    docs.push(u.slice(off, off + n));
    off += n;
  }
  return docs;
}

function tail(bytes: Uint8Array): Uint32Array {
  return new Uint32Array(bytes.slice(bytes.byteLength - 4 * CHECKSUM_WORDS).buffer);
}

function digestWords(bytes: Uint8Array): Uint32Array {
  const hex = new Checksum().update(bytes).digest();
  return Uint32Array.from([parseInt(hex.slice(0, 8), 16), parseInt(hex.slice(8), 16)]);
}

async function writeCache(file: string, docs: TokenizedDocs): Promise<void> {
  const total = docs.reduce((a, d) => a + d.length, 0);
  const u = new Uint32Array(2 + docs.length + total + CHECKSUM_WORDS);
  u[0] = MAGIC;
  u[1] = docs.length;
  docs.forEach((d, i) => (u[2 + i] = d.length));
  let off = 2 + docs.length;
  for (const d of docs) {
    u.set(d, off);
    off += d.length;
  }
  u.set(digestWords(new Uint8Array(u.buffer, 0, 4 * off)), off);
  try {
    await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
    const tmp = `${file}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, new Uint8Array(u.buffer));
    await Deno.rename(tmp, file);
  } catch {
    // A read-only or full disk only costs the next run a re-tokenization.
  }
}
