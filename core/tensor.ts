/**
 * Tensor handles, their creation and readback, and `scope` for deterministic lifetimes.
 * @module
 */
import { packBf16, toBf16Bits, unpackBf16 } from "./bf16.ts";
import {
  allocTyped,
  bytesPerElement,
  type DType,
  dtypeOf,
  isFloat,
  storageBytes,
  type TensorData,
} from "./dtype.ts";
import { DisposedError, DTypeError, ShapeError } from "./errors.ts";
import { defineKernel } from "./define_kernel.ts";
import {
  type Binding,
  encodeClear,
  encodeUpload,
  readRanges,
  TRANSFER_CHUNK_BYTES,
} from "./kernel.ts";
import { allocStorage, releaseStorage, type Storage } from "./memory.ts";
import { Rng } from "./rng.ts";
import { forEachWindow } from "./windows.ts";
import { checkShape, fmtShape, type Shape, sizeOf } from "./shape.ts";
import * as tree from "./tree.ts";

/** Nested JS arrays of numbers, e.g. `[[1, 2], [3, 4]]`. */
export type NestedArray = number | NestedArray[];

const scopes: Set<Tensor>[] = [];

/**
 * An immutable handle to device memory with a shape and a dtype. Handles are created by ops and by
 * the creation functions; free them with {@link Tensor.dispose} or let a {@link scope} do it.
 */
export class Tensor {
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
  /** Number of elements. */
  readonly size: number;
  /**
   * Where the elements start in the storage, in bytes (0 unless this is a {@link Tensor.rows}
   * window of a larger tensor).
   */
  readonly offset: number;
  #storage: Storage | null;
  #pins = 0;
  #disposeRequested = false;

  /**
   * Wraps a storage (taking one reference to it) from byte `offset` on; ops use this, users use the
   * creation functions.
   */
  constructor(storage: Storage, shape: Shape, dtype: DType, offset = 0) {
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.size = sizeOf(shape);
    this.offset = offset;
    this.#storage = storage;
    scopes.at(-1)?.add(this);
  }

  /** Allocates an uninitialized tensor (ops write it before anyone reads it). */
  static empty(shape: Shape, dtype: DType = "f32"): Tensor {
    checkShape(shape);
    const bytes = storageBytes(dtype, sizeOf(shape));
    return new Tensor(allocStorage(bytes, `tensor ${fmtShape(shape)} ${dtype}`), shape, dtype);
  }

  /** Bytes of device memory the elements take (whole 32-bit words). */
  get bytes(): number {
    return storageBytes(this.dtype, this.size);
  }

