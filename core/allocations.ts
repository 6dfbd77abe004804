/**
 * The ledger of device allocations: every buffer, texture and query set the library creates, at
 * the size the device allocates, by kind. Tensor counters (`liveBytes`) say what tensors request;
 * this says what the device holds, pool and caches and staging included.
 * @module
 */

/** What a device allocation is for. */
export type AllocationKind =
  /** Tensor storages, live or free in the pool (at their size class). */
  | "buffers"
  /** Textures a kernel reads an operand through (the matmul's texture cache). */
  | "textures"
  /** Upload and readback staging buffers, alive until their copy is submitted or mapped. */
  | "staging"
  /** Uniform buffers cached by content. */
  | "uniforms"
  /** Timestamp query sets and their resolve buffers (profiling). */
  | "queries"
  /** Small dispatcher buffers (indirect arguments of gated regions). */
  | "other";

const KINDS: readonly AllocationKind[] = [
  "buffers",
  "textures",
  "staging",
  "uniforms",
  "queries",
  "other",
];

const byKind = new Map<AllocationKind, number>(KINDS.map((k) => [k, 0]));
const held = new WeakMap<object, { kind: AllocationKind; bytes: number }>();
let total = 0;
let peak = 0;
let atPeak = new Map(byKind);

/** Records that `resource` (a buffer, texture or query set) now holds `bytes` of device memory. */
export function noteAllocated(resource: object, kind: AllocationKind, bytes: number): void {
  if (held.has(resource)) return;
  held.set(resource, { kind, bytes });
  byKind.set(kind, byKind.get(kind)! + bytes);
  total += bytes;
  if (total > peak) {
    peak = total;
    atPeak = new Map(byKind);
  }
}

/** Records that `resource` was destroyed; a resource never noted (or noted gone) is ignored. */
export function noteReleased(resource: object): void {
  const h = held.get(resource);
  if (!h) return;
  held.delete(resource);
  byKind.set(h.kind, byKind.get(h.kind)! - h.bytes);
  total -= h.bytes;
}

/** Destroys a noted buffer, texture or query set and takes it off the ledger. */
export function destroyNoted(resource: GPUBuffer | GPUTexture | GPUQuerySet): void {
  noteReleased(resource);
  resource.destroy();
}

/** A snapshot of the ledger. */
export interface AllocationStats {
  /** Bytes of every device allocation the library holds now. */
  allocatedBytes: number;
  /** Highest `allocatedBytes` since start or the last {@link resetAllocatedPeak}. */
  allocatedPeak: number;
  /** `allocatedBytes` by kind. */
  byKind: Record<AllocationKind, number>;
  /** `byKind` when `allocatedPeak` was reached. */
  atPeak: Record<AllocationKind, number>;
}

/** The ledger now. */
export function allocationStats(): AllocationStats {
  return {
    allocatedBytes: total,
    allocatedPeak: peak,
    byKind: Object.fromEntries(byKind) as Record<AllocationKind, number>,
    atPeak: Object.fromEntries(atPeak) as Record<AllocationKind, number>,
  };
}

/** Starts a new peak measurement at the bytes allocated now. */
export function resetAllocatedPeak(): void {
  peak = total;
  atPeak = new Map(byKind);
}
