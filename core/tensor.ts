/**
 * Tensor handles, their creation and readback, and `scope` for deterministic lifetimes.
 * @module
 */
import { allocTyped, type DType, dtypeOf, type TensorData } from "./dtype.ts";
import { DisposedError, DTypeError, ShapeError } from "./errors.ts";
import { defineKernel } from "./define_kernel.ts";
import { type Binding, encodeClear, encodeUpload, readBuffers } from "./kernel.ts";
import { allocStorage, releaseStorage, type Storage } from "./memory.ts";
import { Rng } from "./rng.ts";
import { checkShape, fmtShape, type Shape, sizeOf } from "./shape.ts";

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
  #storage: Storage | null;
  #pins = 0;
  #disposeRequested = false;

  /** Wraps a storage (taking one reference to it); ops use this, users use the creation functions. */
  constructor(storage: Storage, shape: Shape, dtype: DType) {
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.size = sizeOf(shape);
    this.#storage = storage;
    scopes.at(-1)?.add(this);
  }

  /** Allocates an uninitialized tensor (ops write it before anyone reads it). */
  static empty(shape: Shape, dtype: DType = "f32"): Tensor {
    checkShape(shape);
    const bytes = sizeOf(shape) * 4;
    return new Tensor(allocStorage(bytes, `tensor ${fmtShape(shape)} ${dtype}`), shape, dtype);
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

  /** This tensor as a kernel binding. */
  binding(): Binding {
    return { storage: this.storage, what: `tensor ${fmtShape(this.shape)} ${this.dtype}` };
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
    return new Tensor(s, shape, this.dtype);
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

function nest(data: TensorData, shape: Shape): NestedArray {
  if (shape.length === 0) return data[0];
  const [d, ...rest] = shape;
  const step = sizeOf(rest);
  return Array.from({ length: d }, (_, i) => nest(data.subarray(i * step, (i + 1) * step), rest));
}

/** Reads several tensors back with a single GPU sync. */
export async function readAll(tensors: readonly Tensor[]): Promise<TensorData[]> {
  const raw = await readBuffers(tensors.map((t) => t.storage));
  return raw.map((buf, i) => {
    const dt = tensors[i].dtype;
    return dt === "f32"
      ? new Float32Array(buf)
      : dt === "i32"
      ? new Int32Array(buf)
      : new Uint32Array(buf);
  });
}

/** Every tensor inside a value: a tensor, or arrays/plain objects/Maps of them, at any depth. */
export function collectTensors(value: unknown, out: Tensor[] = []): Tensor[] {
  if (value instanceof Tensor) out.push(value);
  else if (Array.isArray(value)) { for (const v of value) collectTensors(v, out); }
  else if (value instanceof Map) { for (const v of value.values()) collectTensors(v, out); }
  else if (
    value !== null && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype
  ) {
    for (const v of Object.values(value)) collectTensors(v, out);
  }
  return out;
}

/**
 * Runs `fn` and disposes every tensor it created except those in its result (found at any depth of
 * arrays and plain objects). If `fn` throws, everything it created is disposed.
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
  const kept = new Set(collectTensors(result));
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

/** Registers a tensor with the innermost enclosing scope (if any). */
export function adopt(t: Tensor): void {
  scopes.at(-1)?.add(t);
}

/** Removes tensors from every enclosing scope so they outlive it (e.g. optimizer state). Returns its argument. */
export function keep<T>(value: T): T {
  for (const t of collectTensors(value)) for (const s of scopes) s.delete(t);
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
  if (dtype === "f32") return;
  const [lo, hi] = dtype === "i32" ? [-(2 ** 31), 2 ** 31 - 1] : [0, 2 ** 32 - 1];
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
 * non-integer or out-of-range values.
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
  const t = Tensor.empty(finalShape, dtypeOf(values));
  encodeUpload(t.storage, values);
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

const fill = (dtype: DType) =>
  defineKernel({
    name: "full",
    outputs: { out: dtype },
    uniforms: { value: dtype },
    grid: "flat",
    body: "  store_out(i, u.value);",
  });
const FILL = { f32: fill("f32"), i32: fill("i32"), u32: fill("u32") };

/** A tensor filled with `value` (filled on the GPU). */
export function full(shape: Shape, value: number, dtype: DType = "f32"): Tensor {
  checkValues([value], dtype);
  if (value === 0 && !Object.is(value, -0)) return zeros(shape, dtype);
  const t = Tensor.empty(shape, dtype);
  FILL[dtype]({ out: t }, { n: t.size, value });
  return t;
}

/** Options of the random creation functions: a seed, or a generator to draw from (advancing it). */
export interface RandomOptions {
  /** Seed of a fresh generator (default 0). */
  seed?: number;
  /** Generator to draw from instead of a seed. */
  rng?: Rng;
}

// Allocates first, so a tensor over the device's limits fails before the CPU draws its values.
function fillFromCpu(shape: Shape, opts: RandomOptions, draw: (rng: Rng) => number): Tensor {
  const t = Tensor.empty(shape);
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const v = new Float32Array(t.size);
  for (let i = 0; i < v.length; i++) v[i] = draw(rng);
  encodeUpload(t.storage, v);
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
