/**
 * Device memory: reference-counted storages recycled through a size-class pool, and the counters
 * (live bytes, peak bytes, live buffers) that make memory use observable.
 * @module
 */
import { allocationStats, destroyNoted, noteAllocated, resetAllocatedPeak } from "./allocations.ts";
import { beforeAllocation, captureErrors, gpuDevice } from "./device.ts";
import { flush } from "./kernel.ts";
import { DeviceLimitError } from "./errors.ts";

/** A device buffer shared by one or more tensor handles (e.g. a tensor and its reshape). */
export class Storage {
  /** Live handles that refer to this storage; the buffer returns to the pool at zero. */
  refs = 1;
  /** Creates a storage over a pooled buffer; use {@link allocStorage}. */
  constructor(
    /** The device buffer (its size is the size class, at least `bytes`). */
    readonly buffer: GPUBuffer,
    /** Bytes the tensor actually uses; this is what the counters count. */
    readonly bytes: number,
  ) {}
}

/** A snapshot of the memory counters. */
export interface MemoryStats {
  /** Bytes of all live tensors (logical sizes, the number an analytic estimate predicts). */
  liveBytes: number;
  /** Highest `liveBytes` since start or the last {@link resetPeakBytes}. */
  peakBytes: number;
  /** Number of live storages (a reshape shares its source's storage). */
  liveBuffers: number;
  /** Bytes of free buffers kept in the pool for reuse. */
  pooledBytes: number;
  /** Bytes of device buffers held in total (live size classes + pool). */
  reservedBytes: number;
  /**
   * Bytes of every device allocation the library holds: tensor buffers at their size class, the
   * pool, textures, staging, uniforms, query sets. What the device sees, beside `liveBytes`.
   */
  allocatedBytes: number;
  /** Highest `allocatedBytes` since start or the last {@link resetPeakBytes}. */
  allocatedPeak: number;
  /**
   * `allocatedBytes` by what the allocations are for: `buffers` (tensor storages, live or pooled),
   * `textures`, `staging`, `uniforms`, `queries` (profiling), `other`.
   */
  allocatedByKind: Record<string, number>;
  /** `allocatedByKind` when `allocatedPeak` was reached. */
  allocatedAtPeak: Record<string, number>;
}

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const free = new Map<number, GPUBuffer[]>();
// Every free buffer, oldest first: the order the pool gives them back to the device in.
const freeOrder = new Set<GPUBuffer>();
let liveBytes = 0;
let peakBytes = 0;
let liveBuffers = 0;
let pooledBytes = 0;
let reservedBytes = 0;

/**
 * Size class of a request: multiples of 256 bytes up to 64 KiB, then four classes per power of two
 * up to 1 MiB (at most 25% slack on small buffers, which are many and shared widely), then 32 per
 * power of two (at most 1/32 ≈ 3% slack on the large buffers that make up most of the bytes).
 */
export function sizeClass(bytes: number): number {
  if (bytes <= 65536) return Math.max(256, Math.ceil(bytes / 256) * 256);
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / (bytes < 2 ** 20 ? 4 : 32);
  return Math.ceil(bytes / step) * step;
}

/** Allocates a storage of `bytes` bytes; `what` describes the tensor for the limit error. */
export function allocStorage(bytes: number, what: string): Storage {
  const { maxBufferSize: limit } = gpuDevice().limits;
  // A tensor above maxStorageBufferBindingSize is fine: ops bind it in windows (Tensor.rows), and
  // an op that cannot names the binding limit when it is called.
  if (bytes > limit) {
    throw new DeviceLimitError(
      `${what} needs ${bytes} bytes, over the device's maxBufferSize of ${limit} bytes`,
    );
  }
  // Every allocation, pooled or new, counts for fault injection.
  beforeAllocation(`allocating ${what} (${bytes} bytes)`);
  let size = sizeClass(bytes);
  if (size > limit) size = Math.ceil(bytes / 16) * 16;
  const list = free.get(size);
  let buffer = list?.pop();
  if (buffer) {
    freeOrder.delete(buffer);
    pooledBytes -= size;
  } else {
    trimPool(size);
    const device = gpuDevice();
    captureErrors(
      `allocating ${what} (${bytes} bytes, with ${liveBytes} bytes in ${liveBuffers} live ` +
        `buffers and ${pooledBytes} pooled)`,
      () => (buffer = device.createBuffer({ size, usage: USAGE })),
    );
    noteAllocated(buffer!, "buffers", size);
    reservedBytes += size;
  }
  liveBytes += bytes;
  liveBuffers++;
  if (liveBytes > peakBytes) peakBytes = liveBytes;
  return new Storage(buffer!, bytes);
}

/** Drops one reference; at zero the buffer goes back to the pool. */
export function releaseStorage(s: Storage): void {
  if (--s.refs > 0) return;
  liveBytes -= s.bytes;
  liveBuffers--;
  const size = s.buffer.size;
  let list = free.get(size);
  if (!list) free.set(size, list = []);
  list.push(s.buffer);
  freeOrder.add(s.buffer);
  pooledBytes += size;
}

/** Smallest pool budget: small models keep every free buffer, as before the budget existed. */
const MIN_POOL_BYTES = 64 * 1024 * 1024;
let poolFraction = 1 / 32;

/**
 * Sets the pool's budget as a fraction of the live bytes (default 1/32, never below 64 MiB);
 * returns the previous fraction. `Infinity` keeps every free buffer. Meant for tests and
 * benchmarks.
 */
export function setPoolFraction(fraction: number): number {
  const prev = poolFraction;
  poolFraction = fraction;
  return prev;
}

// Before a new buffer of `size` bytes is created: when the pool holds more than its budget (free
// buffers of sizes the step no longer asks for, e.g. activations freed while gradients are made),
// gives the oldest back to the device. Work recorded so far may still use them, so it is
// submitted first (destroying a buffer that submitted work uses is allowed; the memory goes once
// that work is done).
function trimPool(size: number): void {
  const budget = Math.max(MIN_POOL_BYTES, liveBytes * poolFraction);
  if (pooledBytes + size <= budget) return;
  flush();
  for (const b of freeOrder) {
    if (pooledBytes + size <= budget) break;
    freeOrder.delete(b);
    const list = free.get(b.size)!;
    list.splice(list.indexOf(b), 1);
    pooledBytes -= b.size;
    reservedBytes -= b.size;
    destroyNoted(b);
  }
}

/** Current memory counters. */
export function memoryStats(): MemoryStats {
  const a = allocationStats();
  return {
    liveBytes,
    peakBytes,
    liveBuffers,
    pooledBytes,
    reservedBytes,
    allocatedBytes: a.allocatedBytes,
    allocatedPeak: a.allocatedPeak,
    allocatedByKind: a.byKind,
    allocatedAtPeak: a.atPeak,
  };
}

/** Starts new peak measurements (requested and allocated) at the current figures. */
export function resetPeakBytes(): void {
  peakBytes = liveBytes;
  resetAllocatedPeak();
}

/** Destroys every free buffer in the pool (live tensors are untouched). */
export function emptyPool(): void {
  for (const list of free.values()) for (const b of list) destroyNoted(b);
  free.clear();
  freeOrder.clear();
  reservedBytes -= pooledBytes;
  pooledBytes = 0;
}