  /** The storage; throws if disposed (a tape may still read a pinned tensor disposed meanwhile). */
  get storage(): Storage {
    if (!this.#storage) {
      throw new DisposedError(
        `tensor ${fmtShape(this.shape)} ${this.dtype} was used after dispose()`,
      );
    }
    return this.#storage;
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  /** True once disposed. */
  get isDisposed(): boolean {
    return this.#storage === null || this.#disposeRequested;
  }

  /**
   * This tensor as a kernel binding: its bytes of the storage. A tensor larger than the device's
   * `maxStorageBufferBindingSize` cannot be bound whole; ops bind {@link Tensor.rows} windows.
   */
  binding(): Binding {
    const what = `tensor ${fmtShape(this.shape)} ${this.dtype}` +
      (this.offset > 0 || this.bytes < this.storage.bytes
        ? ` (window at byte ${this.offset})`
        : "");
    return { storage: this.storage, what, offset: this.offset, size: this.bytes };
  }

  /**
   * Rows `[r0, r0 + n)` along the first axis as a new handle to the same storage (no copy): how
   * ops process a tensor larger than one binding window by window. The window must start on a
   * whole 32-bit word; kernels need it aligned to the device's `minStorageBufferOffsetAlignment`
   * (see {@link rowWindow}).
   */
  rows(r0: number, n: number): Tensor {
    const s = this.storage;
    const rows = this.shape[0];
    if (
      this.rank === 0 || !Number.isInteger(r0) || !Number.isInteger(n) || r0 < 0 || n < 0 ||
      r0 + n > rows
    ) {
      throw new ShapeError(`rows(${r0}, ${n}) is outside tensor ${fmtShape(this.shape)}`);
    }
    const rowBytes = (this.size / rows) * bytesPerElement(this.dtype);
    const start = this.offset + r0 * rowBytes;
    if (start % 4 !== 0) {
      throw new ShapeError(
        `rows(${r0}, ${n}) of ${this.dtype} tensor ${fmtShape(this.shape)} does not start on a ` +
          "32-bit word",
      );
    }
    s.refs++;
    return new Tensor(s, [n, ...this.shape.slice(1)], this.dtype, start);
  }

  /** A new handle to the same storage with another shape of equal size (no copy). */
  view(shape: Shape): Tensor {
    const s = this.storage;
    checkShape(shape);
    if (sizeOf(shape) !== this.size) {
      throw new ShapeError(
        `cannot view ${fmtShape(this.shape)} as ${fmtShape(shape)}: sizes differ`,
      );
    }
    s.refs++;
    return new Tensor(s, shape, this.dtype, this.offset);
  }

  /** Releases this handle; the memory returns to the pool when no handle or tape needs it. Idempotent. */
  dispose(): void {
    if (this.#storage === null) return;
    if (this.#pins > 0) {
      this.#disposeRequested = true;
      return;
    }
    releaseStorage(this.#storage);
    this.#storage = null;
    for (const s of scopes) s.delete(this);
  }

  /** Keeps the memory alive until {@link Tensor.unpin} even if disposed meanwhile (used by tapes). */
  pin(): void {
    this.storage;
    this.#pins++;
  }

  /** Undoes one {@link Tensor.pin}; performs a deferred dispose. */
  unpin(): void {
    if (--this.#pins === 0 && this.#disposeRequested) {
      this.#disposeRequested = false;
      this.dispose();
    }
  }

  /** Reads the elements back to the CPU (one GPU sync). */
  async data(): Promise<TensorData> {
    return (await readAll([this]))[0];
  }

  /** Reads a one-element tensor as a number. */
  async item(): Promise<number> {
    if (this.size !== 1) {
      throw new ShapeError(`item() needs a one-element tensor, got shape ${fmtShape(this.shape)}`);
    }
    return (await this.data())[0];
  }

  /** Reads the elements back as nested arrays shaped like the tensor. */
  async toArray(): Promise<NestedArray> {
    return nest(await this.data(), this.shape);
  }

  /** A short description, e.g. `Tensor([2, 3], f32)`. */
  toString(): string {
    return `Tensor(${fmtShape(this.shape)}, ${this.dtype}${this.isDisposed ? ", disposed" : ""})`;
  }
}

// The brand core/tree.ts recognizes tensors by (it cannot import this module: see there).
Object.defineProperty(Tensor.prototype, Symbol.for("@sltrain/tensor"), { value: true });

function nest(data: TensorData, shape: Shape): NestedArray {
  if (shape.length === 0) return data[0];
  const [d, ...rest] = shape;
  const step = sizeOf(rest);
  return Array.from({ length: d }, (_, i) => nest(data.subarray(i * step, (i + 1) * step), rest));
}

/** The elements of a tensor's raw little-endian bytes (bf16 unpacked to f32). */
export function decodeElements(dtype: DType, size: number, raw: ArrayBuffer): TensorData {
  if (dtype === "f32") return new Float32Array(raw, 0, size);
  if (dtype === "i32") return new Int32Array(raw, 0, size);
  if (dtype === "u32") return new Uint32Array(raw, 0, size);
  if (dtype === "u8") return new Uint8Array(raw, 0, size);
  return unpackBf16(new Uint32Array(raw, 0, raw.byteLength >> 2), size);
}

/**
 * Reads several tensors back: one GPU sync per staging chunk (one for everything that fits in
 * {@link TRANSFER_CHUNK_BYTES}), so any number and size of tensors can be read.
 */
export async function readAll(tensors: readonly Tensor[]): Promise<TensorData[]> {
  const raw = tensors.map((t) => new Uint8Array(t.bytes));
  await readRanges(
    tensors.map((t) => ({ storage: t.storage, offset: t.offset, bytes: t.bytes })),
    (i, bytes, off) => raw[i].set(bytes, off),
  );
  return raw.map((r, i) => decodeElements(tensors[i].dtype, tensors[i].size, r.buffer));
}

/**
 * Streams one tensor's raw bytes (the device layout: little-endian, bf16 packed two per word) to
 * `onChunk(bytes, offset)` in pieces of at most `chunkBytes`; host memory stays bounded by one
 * chunk. Copy the bytes if they must outlive the call.
 */
export async function streamBytes(
  t: Tensor,
  onChunk: (bytes: Uint8Array, offset: number) => void | Promise<void>,
  chunkBytes = TRANSFER_CHUNK_BYTES,
): Promise<void> {
  await readRanges(
    [{ storage: t.storage, offset: t.offset, bytes: t.bytes }],
    (_, bytes, off) => onChunk(bytes, off),
    chunkBytes,
  );
}

/**
 * Writes raw bytes (the device layout) into `t` starting at byte `offset` of the tensor, recorded in
 * order with the dispatches around it: how checkpoints load tensors chunk by chunk.
 */
export function writeBytes(t: Tensor, bytes: Uint8Array, offset = 0): void {
  if (offset % 4 !== 0 || offset + bytes.byteLength > t.bytes) {
    throw new RangeError(
      `writeBytes: ${bytes.byteLength} bytes at offset ${offset} do not fit tensor ` +
        `${fmtShape(t.shape)} ${t.dtype} (${t.bytes} bytes)`,
    );
  }
  encodeUpload(t.storage, bytes, t.offset + offset);
}

/**
 * Runs `fn` and disposes every tensor it created except those in its result (any tree: see
 * `core/tree.ts`). If `fn` throws, everything it created is disposed.
 */
export function scope<T>(fn: () => T): T {
  const frame = new Set<Tensor>();
  scopes.push(frame);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    for (const t of frame) t.dispose();
    throw e;
  }
  scopes.pop();
  if (result instanceof Promise) {
    throw new TypeError("scope(fn) needs a synchronous fn; await outside the scope");
  }
  const kept = new Set(tree.flatten(result));
  const parent = scopes.at(-1);
  for (const t of frame) {
    if (kept.has(t)) parent?.add(t);
    else t.dispose();
  }
  return result;
}

/**
 * Runs `fn` inside a fresh frame and returns what it created, without disposing anything; the
 * caller decides (used by tapes). Returned tensors are not adopted by the enclosing scope: call
 * {@link adopt} for those that should be.
 */
export function captureCreated<T>(fn: () => T): { result: T; created: Tensor[] } {
  const frame = new Set<Tensor>();
  scopes.push(frame);
  try {
    const result = fn();
    return { result, created: [...frame] };
  } catch (e) {
    for (const t of frame) t.dispose();
    throw e;
  } finally {
    scopes.splice(scopes.lastIndexOf(frame), 1);
  }
}

/** Number of open {@link scope} (and capture) frames; see {@link atScopeDepth}. */
export function scopeDepth(): number {
  return scopes.length;
}

/**
 * Runs `fn` as if only the outer `depth` frames were open (as {@link scopeDepth} returned them):
 * what `fn` creates belongs to those, not to frames opened since. How a tape runs a caller's hook
 * from inside an op's VJP without the VJP's frame freeing what the hook made.
 */
export function atScopeDepth<T>(depth: number, fn: () => T): T {
  const inner = scopes.splice(depth);
  try {
    return fn();
  } finally {
    scopes.push(...inner);
  }
}

/** Registers a tensor with the innermost enclosing scope (if any). */
export function adopt(t: Tensor): void {
  scopes.at(-1)?.add(t);
}

/** Removes tensors from every enclosing scope so they outlive it (e.g. optimizer state). Returns its argument. */
export function keep<T>(value: T): T {
  for (const t of tree.flatten(value)) for (const s of scopes) s.delete(t);
  return value;
}

function inferShape(data: NestedArray): number[] {
  const shape: number[] = [];
  let cur: NestedArray = data;
  while (Array.isArray(cur)) {
    shape.push(cur.length);
    cur = cur[0];
    if (cur === undefined) break;
  }
  return shape;
}

function flatten(data: NestedArray, shape: number[], depth: number, out: number[]): void {
  if (depth === shape.length) {
    if (typeof data !== "number") throw new ShapeError("tensor(): nested array is ragged");
    out.push(data);
    return;
  }
  if (!Array.isArray(data) || data.length !== shape[depth]) {
    throw new ShapeError(`tensor(): nested array is ragged at depth ${depth}`);
  }
  for (const d of data) flatten(d, shape, depth + 1, out);
}

function checkValues(values: ArrayLike<number>, dtype: DType): void {
  if (isFloat(dtype)) return;
  const [lo, hi] = dtype === "i32"
    ? [-(2 ** 31), 2 ** 31 - 1]
    : dtype === "u8"
    ? [0, 255]
    : [0, 2 ** 32 - 1];
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new DTypeError(`tensor(): value ${v} at index ${i} is not a valid ${dtype}`);
    }
  }
}

