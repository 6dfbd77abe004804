/**
 * Token shards: a tokenized corpus on disk, streamed during training with host memory bounded by
 * a read window instead of the corpus.
 *
 * A shard folder holds `manifest.json`, and per split (`train`, `val`) the token stream (each
 * document's ids followed by the tokenizer's end-of-text id, as `packedSequences` packs them
 * in memory) cut into shards `train-00000.bin`, … of exactly `shardTokens` ids (the last
 * one shorter), and a document index `train.docs`. Every number is little-endian.
 *
 * - shard: 32-byte header — magic `SLTS`, u32 version (2), u32 bytes per id (2 = uint16, used
 *   when the vocabulary has at most 65536 ids; 4 = uint32), u32 id count, u32 checksum chunk bytes,
 *   the checksum's hash name in 12 ASCII bytes padded with zeros (`sha256`) — then the ids, then
 *   the checksums: the SHA-256 (32 bytes) of each chunk of the ids' bytes, the last chunk shorter.
 * - document index: the same 32-byte header with magic `SLTD`, entry bytes (16) and 0 in place of
 *   bytes per id and id count — then one entry per non-empty document: u64 offset of its first id
 *   in the split's stream, u64 its length (without the end-of-text id) — then the entries'
 *   checksums as in a shard. `--packing none` reads documents through it.
 *
 * Any tool can verify a chunk: `tail -c +$((33 + k * 4096)) train-00000.bin | head -c 4096 |
 * sha256sum` against the k-th 32 bytes after the ids. Opening a folder checks the manifest, every
 * header and every file size against it, so a truncated shard is reported before training starts;
 * each read verifies the chunks it touches, so a damaged byte is an error naming the file and its
 * offset, never a wrong token. Version 1 folders (without checksums) are refused: prepare again.
 * @module
 */
import {
  documentWindows,
  packedWindows,
  type Packing,
  type Sequences,
  type TokenSource,
} from "./batches.ts";
import type { Tokenizer } from "./tokenizer.ts";
import { Sha256 } from "../core/sha256.ts";

/** Manifest `format` of a shard folder. */
export const SHARD_FORMAT = "sltrain-shards";
/** Version of the manifest, shard and index layouts this build reads and writes. */
export const SHARD_VERSION = 2;
/** Header bytes of a shard and of a document index. */
export const HEADER_BYTES = 32;
/** The hash of the per-chunk checksums, as named in headers and the manifest. */
export const CHUNK_HASH = "sha256";
/** Bytes of ids (or index entries) per checksum. */
export const CHUNK_BYTES = 4096;
const DIGEST_BYTES = 32;
/** Largest manifest.json read (one of a terabyte corpus is a few MB). */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;
const SHARD_MAGIC = "SLTS";
const INDEX_MAGIC = "SLTD";
const INDEX_ENTRY_BYTES = 16;

/** Element type of the ids in a shard. */
export type ShardDtype = "uint16" | "uint32";

/** The narrowest dtype that holds every id of a vocabulary. */
export function dtypeFor(vocabSize: number): ShardDtype {
  return vocabSize <= 65536 ? "uint16" : "uint32";
}

const BYTES: Record<ShardDtype, 2 | 4> = { uint16: 2, uint32: 4 };

/** A shard folder that is missing, corrupt, truncated, or of another version. */
export class ShardError extends Error {
  /** Error class name. */
  override name = "ShardError";
}

/** One split of a shard folder, as recorded in its manifest. */
export interface SplitManifest {
  /** Ids in the split's stream, end-of-text ids included. */
  tokens: number;
  /** Non-empty documents (entries of the index). */
  docs: number;
  /** Shard file names, in stream order. */
  shards: string[];
  /** Document index file name. */
  index: string;
}

