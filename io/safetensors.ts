/**
 * The safetensors file format (an 8-byte little-endian header length, a JSON header, raw
 * little-endian tensor data) over any {@link ByteSource} and {@link ByteSink}: a writer that takes
 * each tensor's bytes chunk by chunk, and a reader that validates the header and hands out each
 * tensor's bytes in bounded chunks, so neither ever holds a whole model in memory;
 * `encodeSafetensors`/`decodeSafetensors` do the same in memory for small files. Works in browsers
 * (bytes, Blobs, streams) as in Deno (files: `cli/safetensors.ts` adds atomic, durable writes).
 *
 * Files written with `checksums` carry three metadata entries that other readers ignore: the hash
 * ({@link CHECKSUM_ALGORITHM_KEY}: `sha256`), the SHA-256 of each tensor's bytes
 * ({@link CHECKSUMS_KEY}) and of the header ({@link HEADER_CHECKSUM_KEY}); the readers here verify
 * them whenever they are present, so a flipped bit or a cut file is an error that names the tensor,
 * never a silently different model. Files without the algorithm entry (written before SHA-256)
 * carry the 64-bit sum of `core/checksum.ts` and are verified with it.
 * @module
 */
import { Checksum } from "../core/checksum.ts";
import { Sha256 } from "../core/sha256.ts";
import type { ByteSink, ByteSource } from "./bytes.ts";

/** Element types this library reads and writes (safetensors' names). */
export type SafetensorsDType = "F32" | "I32" | "U32" | "BF16" | "F16" | "U8";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<SafetensorsDType, number>> = {
  F32: 4,
  I32: 4,
  U32: 4,
  BF16: 2,
  F16: 2,
  U8: 1,
};

/** A tensor's entry in the header: dtype, shape and byte range within the data section. */
export interface SafetensorsEntry {
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions. */
  shape: number[];
  /** Start of its bytes, relative to the data section. */
  start: number;
  /** End (exclusive) of its bytes. */
  end: number;
}

/** A tensor held in memory (for small files and tests). */
export interface StoredTensor {
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions. */
  shape: number[];
  /** Its bytes, row-major little-endian (`shape`'s element count × the dtype's size). */
  data: ArrayBufferView;
}

/** Contents of a small safetensors file held in memory. */
export interface SafetensorsFile {
  /** Tensors by name. */
  tensors: Record<string, StoredTensor>;
  /** String metadata (`__metadata__`). */
  metadata: Record<string, string>;
}

/** A tensor to write: its header fields and a function that produces its bytes in order. */
export interface TensorSource {
  /** Tensor name (unique in the file). */
  name: string;
  /** Element type. */
  dtype: SafetensorsDType;
  /** Dimensions. */
  shape: number[];
  /** Writes exactly the tensor's bytes through `sink`, in order, in chunks of any size. */
  write(sink: (chunk: Uint8Array) => Promise<void>): Promise<void>;
}

const MAX_HEADER = 100 * 1024 * 1024;

/**
 * Metadata key of the tensors' checksums: one hex digest per tensor, concatenated in the order of
 * {@link checksumOrder}.
 */
export const CHECKSUMS_KEY = "sltrain.checksums";
/** Metadata key of the header's checksum (every other metadata entry and every tensor entry). */
export const HEADER_CHECKSUM_KEY = "sltrain.header_checksum";
/** Metadata key naming the checksums' hash; absent in files written before SHA-256. */
export const CHECKSUM_ALGORITHM_KEY = "sltrain.checksum_algorithm";
/** The hash this library writes checksums with. */
export const CHECKSUM_ALGORITHM = "sha256";

interface Hash {
  update(bytes: Uint8Array): unknown;
  digest(): string;
}