/**
 * Creates a tensor from nested arrays or a typed array. `shape` defaults to the nesting (or 1-D for a
 * typed array); `dtype` defaults to the typed array's kind, or f32 for numbers. Integer dtypes reject
 * non-integer or out-of-range values; `bf16` rounds each value to the nearest bfloat16 (ties to
 * even).
 */
export function tensor(
  data: NestedArray | TensorData | readonly number[],
  shape?: Shape,
  dtype?: DType,
): Tensor {
  let values: TensorData;
  let inferred: number[];
  if (ArrayBuffer.isView(data)) {
    const dt = dtype ?? dtypeOf(data);
    if (dt !== dtypeOf(data)) checkValues(data, dt);
    values = dt === dtypeOf(data)
      ? data
      : (allocTyped(dt, data.length).map((_, i) => data[i]) as TensorData);
    inferred = [data.length];
  } else {
    inferred = inferShape(data as NestedArray);
    const flat: number[] = [];
    flatten(data as NestedArray, inferred, 0, flat);
    const dt = dtype ?? "f32";
    checkValues(flat, dt);
    values = allocTyped(dt, flat.length);
    values.set(flat);
  }
  const finalShape = shape ?? inferred;
  checkShape(finalShape);
  if (sizeOf(finalShape) !== values.length) {
    throw new ShapeError(
      `tensor(): ${values.length} values do not fill shape ${fmtShape(finalShape)}`,
    );
  }
  const dt = dtype === "bf16" ? "bf16" : dtypeOf(values);
  const t = Tensor.empty(finalShape, dt);
  encodeUpload(t.storage, dt === "bf16" ? packBf16(values) : values);
  return t;
}