/** The tokenizer a shard folder was made with. */
export interface ShardTokenizer {
  /** {@link Tokenizer.name} (for a tokenizer.json, it holds the file's content hash). */
  name: string;
  /** Number of ids. */
  vocabSize: number;
  /** End-of-text id. */
  eos: number;
  /** Padding id. */
  pad: number;
  /** `bytes` or `llama` for a preset; absent when the folder holds `tokenizer.json`. */
  preset?: string;
  /** Tokenizer files copied into the folder (e.g. `tokenizer.json`). */
  files: string[];
}

/** `manifest.json` of a shard folder. */
export interface ShardManifest {
  /** Always {@link SHARD_FORMAT}. */
  format: typeof SHARD_FORMAT;
  /** {@link SHARD_VERSION}. */
  version: number;
  /** Element type of every shard. */
  dtype: ShardDtype;
  /** Ids per shard (all but the last shard of a split hold exactly this many). */
  shardTokens: number;
  /** The tokenizer. */
  tokenizer: ShardTokenizer;
  /** Training and validation streams. */
  splits: { train: SplitManifest; val: SplitManifest };
  /** What was tokenized, for the record. */
  source: { data: string; valData: string | null; valFraction: number | null };
  /** How every shard and index is checksummed (also in each file's header). */
  checksum: { algorithm: typeof CHUNK_HASH; chunkBytes: number };
}

function header(magic: string, a: number, b: number): Uint8Array {
  const h = new Uint8Array(HEADER_BYTES);
  const enc = new TextEncoder();
  h.set(enc.encode(magic));
  const v = new DataView(h.buffer);
  v.setUint32(4, SHARD_VERSION, true);
  v.setUint32(8, a, true);
  v.setUint32(12, b, true);
  v.setUint32(16, CHUNK_BYTES, true);
  h.set(enc.encode(CHUNK_HASH), 20);
  return h;
}

/** Bytes of the checksums after a payload of `bytes`. */
function trailerBytes(bytes: number, chunk: number): number {
  return Math.ceil(bytes / chunk) * DIGEST_BYTES;
}

/** SHA-256 of each `chunk` bytes of a stream fed in pieces, concatenated. */
class ChunkSums {
  #sum = new Sha256();
  #fill = 0;
  #digests: Uint8Array[] = [];

  update(bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length;) {
      const n = Math.min(CHUNK_BYTES - this.#fill, bytes.length - i);
      this.#sum.update(bytes.subarray(i, i + n));
      this.#fill += n;
      i += n;
      if (this.#fill === CHUNK_BYTES) this.#next();
    }
  }

  #next(): void {
    this.#digests.push(this.#sum.digestBytes());
    this.#sum = new Sha256();
    this.#fill = 0;
  }