/** Each hash a file may name: its hex digits and a fresh instance. */
const HASHES: Record<string, { digits: number; make: () => Hash }> = {
  [CHECKSUM_ALGORITHM]: { digits: 64, make: () => new Sha256() },
  // Files without CHECKSUM_ALGORITHM_KEY: the 64-bit sum of core/checksum.ts.
  "": { digits: 16, make: () => new Checksum() },
};

function hashOf(kind: { make: () => Hash }, data: Uint8Array | string): string {
  const h = kind.make();
  h.update(typeof data === "string" ? new TextEncoder().encode(data) : data);
  return h.digest();
}

/** Tensor names in the order their checksums are stored: by data offset, then end, then name. */
export function checksumOrder(entries: ReadonlyMap<string, SafetensorsEntry>): string[] {
  return [...entries].sort(([n1, a], [n2, b]) =>
    a.start - b.start || a.end - b.end || (n1 < n2 ? -1 : n1 > n2 ? 1 : 0)
  ).map(([n]) => n);
}

function headerChecksum(
  metadata: Record<string, string>,
  entries: ReadonlyMap<string, SafetensorsEntry>,
  kind: { make: () => Hash },
): string {
  const md = Object.keys(metadata).filter((k) => k !== CHECKSUMS_KEY && k !== HEADER_CHECKSUM_KEY)
    .sort().map((k) => [k, metadata[k]]);
  const ts = checksumOrder(entries).map((n) => {
    const e = entries.get(n)!;
    return [n, e.dtype, e.shape, e.start, e.end];
  });
  return hashOf(kind, JSON.stringify([md, ts]));
}

/** Bytes of a tensor of `shape` and `dtype`. */
export function tensorBytes(dtype: SafetensorsDType, shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
}

/**
 * The encoded header (length prefix included) for tensors in the given order, and each one's
 * byte range in the data section. The JSON is padded with spaces so the data starts 8-byte aligned.
 */
export function encodeHeader(
  tensors: readonly { name: string; dtype: SafetensorsDType; shape: readonly number[] }[],
  metadata: Record<string, string>,
): { bytes: Uint8Array; entries: Map<string, SafetensorsEntry> } {
  const header: Record<string, unknown> = { __metadata__: metadata };
  const entries = new Map<string, SafetensorsEntry>();
  let off = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || entries.has(t.name)) {
      throw new Error(`safetensors: tensor name ${JSON.stringify(t.name)} is reserved or repeated`);
    }
    const size = tensorBytes(t.dtype, t.shape);
    const e = { dtype: t.dtype, shape: [...t.shape], start: off, end: off + size };
    entries.set(t.name, e);
    header[t.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [e.start, e.end] };
    off += size;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  json += " ".repeat((8 - ((8 + enc.encode(json).length) % 8)) % 8);
  const head = enc.encode(json);
  const bytes = new Uint8Array(8 + head.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(head.length), true);
  bytes.set(head, 8);
  return { bytes, entries };
}

/**
 * Parses and validates a header given the first bytes of a file (at least 8 + header length) and
 * the file's total size. Errors say what is wrong with `source`.
 */
