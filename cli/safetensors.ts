/**
 * The safetensors file format (an 8-byte little-endian header length, a JSON header, raw
 * little-endian tensor data), written atomically and validated on read.
 * @module
 */

/** A tensor as stored in a file. */
export interface StoredTensor {
  /** Element type. */
  dtype: "F32" | "I32" | "U32";
  /** Dimensions. */
  shape: number[];
  /** Elements, row-major. */
  data: Float32Array | Int32Array | Uint32Array;
}

/** Contents of a safetensors file. */
export interface SafetensorsFile {
  /** Tensors by name. */
  tensors: Record<string, StoredTensor>;
  /** String metadata (`__metadata__`). */
  metadata: Record<string, string>;
}

const SIZE = { F32: 4, I32: 4, U32: 4 } as const;

/** Encodes a file in memory. */
export function encodeSafetensors(file: SafetensorsFile): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: file.metadata };
  let off = 0;
  const names = Object.keys(file.tensors).sort();
  for (const name of names) {
    const t = file.tensors[name];
    const bytes = t.data.byteLength;
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned, as the format recommends.
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let p = 8 + head.length;
  for (const name of names) {
    const d = file.tensors[name].data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), p);
    p += d.byteLength;
  }
  return out;
}

/** Decodes and validates a file; errors say what is wrong (`source` names it). */
export function decodeSafetensors(bytes: Uint8Array, source = "checkpoint"): SafetensorsFile {
  const bad = (why: string) => new Error(`${source} is not a valid safetensors file: ${why}`);
  if (bytes.byteLength < 8) throw bad(`only ${bytes.byteLength} bytes (truncated?)`);
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  if (n > bytes.byteLength - 8) {
    throw bad(`header of ${n} bytes does not fit in the file (truncated?)`);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch {
    throw bad("header is not valid JSON");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw bad("header is not an object");
  }
  const dataStart = 8 + n;
  const dataLen = bytes.byteLength - dataStart;
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  const tensors: Record<string, StoredTensor> = {};
  let end = 0;
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype?: string; shape?: number[]; data_offsets?: [number, number] };
    if (!e || !(e.dtype! in SIZE)) throw bad(`tensor ${name} has unsupported dtype ${e?.dtype}`);
    const dtype = e.dtype as StoredTensor["dtype"];
    const [a, b] = e.data_offsets ?? [-1, -1];
    const count = (e.shape ?? []).reduce((x, y) => x * y, 1);
    if (!(Number.isInteger(a) && Number.isInteger(b) && 0 <= a && a <= b && b <= dataLen)) {
      throw bad(`tensor ${name} lies outside the data (truncated?)`);
    }
    if (b - a !== count * SIZE[dtype]) throw bad(`tensor ${name}: shape and byte size disagree`);
    const slice = bytes.slice(dataStart + a, dataStart + b);
    const data = dtype === "F32"
      ? new Float32Array(slice.buffer)
      : dtype === "I32"
      ? new Int32Array(slice.buffer)
      : new Uint32Array(slice.buffer);
    tensors[name] = { dtype, shape: e.shape ?? [], data };
    end = Math.max(end, b);
  }
  if (end !== dataLen) throw bad(`${dataLen - end} trailing bytes after the last tensor`);
  return { tensors, metadata };
}

/** Writes a file atomically: a temporary file in the same folder, then a rename over the target. */
export async function writeSafetensors(path: string, file: SafetensorsFile): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID()}`;
  try {
    await Deno.writeFile(tmp, encodeSafetensors(file));
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/** Reads and validates a file. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  return decodeSafetensors(bytes, path);
}