  /** The checksums of everything fed (the last chunk may be short). */
  finish(): Uint8Array {
    if (this.#fill > 0) this.#next();
    const out = new Uint8Array(this.#digests.length * DIGEST_BYTES);
    this.#digests.forEach((d, k) => out.set(d, k * DIGEST_BYTES));
    this.#digests = [];
    return out;
  }
}

/**
 * Writes one split's stream as shards and its document index. Documents arrive as pieces of ids
 * ({@link SplitWriter.push}) closed by {@link SplitWriter.endDoc}; memory is one shard's buffer.
 */
export class SplitWriter {
  #buf: Uint16Array | Uint32Array;
  #fill = 0;
  #tokens = 0;
  #docStart = 0;
  #docs = 0;
  #shards: string[] = [];
  #entries = new BigUint64Array(2 * 8192);
  #entryFill = 0;
  #index: string;
  #indexSums = new ChunkSums();
  /** Element type of the shards: the narrowest that holds the vocabulary. */
  readonly dtype: ShardDtype;

  /** Starts a split named `split` in `dir` (which must exist). */
  constructor(
    readonly dir: string,
    readonly split: string,
    readonly vocabSize: number,
    readonly shardTokens: number,
  ) {
    if (!(Number.isInteger(shardTokens) && shardTokens > 0 && shardTokens <= 2 ** 31)) {
      throw new RangeError(`shard size must be an integer in [1, 2^31] ids, got ${shardTokens}`);
    }
    const dtype = this.dtype = dtypeFor(vocabSize);
    this.#buf = dtype === "uint16" ? new Uint16Array(shardTokens) : new Uint32Array(shardTokens);
    this.#index = `${split}.docs`;
    Deno.writeFileSync(`${dir}/${this.#index}`, header(INDEX_MAGIC, INDEX_ENTRY_BYTES, 0));
  }

  /** Appends ids of the current document. */
  async push(ids: ArrayLike<number>): Promise<void> {
    for (let i = 0; i < ids.length;) {
      const n = Math.min(ids.length - i, this.#buf.length - this.#fill);
      for (let k = 0; k < n; k++) {
        const id = ids[i + k];
        if (!(id >= 0 && id < this.vocabSize && Number.isInteger(id))) {
          throw new RangeError(`token id ${id} outside the vocabulary of ${this.vocabSize}`);
        }
        this.#buf[this.#fill + k] = id;
      }
      this.#fill += n;
      this.#tokens += n;
      i += n;
      if (this.#fill === this.#buf.length) await this.#flushShard();
    }
  }

  /** Ends the current document: records it in the index (when non-empty) and appends `eos`. */
  async endDoc(eos: number): Promise<void> {
    const len = this.#tokens - this.#docStart;
    if (len > 0) {
      this.#entries[this.#entryFill++] = BigInt(this.#docStart);
      this.#entries[this.#entryFill++] = BigInt(len);
      this.#docs++;
      if (this.#entryFill === this.#entries.length) await this.#flushIndex();
    }
    await this.push([eos]);
    this.#docStart = this.#tokens;
  }

  async #flushShard(): Promise<void> {
    if (this.#fill === 0) return;
    const name = `${this.split}-${String(this.#shards.length).padStart(5, "0")}.bin`;
    const file = `${this.dir}/${name}`;
    const b = BYTES[this.dtype];
    const ids = new Uint8Array(this.#buf.buffer, 0, this.#fill * b);
    const sums = new ChunkSums();
    sums.update(ids);
    await Deno.writeFile(file, header(SHARD_MAGIC, b, this.#fill));
    await Deno.writeFile(file, ids, { append: true });
    await Deno.writeFile(file, sums.finish(), { append: true });
    this.#shards.push(name);
    this.#fill = 0;
  }

  async #flushIndex(): Promise<void> {
    const bytes = new Uint8Array(this.#entries.buffer, 0, this.#entryFill * 8);
    this.#indexSums.update(bytes);
    await Deno.writeFile(`${this.dir}/${this.#index}`, bytes, { append: true });
    this.#entryFill = 0;
  }

  /** Ids written so far. */
  get tokens(): number {
    return this.#tokens;
  }

  /** Writes what is buffered and returns the split's manifest entry. */
  async finish(): Promise<SplitManifest> {
    await this.#flushShard();
    await this.#flushIndex();
    await Deno.writeFile(`${this.dir}/${this.#index}`, this.#indexSums.finish(), { append: true });
    return { tokens: this.#tokens, docs: this.#docs, shards: this.#shards, index: this.#index };
  }
}

/** One split of an opened shard folder: its stream and its documents, read on demand. */
export interface ShardSplit extends TokenSource {
  /** Non-empty documents. */
  readonly docs: number;
  /** The first `max` ids of document `i` (or all of them). */
  doc(i: number, max: number): Uint32Array;
}

/** An opened, validated shard folder. */
export interface ShardSet {
  /** The folder. */
  readonly dir: string;
  /** Its manifest. */
  readonly manifest: ShardManifest;
  /** Training stream. */
  readonly train: ShardSplit;
  /** Validation stream. */
  readonly val: ShardSplit;
}

/** Whether `path` is a shard folder (a folder with a `manifest.json`). */
export async function isShardDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(`${path}/manifest.json`)).isFile;
  } catch {
    return false;
  }
}

function readAt(path: string, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  using f = Deno.openSync(path);
  f.seekSync(offset, Deno.SeekMode.Start);
  for (let got = 0; got < length;) {
    const n = f.readSync(out.subarray(got));
    if (n === null || n === 0) throw new ShardError(`${path}: ended early (truncated)`);
    got += n;
  }
  return out;
}

const REPREPARE = "prepare the folder again with this version (prepare.ts or ./sltrain prepare)";

function checkHeader(
  path: string,
  bytes: Uint8Array,
  magic: string,
  expect: [number, string][],
): void {
  if (new TextDecoder().decode(bytes.subarray(0, 4)) !== magic) {
    throw new ShardError(`${path}: wrong magic (not an sltrain ${magic} file)`);
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  const version = v.getUint32(4, true);
  if (version !== SHARD_VERSION) {
    throw new ShardError(
      `${path}: version ${version}, but this build reads version ${SHARD_VERSION}` +
        (version === 1 ? ` (version 1 has no checksums): ${REPREPARE}` : ""),
    );
  }
  const hash = new TextDecoder().decode(bytes.subarray(20, 32)).replace(/\0+$/, "");
  if (hash !== CHUNK_HASH) {
    throw new ShardError(
      `${path}: checksums by ${JSON.stringify(hash)}, this build verifies ${CHUNK_HASH}`,
    );
  }
  [...expect, [CHUNK_BYTES, "checksum chunk bytes"] as [number, string]].forEach(
    ([want, what], k) => {
      const got = v.getUint32(8 + 4 * k, true);
      if (got !== want) {
        throw new ShardError(`${path}: header says ${what} ${got}, expected ${want}`);
      }
    },
  );
}

/** The payload of a checksummed file, and which of its chunks this process has verified. */
interface Checked {
  path: string;
  /** Payload bytes. */
  total: number;
  /** One bit per chunk; null when reads are not verified (the overhead bench only). */
  verified: Uint8Array | null;
}

function checked(path: string, total: number, verify: boolean): Checked {
  const chunks = Math.ceil(total / CHUNK_BYTES);
  return { path, total, verified: verify ? new Uint8Array(Math.ceil(chunks / 8)) : null };
}

const isVerified = (bits: Uint8Array, c: number) => (bits[c >> 3] & (1 << (c & 7))) !== 0;

/**
 * `length` bytes at `offset` of a checksummed file's payload. Each chunk they touch is verified
 * against its stored SHA-256 the first time this process reads it; later reads trust it (the same
 * bytes, read again), so random windows cost about one hash per chunk per run.
 */
function readVerified(file: Checked, offset: number, length: number): Uint8Array {
  const { path, total, verified } = file;
  const c0 = Math.floor(offset / CHUNK_BYTES);
  const c1 = Math.ceil((offset + length) / CHUNK_BYTES);
  let todo = false;
  for (let c = c0; c < c1 && verified && !todo; c++) todo = !isVerified(verified, c);
  if (!todo) return readAt(path, HEADER_BYTES + offset, length);
  const start = c0 * CHUNK_BYTES;
  const raw = readAt(path, HEADER_BYTES + start, Math.min(c1 * CHUNK_BYTES, total) - start);
  const sums = readAt(path, HEADER_BYTES + total + c0 * DIGEST_BYTES, (c1 - c0) * DIGEST_BYTES);
  for (let c = c0; c < c1; c++) {
    if (isVerified(verified!, c)) continue;
    const a = (c - c0) * CHUNK_BYTES;
    const got = new Sha256().update(raw.subarray(a, a + CHUNK_BYTES)).digestBytes();
    const want = sums.subarray((c - c0) * DIGEST_BYTES, (c - c0 + 1) * DIGEST_BYTES);
    if (got.some((x, i) => x !== want[i])) {
      const at = HEADER_BYTES + c * CHUNK_BYTES;
      throw new ShardError(
        `${path}: bytes ${at}-${
          at + Math.min(CHUNK_BYTES, total - c * CHUNK_BYTES) - 1
        } (checksum ` +
          `chunk ${c}) do not match their ${CHUNK_HASH} (damaged file): ${REPREPARE}, or restore it`,
      );
    }
    verified![c >> 3] |= 1 << (c & 7);
  }
  return raw.slice(offset - start, offset - start + length);
}

async function checkSize(path: string, want: number): Promise<void> {
  let size: number;
  try {
    size = (await Deno.stat(path)).size;
  } catch {
    throw new ShardError(`${path}: missing`);
  }
  if (size !== want) {
    throw new ShardError(
      `${path}: ${size} bytes, expected ${want} (${size < want ? "truncated" : "trailing data"})`,
    );
  }
}

const isNat = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function checkManifest(path: string, m: ShardManifest): void {
  const bad = (what: string) => {
    throw new ShardError(`${path}: ${what}`);
  };
  if (m?.format !== SHARD_FORMAT) bad(`not an sltrain shard manifest (format ${m?.format})`);
  if (m.version !== SHARD_VERSION) {
    bad(
      `version ${
        JSON.stringify(m.version ?? null)
      }, but this build reads version ${SHARD_VERSION}` +
        (m.version === 1 ? ` (version 1 shards have no checksums): ${REPREPARE}` : ""),
    );
  }
  if (m.checksum?.algorithm !== CHUNK_HASH || m.checksum?.chunkBytes !== CHUNK_BYTES) {
    bad(
      `checksums ${
        JSON.stringify(m.checksum)
      }, this build verifies ${CHUNK_HASH} of ${CHUNK_BYTES}-byte chunks`,
    );
  }
  if (m.dtype !== "uint16" && m.dtype !== "uint32") bad(`unknown dtype ${m.dtype}`);
  if (!(isNat(m.shardTokens) && m.shardTokens > 0)) bad(`bad shardTokens ${m.shardTokens}`);
  const t = m.tokenizer;
  if (!(t && isNat(t.vocabSize) && isNat(t.eos) && isNat(t.pad) && typeof t.name === "string")) {
    bad("bad tokenizer entry");
  }
  if (t.eos >= t.vocabSize || t.pad >= t.vocabSize) bad("tokenizer eos/pad outside its vocabulary");
  if (m.dtype === "uint16" && t.vocabSize > 65536) bad("uint16 shards for a vocabulary over 65536");
  for (const name of ["train", "val"] as const) {
    const s = m.splits?.[name];
    if (!(s && isNat(s.tokens) && isNat(s.docs) && Array.isArray(s.shards))) {
      bad(`bad splits.${name}`);
    }
    if (s.shards.length !== Math.ceil(s.tokens / m.shardTokens)) {
      bad(`splits.${name}: ${s.shards.length} shards for ${s.tokens} tokens of ${m.shardTokens}`);
    }
    if (s.tokens === 0) bad(`splits.${name} is empty`);
    for (const f of [...s.shards, s.index]) {
      if (typeof f !== "string" || f.includes("/") || f.startsWith(".")) {
        bad(`splits.${name}: bad file name ${f}`);
      }
    }
  }
}

async function openSplit(
  dir: string,
  m: ShardManifest,
  s: SplitManifest,
  verify: boolean,
): Promise<ShardSplit> {
  const b = BYTES[m.dtype];
  const per = m.shardTokens;
  const { vocabSize } = m.tokenizer;
  const shards: Checked[] = [];
  for (let k = 0; k < s.shards.length; k++) {
    const path = `${dir}/${s.shards[k]}`;
    const count = k < s.shards.length - 1 ? per : s.tokens - per * k;
    shards.push(checked(path, count * b, verify));
    await checkSize(path, HEADER_BYTES + count * b + trailerBytes(count * b, CHUNK_BYTES));
    checkHeader(path, readAt(path, 0, HEADER_BYTES), SHARD_MAGIC, [[b, "bytes per id"], [
      count,
      "id count",
    ]]);
  }
  const indexPath = `${dir}/${s.index}`;
  const indexBytes = s.docs * INDEX_ENTRY_BYTES;
  await checkSize(indexPath, HEADER_BYTES + indexBytes + trailerBytes(indexBytes, CHUNK_BYTES));
  const index = checked(indexPath, indexBytes, verify);
  checkHeader(indexPath, readAt(indexPath, 0, HEADER_BYTES), INDEX_MAGIC, [
    [INDEX_ENTRY_BYTES, "entry bytes"],
    [0, "reserved"],
  ]);

  const read = (start: number, end: number): Uint32Array => {
    const out = new Uint32Array(end - start);
    for (let p = start; p < end;) {
      const k = Math.floor(p / per);
      const n = Math.min(end, (k + 1) * per) - p;
      const path = shards[k].path;
      const raw = readVerified(shards[k], (p - k * per) * b, n * b);
      const ids = b === 2 ? new Uint16Array(raw.buffer) : new Uint32Array(raw.buffer);
      for (let i = 0; i < n; i++) {
        if (ids[i] >= vocabSize) {
          throw new ShardError(
            `${path}: id ${ids[i]} at position ${
              p - k * per + i
            } is outside the vocabulary of ${vocabSize}`,
          );
        }
      }
      out.set(ids, p - start);
      p += n;
    }
    return out;
  };
  return {
    length: s.tokens,
    docs: s.docs,
    read,
    doc(i, max) {
      const e = new DataView(
        readVerified(index, i * INDEX_ENTRY_BYTES, INDEX_ENTRY_BYTES).buffer,
      );
      const start = Number(e.getBigUint64(0, true));
      const len = Number(e.getBigUint64(8, true));
      if (!(start + len < s.tokens)) {
        throw new ShardError(`${indexPath}: document ${i} lies outside the stream`);
      }
      return read(start, start + Math.min(len, max));
    },
  };
}

/** Options of {@link openShards}. */
export interface OpenShardsOptions {
  /**
   * Verify each chunk read against its checksum (default true); false only to measure what the
   * verification costs.
   */
  verify?: boolean;
}

/** Opens and validates a shard folder; throws {@link ShardError} naming the first problem. */
export async function openShards(dir: string, opts: OpenShardsOptions = {}): Promise<ShardSet> {
  const verify = opts.verify ?? true;
  const path = `${dir}/manifest.json`;
  let manifest: ShardManifest;
  try {
    const size = (await Deno.stat(path)).size;
    if (size > MAX_MANIFEST_BYTES) {
      throw new ShardError(`${path}: ${size} bytes, more than a manifest can plausibly need`);
    }
    manifest = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    if (e instanceof ShardError) throw e;
    throw new ShardError(
      e instanceof SyntaxError ? `${path}: not valid JSON` : `${path}: cannot be read`,
    );
  }
  checkManifest(path, manifest);
  return {
    dir,
    manifest,
    train: await openSplit(dir, manifest, manifest.splits.train, verify),
    val: await openSplit(dir, manifest, manifest.splits.val, verify),
  };
}

/** Training sequences over a shard split, identical to packing the same documents in memory. */
export function shardSequences(
  split: ShardSplit,
  seq: number,
  packing: Packing,
  tok: { eos: number; pad: number },
): Sequences {
  return packing === "packed"
    ? packedWindows(split, seq, tok.pad)
    : documentWindows(split.docs, (i) => split.doc(i, seq + 1), seq, tok.eos, tok.pad);
}

/** The tokenizer fields a manifest records. */
export function manifestTokenizer(tok: Tokenizer, preset?: string): ShardTokenizer {
  return {
    name: tok.name,
    vocabSize: tok.vocabSize,
    eos: tok.eos,
    pad: tok.pad,
    ...(tok.files ? {} : { preset }),
    files: (tok.files ?? []).map((f) => f.slice(f.lastIndexOf("/") + 1)),
  };
}