export function decodeHeader(
  prefix: Uint8Array,
  fileSize: number,
  source: string,
): {
  metadata: Record<string, string>;
  entries: Map<string, SafetensorsEntry>;
  dataStart: number;
  checksums: Map<string, string> | null;
  hash: () => Hash;
} {
  const bad = (why: string) => new Error(`${source} is not a valid safetensors file: ${why}`);
  if (fileSize < 8 || prefix.byteLength < 8) throw bad(`only ${fileSize} bytes (truncated?)`);
  const n = Number(new DataView(prefix.buffer, prefix.byteOffset).getBigUint64(0, true));
  if (n > fileSize - 8) throw bad(`header of ${n} bytes does not fit in the file (truncated?)`);
  if (n > MAX_HEADER) throw bad(`header of ${n} bytes is implausibly large`);
  if (prefix.byteLength < 8 + n) throw bad("header is cut short");
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(prefix.subarray(8, 8 + n)),
    );
  } catch {
    throw bad("header is not valid JSON");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw bad("header is not an object");
  }
  const dataStart = 8 + n;
  const dataLen = fileSize - dataStart;
  const md = header.__metadata__ ?? {};
  if (md === null || typeof md !== "object" || Array.isArray(md)) {
    throw bad("__metadata__ is not an object");
  }
  for (const [k, v] of Object.entries(md)) {
    if (typeof v !== "string") throw bad(`metadata ${k} is not a string`);
  }
  const entries = new Map<string, SafetensorsEntry>();
  const ranges: [number, number, string][] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (
      e === null || typeof e !== "object" || typeof e.dtype !== "string" ||
      !(e.dtype in DTYPE_BYTES)
    ) {
      throw bad(`tensor ${name} has unsupported dtype ${JSON.stringify(e?.dtype)}`);
    }
    const dtype = e.dtype as SafetensorsDType;
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw bad(`tensor ${name} has an invalid shape ${JSON.stringify(shape)}`);
    }
    const offs = e.data_offsets;
    const [a, b] = Array.isArray(offs) && offs.length === 2 ? offs as number[] : [-1, -1];
    if (!(Number.isSafeInteger(a) && Number.isSafeInteger(b) && 0 <= a && a <= b && b <= dataLen)) {
      throw bad(`tensor ${name} lies outside the data (truncated?)`);
    }
    if (b - a !== tensorBytes(dtype, shape)) {
      throw bad(`tensor ${name}: shape and byte size disagree`);
    }
    entries.set(name, { dtype, shape, start: a, end: b });
    ranges.push([a, b, name]);
  }
  ranges.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let end = 0;
  for (const [a, b, name] of ranges) {
    if (a < end) throw bad(`tensor ${name} overlaps another tensor`);
    if (a > end) throw bad(`${a - end} unused bytes before tensor ${name}`);
    end = b;
  }
  if (end !== dataLen) throw bad(`${dataLen - end} trailing bytes after the last tensor`);
  const metadata = md as Record<string, string>;
  const algorithm = metadata[CHECKSUM_ALGORITHM_KEY] ?? "";
  const kind = HASHES[algorithm];
  if (kind === undefined || algorithm === "" && CHECKSUM_ALGORITHM_KEY in metadata) {
    throw bad(
      `checksums by ${JSON.stringify(algorithm)}; this build verifies ${CHECKSUM_ALGORITHM} ` +
        "(and the 64-bit sum of files written before it)",
    );
  }
  return {
    metadata,
    entries,
    dataStart,
    checksums: checksumsOf(metadata, entries, kind, bad),
    hash: kind.make,
  };
}

// The stored checksums by tensor name, after checking the header's own; null when the file has
// none (written elsewhere, or by an older version).
function checksumsOf(
  metadata: Record<string, string>,
  entries: ReadonlyMap<string, SafetensorsEntry>,
  kind: { digits: number; make: () => Hash },
  bad: (why: string) => Error,
): Map<string, string> | null {
  const head = metadata[HEADER_CHECKSUM_KEY];
  const sums = metadata[CHECKSUMS_KEY];
  if (head === undefined && sums === undefined) return null;
  if (head !== headerChecksum(metadata, entries, kind)) {
    throw bad("the header does not match its checksum (corrupt file?)");
  }
  const order = checksumOrder(entries);
  const d = kind.digits;
  if (typeof sums !== "string" || sums.length !== d * order.length) {
    throw bad("the tensor checksums are missing or cut short (corrupt file?)");
  }
  return new Map(order.map((n, i) => [n, sums.slice(d * i, d * (i + 1))]));
}

function checksumError(source: string, name: string): Error {
  return new Error(
    `${source} is not a valid safetensors file: tensor ${name} does not match its checksum ` +
      "(corrupt file?)",
  );
}