/** A tensor of zeros. */
export function zeros(shape: Shape, dtype: DType = "f32"): Tensor {
  const t = Tensor.empty(shape, dtype);
  encodeClear(t.storage);
  return t;
}

/** A tensor of ones. */
export function ones(shape: Shape, dtype: DType = "f32"): Tensor {
  return full(shape, 1, dtype);
}

const fill = (dtype: "f32" | "i32" | "u32") =>
  defineKernel({
    name: "full",
    outputs: { out: dtype },
    uniforms: { value: dtype },
    grid: "flat",
    body: "  store_out(i, u.value);",
  });
const FILL = { f32: fill("f32"), i32: fill("i32"), u32: fill("u32") };

/** A tensor filled with `value` (filled on the GPU, window by window; packed dtypes by words). */
export function full(shape: Shape, value: number, dtype: DType = "f32"): Tensor {
  checkValues([value], dtype);
  if (value === 0 && !Object.is(value, -0)) return zeros(shape, dtype);
  const t = Tensor.empty(shape, dtype);
  // Packed dtypes are filled as u32 words holding the value 2 or 4 times.
  const packed = dtype === "bf16" || dtype === "u8";
  const words = packed ? new Tensor(t.storage, [t.bytes / 4], "u32", t.offset) : t;
  if (packed) t.storage.refs++;
  const word = dtype === "bf16" ? toBf16Bits(value) * 0x10001 : value * 0x01010101;
  const kernel = FILL[packed ? "u32" : dtype as "f32" | "i32" | "u32"];
  forEachWindow([words], ([w], _start, count) => {
    kernel({ out: w }, { n: count, value: packed ? word >>> 0 : value });
  });
  if (packed) words.dispose();
  return t;
}

/** Options of the random creation functions: a seed, or a generator to draw from (advancing it). */
export interface RandomOptions {
  /** Seed of a fresh generator (default 0). */
  seed?: number;
  /** Generator to draw from instead of a seed. */
  rng?: Rng;
  /** `f32` (default) or `bf16` (each draw rounded to nearest even; the same draws as f32). */
  dtype?: "f32" | "bf16";
}

// Allocates first, so a tensor over the device's limits fails before the CPU draws its values;
// draws and uploads in chunks, so host memory stays bounded for any size.
function fillFromCpu(shape: Shape, opts: RandomOptions, draw: (rng: Rng) => number): Tensor {
  const dtype = opts.dtype ?? "f32";
  const t = Tensor.empty(shape, dtype);
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const chunk = TRANSFER_CHUNK_BYTES / 4;
  const v = new Float32Array(Math.min(chunk, t.size));
  for (let start = 0; start < t.size; start += chunk) {
    const n = Math.min(chunk, t.size - start);
    for (let i = 0; i < n; i++) v[i] = draw(rng);
    const part = v.subarray(0, n);
    encodeUpload(
      t.storage,
      dtype === "bf16" ? packBf16(part) : part,
      start * bytesPerElement(dtype),
    );
  }
  return t;
}

/** Uniform samples in [low, high), generated on the CPU from a seed (identical on every machine). */
export function randomUniform(shape: Shape, low = 0, high = 1, opts: RandomOptions = {}): Tensor {
  return fillFromCpu(shape, opts, (rng) => low + (high - low) * rng.nextFloat());
}

/** Normal samples with the given mean and standard deviation, generated on the CPU from a seed. */
export function randomNormal(shape: Shape, mean = 0, std = 1, opts: RandomOptions = {}): Tensor {
  return fillFromCpu(shape, opts, (rng) => mean + std * rng.nextNormal());
}

/** The integers `[0, n)` as an i32 (or u32) vector. */
export function arange(n: number, dtype: "i32" | "u32" = "i32"): Tensor {
  const v = allocTyped(dtype, n);
  for (let i = 0; i < n; i++) v[i] = i;
  return tensor(v, [n], dtype);
}
