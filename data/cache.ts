/**
 * On-disk token cache keyed by the corpus content and the tokenizer, so a second run starts at once.
 * @module
 */
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
 * count, lengths) followed by the ids; a file that fails validation is ignored and rewritten.
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

const MAGIC = 0x534c544b; // "SLTK"

async function readCache(file: string, count: number): Promise<TokenizedDocs | null> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(file);
  } catch {
    return null;
  }
  if (bytes.byteLength < 8 || bytes.byteLength % 4 !== 0) return null;
  const u = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
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

async function writeCache(file: string, docs: TokenizedDocs): Promise<void> {
  const total = docs.reduce((a, d) => a + d.length, 0);
  const u = new Uint32Array(2 + docs.length + total);
  u[0] = MAGIC;
  u[1] = docs.length;
  docs.forEach((d, i) => (u[2 + i] = d.length));
  let off = 2 + docs.length;
  for (const d of docs) {
    u.set(d, off);
    off += d.length;
  }
  try {
    await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
    const tmp = `${file}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, new Uint8Array(u.buffer));
    await Deno.rename(tmp, file);
  } catch {
    // A read-only or full disk only costs the next run a re-tokenization.
  }
}