/** Options of {@link writeSafetensors}. */
export interface WriteOptions {
  /**
   * Store a checksum of each tensor and of the header (see the module doc); default false. Needs
   * a sink that can seek back (`writeAt`): the digests go into the header once the data is written.
   */
  checksums?: boolean;
}

/**
 * Writes a safetensors file into `sink`: the header, then each tensor's bytes as its source
 * produces them (host memory: the header plus whatever chunk a source hands over). With
 * `checksums`, each tensor is hashed as it streams and its digest patched into the header's
 * reserved slot at the end. Throws naming the tensor when a source writes more or fewer bytes than
 * its shape holds.
 */
export async function writeSafetensors(
  sink: ByteSink,
  sources: readonly TensorSource[],
  metadata: Record<string, string>,
  opts: WriteOptions = {},
): Promise<void> {
  if (opts.checksums && !sink.writeAt) {
    throw new Error("safetensors: checksums need a sink that can seek back (writeAt)");
  }
  const kind = HASHES[CHECKSUM_ALGORITHM];
  const placeholder = "0".repeat(kind.digits * sources.length);
  let md = metadata;
  if (opts.checksums) {
    const { entries } = encodeHeader(sources, {});
    md = {
      ...metadata,
      [CHECKSUM_ALGORITHM_KEY]: CHECKSUM_ALGORITHM,
      [CHECKSUMS_KEY]: placeholder,
    };
    md[HEADER_CHECKSUM_KEY] = headerChecksum(md, entries, kind);
  }
  const { bytes, entries } = encodeHeader(sources, md);
  const digests = new Map<string, string>();
  await sink.write(bytes);
  for (const s of sources) {
    const want = entries.get(s.name)!;
    const sum = kind.make();
    let got = 0;
    await s.write(async (chunk) => {
      got += chunk.byteLength;
      if (got > want.end - want.start) {
        throw new Error(
          `safetensors: source ${s.name} wrote more than its ${want.end - want.start} bytes`,
        );
      }
      if (opts.checksums) sum.update(chunk);
      await sink.write(chunk);
    });
    if (got !== want.end - want.start) {
      throw new Error(
        `safetensors: source ${s.name} wrote ${got} of its ${want.end - want.start} bytes`,
      );
    }
    digests.set(s.name, sum.digest());
  }
  if (opts.checksums) {
    // The placeholder is the only place its quoted key appears unescaped in the header.
    const key = new TextEncoder().encode(`${JSON.stringify(CHECKSUMS_KEY)}:"${placeholder}"`);
    const at = indexOf(bytes, key) + key.length - 1 - placeholder.length;
    const order = checksumOrder(entries);
    await sink.writeAt!(at, new TextEncoder().encode(order.map((n) => digests.get(n)).join("")));
  }
}

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  throw new Error("safetensors: checksum slot not found in the header");
}

/** An open safetensors file: its validated header, and tensors read on demand in chunks. */
export interface SafetensorsReader {
  /** String metadata. */
  readonly metadata: Record<string, string>;
  /** Header entries by tensor name. */
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;
  /** True when the file carries checksums (its header has been verified against its own). */
  readonly checksummed: boolean;
  /**
   * Reads tensor `name`'s bytes in order, in chunks of at most `chunkBytes` (a multiple of the
   * element size), calling `onChunk(bytes, byteOffsetWithinTensor)` for each; the chunk buffer is
   * reused between calls, so copy what must outlive one call. In a checksummed file, a tensor
   * whose bytes do not match their checksum throws after its last chunk.
   */
  read(
    name: string,
    onChunk: (bytes: Uint8Array, offset: number) => void | Promise<void>,
    chunkBytes?: number,
  ): Promise<void>;
  /** Closes the source. */
  close(): void;
}

/** Default chunk of streamed reads and writes: bounded, and large enough to amortize syscalls. */
export const STREAM_CHUNK_BYTES = 16 * 1024 * 1024;

/**
 * Validates the header of `source` and returns a reader over its tensors; errors name `name` (a
 * file name, a URL) and the problem. The reader owns the source: `close()` closes it, and so does
 * a failure here.
 */
export async function openSafetensors(
  source: ByteSource,
  name = "safetensors data",
): Promise<SafetensorsReader> {
  try {
    const size = source.size;
    const head8 = new Uint8Array(Math.min(8, size));
    await source.read(0, head8);
    const n = head8.byteLength === 8 ? Number(new DataView(head8.buffer).getBigUint64(0, true)) : 0;
    const prefix = new Uint8Array(Math.min(size, 8 + Math.min(n, MAX_HEADER)));
    await source.read(0, prefix);
    const { metadata, entries, dataStart, checksums, hash } = decodeHeader(prefix, size, name);
    return {
      metadata,
      entries,
      checksummed: checksums !== null,
      async read(tensor, onChunk, chunkBytes = STREAM_CHUNK_BYTES) {
        const e = entries.get(tensor);
        if (!e) throw new Error(`${name}: no tensor named ${tensor}`);
        const el = DTYPE_BYTES[e.dtype];
        const step = Math.max(el, Math.floor(chunkBytes / el) * el);
        const buf = new Uint8Array(Math.min(step, Math.max(1, e.end - e.start)));
        const sum = hash();
        for (let off = 0; off < e.end - e.start; off += step) {
          const len = Math.min(step, e.end - e.start - off);
          const chunk = buf.subarray(0, len);
          await source.read(dataStart + e.start + off, chunk);
          if (checksums) sum.update(chunk);
          await onChunk(chunk, off);
        }
        if (checksums && sum.digest() !== checksums.get(tensor)) throw checksumError(name, tensor);
      },
      close: () => source.close(),
    };
  } catch (e) {
    source.close();
    throw e;
  }
}

function bytesOf(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** The tensors of an in-memory file as writer sources, in sorted name order. */
export function memorySources(file: SafetensorsFile): TensorSource[] {
  return Object.keys(file.tensors).sort().map((name) => ({
    name,
    dtype: file.tensors[name].dtype,
    shape: file.tensors[name].shape,
    write: (sink) => sink(bytesOf(file.tensors[name].data)),
  }));
}

/** Encodes a small file in memory (tensors in sorted name order). */
export function encodeSafetensors(file: SafetensorsFile): Uint8Array {
  const names = Object.keys(file.tensors).sort();
  const { bytes, entries } = encodeHeader(
    names.map((name) => ({ name, ...file.tensors[name] })),
    file.metadata,
  );
  const total = names.reduce((s, n) => s + file.tensors[n].data.byteLength, 0);
  const out = new Uint8Array(bytes.length + total);
  out.set(bytes);
  for (const name of names) {
    const e = entries.get(name)!;
    const data = bytesOf(file.tensors[name].data);
    if (data.byteLength !== e.end - e.start) {
      throw new Error(
        `safetensors: tensor ${name} has ${data.byteLength} bytes, its shape needs ${
          e.end - e.start
        }`,
      );
    }
    out.set(data, bytes.length + e.start);
  }
  return out;
}

/** Decodes and validates a small file held in memory; `data` of each tensor is a fresh copy. */
export function decodeSafetensors(bytes: Uint8Array, source = "checkpoint"): SafetensorsFile {
  const { metadata, entries, dataStart, checksums, hash } = decodeHeader(
    bytes,
    bytes.byteLength,
    source,
  );
  const tensors: Record<string, StoredTensor> = {};
  for (const [name, e] of entries) {
    const data = bytes.slice(dataStart + e.start, dataStart + e.end);
    if (checksums && hashOf({ make: hash }, data) !== checksums.get(name)) {
      throw checksumError(source, name);
    }
    tensors[name] = { dtype: e.dtype, shape: e.shape, data };
  }
  return { tensors, metadata };
}
