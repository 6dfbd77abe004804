/**
 * Kernel dispatch: WGSL pipelines cached by source, dispatches recorded into one command encoder
 * and one compute pass, submitted in batches. Nothing waits on the GPU except {@link readRanges}
 * (and {@link readBuffers}, {@link sync}). {@link gated} makes a stretch of dispatches
 * conditional on flags the GPU computed, still without waiting.
 * @module
 */
import {
  beforeAllocation,
  captureErrors,
  deviceInfo,
  gpuDevice,
  noteWork,
  settleErrors,
  throwPendingErrors,
} from "./device.ts";
import { DeviceError } from "./errors.ts";
import { DeviceLimitError } from "./errors.ts";
import type { Storage } from "./memory.ts";
import { type AllocationKind, destroyNoted, noteAllocated } from "./allocations.ts";

/**
 * A storage bound to a kernel, with a description (`tensor [2, 3] f32`) for limit errors. A window
 * (`offset`, `size`) binds part of the storage, e.g. to process a tensor larger than
 * `maxStorageBufferBindingSize` in several dispatches.
 */
export interface Binding {
  /** The storage to bind. */
  storage: Storage;
  /** Human-readable description used in error messages. */
  what: string;
  /** Start of the window in bytes (default 0); a multiple of minStorageBufferOffsetAlignment. */
  offset?: number;
  /** Bytes of the window (default: the rest of the storage from `offset`). */
  size?: number;
}

/**
 * One compute dispatch. Bindings: inputs (read-only storage), then outputs (read_write), then the
 * uniform, then texture views.
 */
export interface KernelCall {
  /** Op name, used in error messages. */
  name: string;
  /** WGSL source; the pipeline is compiled once per distinct source. */
  code: string;
  /** Bound at `@binding(0..)` in order. */
  inputs: Binding[];
  /** Bound after the inputs. */
  outputs: Binding[];
  /** Optional uniform block bound after the outputs (cached by content; padded to 16 bytes). */
  uniforms?: ArrayBufferView;
  /**
   * Optional sampled-texture views bound last, in order. Last so that the indices of every other
   * binding stay what they are without textures; fill them with {@link encodeCopyToTexture}.
   */
  textures?: GPUTextureView[];
  /** Workgroup counts. */
  workgroups: readonly [number, number?, number?];
}

/** Everything the dispatcher keeps between calls, in one place. */
interface Dispatcher {
  /** Pipelines by WGSL source. */
  readonly pipelines: Map<string, GPUComputePipeline>;
  /** Uniform buffers by content, least recently used first. */
  readonly uniforms: Map<string, GPUBuffer>;
  uniformLimit: number;
  uniformsCreated: number;
  /** Bind groups by pipeline and bound resources, least recently used first. */
  readonly bindGroups: Map<string, GPUBindGroup>;
  bindGroupsCreated: number;
  /** The command encoder and compute pass being recorded into, if any. */
  encoder: GPUCommandEncoder | null;
  pass: GPUComputePassEncoder | null;
  /** Op names, dispatches and staged upload bytes of the batch being recorded. */
  batchOps: Set<string>;
  batchDispatches: number;
  stagedBytes: number;
  /** Buffers and textures to destroy once the batch is submitted. */
  toDestroy: (GPUBuffer | GPUTexture)[];
  totalDispatches: number;
  totalSubmits: number;
  /** The {@link gated} region being recorded, if any. */
  gate: Gate | null;
  /** The profiler while {@link startProfile} is on. */
  profiler: Profiler | null;
}

const d: Dispatcher = {
  pipelines: new Map(),
  uniforms: new Map(),
  uniformLimit: 2048,
  uniformsCreated: 0,
  bindGroups: new Map(),
  bindGroupsCreated: 0,
  encoder: null,
  pass: null,
  batchOps: new Set(),
  batchDispatches: 0,
  stagedBytes: 0,
  toDestroy: [],
  totalDispatches: 0,
  totalSubmits: 0,
  gate: null,
  profiler: null,
};

const AUTO_FLUSH_DISPATCHES = 4096;
// One transfer chunk: uploads (a checkpoint's, a model's init) hold at most this much staging.
const AUTO_FLUSH_STAGED_BYTES = 64 * 1024 * 1024;
const BIND_GROUP_CACHE = 4096;

/** Counters of the dispatcher: total dispatches, submits and cached pipelines. */
export function dispatchStats(): { dispatches: number; submits: number; pipelines: number } {
  return { dispatches: d.totalDispatches, submits: d.totalSubmits, pipelines: d.pipelines.size };
}

const caches = new Map<string, () => number>();

/**
 * Registers a cache for {@link cacheStats}: `size` returns its current number of entries. Every
 * module-level cache of GPU objects registers, so a test can show none grows without bound.
 */
export function registerCache(name: string, size: () => number): void {
  caches.set(name, size);
}

/**
 * Entries of every cache of GPU objects: pipelines, uniform buffers and bind groups (and
 * `uniformsCreated`, `bindGroupsCreated`, how many were ever made), and the registered ones.
 */
export function cacheStats(): Record<string, number> {
  const out: Record<string, number> = {
    pipelines: d.pipelines.size,
    uniforms: d.uniforms.size,
    uniformsCreated: d.uniformsCreated,
    bindGroups: d.bindGroups.size,
    bindGroupsCreated: d.bindGroupsCreated,
  };
  for (const [name, size] of caches) out[name] = size();
  return out;
}

/** `op(inputs → outputs; workgroups)` with each binding's shape: how errors name a dispatch. */
function describe(call: KernelCall): string {
  const list = (bs: Binding[]) => bs.map((b) => b.what).join(", ");
  const [x, y = 1, z = 1] = call.workgroups;
  return `${call.name}(${list(call.inputs)} → ${list(call.outputs)}; ${x}x${y}x${z} workgroups)`;
}

function pipelineFor(name: string, code: string, what = () => name): GPUComputePipeline {
  let p = d.pipelines.get(code);
  if (!p) {
    const device = gpuDevice();
    captureErrors(`building the pipeline of ${what()}`, () => {
      const module = device.createShaderModule({ code, label: name });
      p = device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: name,
      });
    });
    d.pipelines.set(code, p!);
  }
  return p!;
}

// Uniform buffers by content, least recently used first (Map order): values that recur (shapes,
// constant scalars) stay; values used once (an optimizer's per-step scalars) age out.
function uniformBuffer(data: ArrayBufferView): GPUBuffer {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const key = Array.from(new Uint32Array(bytes.slice().buffer, 0, bytes.byteLength >> 2)).join(",");
  let buf = d.uniforms.get(key);
  if (buf) {
    d.uniforms.delete(key);
  } else {
    for (const [k, old] of d.uniforms) {
      if (d.uniforms.size < d.uniformLimit) break;
      d.uniforms.delete(k);
      destroyAfterSubmit(old);
    }
    const size = Math.max(16, Math.ceil(bytes.byteLength / 16) * 16);
    buf = filledBuffer(GPUBufferUsage.UNIFORM, bytes, size, "a kernel's uniforms", "uniforms");
    d.uniformsCreated++;
  }
  d.uniforms.set(key, buf);
  return buf;
}

/**
 * Sets how many uniform buffers the dispatcher keeps for reuse (least recently used go first);
 * returns the previous limit. Meant for tests.
 */
export function setUniformCacheLimit(n: number): number {
  const prev = d.uniformLimit;
  d.uniformLimit = Math.max(1, n);
  return prev;
}

function bindingResource(b: Binding, op: string): GPUBufferBinding {
  const { maxStorageBufferBindingSize: limit, minStorageBufferOffsetAlignment: align } =
    gpuDevice().limits;
  const offset = b.offset ?? 0;
  const bytes = b.size ?? b.storage.bytes - offset;
  if (offset % align !== 0 || offset < 0 || bytes < 0 || offset + bytes > b.storage.bytes) {
    throw new RangeError(
      `${op}: window [${offset}, ${offset + bytes}) of ${b.what} (${b.storage.bytes} bytes) ` +
        `is out of range or not aligned to ${align} bytes`,
    );
  }
  const size = Math.max(16, Math.ceil(bytes / 16) * 16);
  if (size > limit) {
    throw new DeviceLimitError(
      `${op}: ${b.what} is ${bytes} bytes, over the device's ` +
        `maxStorageBufferBindingSize of ${limit} bytes`,
    );
  }
  return { buffer: b.storage.buffer, offset, size: Math.min(size, b.storage.buffer.size - offset) };
}

// What WebGPU would only reject at submit, as one error for a whole batch: named here instead.
function checkBindings(call: KernelCall, limits: GPUSupportedLimits): void {
  const all = [...call.inputs, ...call.outputs];
  if (all.length > limits.maxStorageBuffersPerShaderStage) {
    throw new DeviceLimitError(
      `${describe(call)}: ${all.length} storage bindings, over the device's ` +
        `maxStorageBuffersPerShaderStage of ${limits.maxStorageBuffersPerShaderStage}`,
    );
  }
  for (const out of call.outputs) {
    const other = all.find((b) => b !== out && b.storage.buffer === out.storage.buffer);
    if (other) {
      throw new RangeError(
        `${describe(call)}: output ${out.what} shares its buffer with ${other.what}; a kernel ` +
          "cannot write a buffer it also binds elsewhere",
      );
    }
  }
}

/**
 * `getMappedRange`, whose failure (a buffer made invalid by a lost device) becomes a DeviceError
 * naming the transfer.
 */
function mappedRange(buf: GPUBuffer, what: string): ArrayBuffer {
  try {
    return buf.getMappedRange();
  } catch (e) {
    throw new DeviceError(
      `${what}: ${(e as Error).message} (the GPU device is probably lost or out of memory)`,
    );
  }
}

/** A new buffer of `size` bytes (>= data) holding `data`, written at creation; on the ledger. */
function filledBuffer(
  usage: GPUBufferUsageFlags,
  data: Uint8Array,
  size: number,
  what: string,
  kind: AllocationKind,
): GPUBuffer {
  let buf: GPUBuffer;
  captureErrors(`${what} (${size} bytes)`, () => {
    buf = gpuDevice().createBuffer({ size, usage, mappedAtCreation: true });
  });
  noteAllocated(buf!, kind, size);
  new Uint8Array(mappedRange(buf!, what), 0, data.byteLength).set(data);
  buf!.unmap();
  return buf!;
}

function currentEncoder(): GPUCommandEncoder {
  d.encoder ??= gpuDevice().createCommandEncoder();
  return d.encoder;
}

function endPass(): void {
  d.pass?.end();
  d.pass = null;
}

// Small numbers naming GPU objects in cache keys (a buffer keeps its number while the pool
// recycles it, so a step that recurs finds its bind groups again).
const ids = new WeakMap<object, number>();
let nextId = 1;
function idOf(o: object): number {
  let id = ids.get(o);
  if (id === undefined) ids.set(o, id = nextId++);
  return id;
}

// Bind groups by pipeline and resources, least recently used first: creating one is most of what
// recording a dispatch costs, and a training step binds the same buffers step after step.
function bindGroupFor(
  pipeline: GPUComputePipeline,
  entries: GPUBindGroupEntry[],
  what: () => string,
): GPUBindGroup {
  let key = String(idOf(pipeline));
  for (const { resource: r } of entries) {
    key += "buffer" in r ? `|${idOf(r.buffer)}:${r.offset}:${r.size}` : `|${idOf(r)}`;
  }
  let group = d.bindGroups.get(key);
  if (group) d.bindGroups.delete(key);
  else {
    for (const k of d.bindGroups.keys()) {
      if (d.bindGroups.size < BIND_GROUP_CACHE) break;
      d.bindGroups.delete(k);
    }
    // Labelled, so that wgpu's messages about the bind group name the op and its shapes.
    group = gpuDevice().createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries,
      label: what(),
    });
    d.bindGroupsCreated++;
  }
  d.bindGroups.set(key, group);
  return group;
}

/** Records one dispatch into the pending command encoder. Throws on limit violations before recording. */
export function dispatch(call: KernelCall): void {
  throwPendingErrors();
  const device = gpuDevice();
  const maxWg = device.limits.maxComputeWorkgroupsPerDimension;
  const [x, y = 1, z = 1] = call.workgroups;
  if (x > maxWg || y > maxWg || z > maxWg) {
    throw new DeviceLimitError(
      `${call.name}: dispatch of ${x}x${y}x${z} workgroups exceeds maxComputeWorkgroupsPerDimension ${maxWg}`,
    );
  }
  const all = [...call.inputs, ...call.outputs];
  checkBindings(call, device.limits);
  const entries: GPUBindGroupEntry[] = all.map((b, i) => ({
    binding: i,
    resource: bindingResource(b, call.name),
  }));
  if (call.uniforms) {
    entries.push({ binding: all.length, resource: { buffer: uniformBuffer(call.uniforms) } });
  }
  for (const view of call.textures ?? []) entries.push({ binding: entries.length, resource: view });
  if (x * y * z === 0) return;
  const what = () => describe(call);
  const pipeline = pipelineFor(call.name, call.code, what);
  const bindGroup = bindGroupFor(pipeline, entries, what);
  if (d.gate && d.gate.triples.length >= 3 * GATE_SEGMENT) flush();
  if (d.profiler) {
    // One pass per dispatch, so the pass timestamps bracket exactly this kernel.
    endPass();
    d.pass = currentEncoder().beginComputePass({ timestampWrites: d.profiler.slot(call.name) });
  }
  d.pass ??= currentEncoder().beginComputePass();
  d.pass.setPipeline(pipeline);
  d.pass.setBindGroup(0, bindGroup);
  if (d.gate) {
    if (!d.gate.args) {
      d.gate.args = device.createBuffer({
        size: 12 * GATE_SEGMENT,
        usage: GPUBufferUsage.INDIRECT | GPUBufferUsage.STORAGE,
      });
      noteAllocated(d.gate.args, "other", 12 * GATE_SEGMENT);
    }
    d.pass.dispatchWorkgroupsIndirect(d.gate.args, 4 * d.gate.triples.length);
    d.gate.triples.push(x, y, z);
  } else d.pass.dispatchWorkgroups(x, y, z);
  if (d.profiler) endPass();
  d.batchOps.add(call.name);
  d.totalDispatches++;
  if (++d.batchDispatches >= AUTO_FLUSH_DISPATCHES) flush();
}

/** Records a buffer-to-buffer copy (ordered with the dispatches around it). */
export function encodeCopy(
  src: GPUBuffer,
  dst: GPUBuffer,
  bytes: number,
  dstOffset = 0,
  srcOffset = 0,
): void {
  if (bytes === 0) return;
  if (
    [bytes, dstOffset, srcOffset].some((v) => v % 4 !== 0 || v < 0) ||
    srcOffset + bytes > src.size || dstOffset + bytes > dst.size || src === dst
  ) {
    throw new RangeError(
      `copy of ${bytes} bytes from byte ${srcOffset} of a ${src.size}-byte buffer to byte ` +
        `${dstOffset} of a ${dst.size}-byte buffer is out of range, unaligned or in place`,
    );
  }
  endPass();
  currentEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
}

/**
 * Records a buffer-to-texture copy (ordered with the dispatches around it), e.g. to let a kernel
 * read an operand through `textureLoad`, which is faster than storage loads on llvmpipe.
 */
export function encodeCopyToTexture(
  source: GPUTexelCopyBufferInfo,
  destination: GPUTexelCopyTextureInfo,
  size: GPUExtent3D,
): void {
  endPass();
  currentEncoder().copyBufferToTexture(source, destination, size);
}

/**
 * Destroys a buffer or texture once the work recorded so far has been submitted (destroying it
 * earlier would invalidate recorded commands that still use it).
 */
export function destroyAfterSubmit(resource: GPUBuffer | GPUTexture): void {
  if (d.encoder) d.toDestroy.push(resource);
  else destroyNoted(resource);
}

/** Records zero-filling of a storage (ordered with the dispatches around it). */
export function encodeClear(s: Storage): void {
  endPass();
  currentEncoder().clearBuffer(s.buffer, 0, Math.ceil(s.bytes / 4) * 4);
}

/**
 * Bytes of one staging buffer for uploads and readbacks: transfers of any size go through staging
 * buffers of at most this size, so no transfer needs a buffer near `maxBufferSize` or doubles a
 * large tensor in host memory.
 */
export const TRANSFER_CHUNK_BYTES = 64 * 1024 * 1024;

/**
 * Records an upload of `data` into a storage at byte `dstOffset` (a multiple of 4). The bytes go
 * through staging buffers (at most {@link TRANSFER_CHUNK_BYTES} each) copied inside the command
 * stream, so the write lands after earlier recorded work that may still read a recycled buffer (a
 * plain `queue.writeBuffer` would overtake it).
 */
export function encodeUpload(s: Storage, data: ArrayBufferView, dstOffset = 0): void {
  const bytes = data.byteLength;
  if (dstOffset % 4 !== 0 || dstOffset + bytes > s.buffer.size) {
    throw new RangeError(
      `upload of ${bytes} bytes at offset ${dstOffset} does not fit a ${s.bytes}-byte storage`,
    );
  }
  const src = new Uint8Array(data.buffer, data.byteOffset, bytes);
  for (let off = 0; off < bytes; off += TRANSFER_CHUNK_BYTES) {
    const n = Math.min(TRANSFER_CHUNK_BYTES, bytes - off);
    const padded = Math.ceil(n / 4) * 4;
    const staging = filledBuffer(
      GPUBufferUsage.COPY_SRC,
      src.subarray(off, off + n),
      padded,
      `upload of ${bytes} bytes`,
      "staging",
    );
    encodeCopy(staging, s.buffer, padded, dstOffset + off);
    d.toDestroy.push(staging);
    d.stagedBytes += n;
    if (d.stagedBytes >= AUTO_FLUSH_STAGED_BYTES) flush();
  }
}

/** Submits everything recorded so far. Cheap when nothing is pending; never waits for the GPU. */
export function flush(): void {
  if (!d.encoder) return;
  endPass();
  const enc = d.encoder;
  const ops = [...d.batchOps].join(", ");
  d.encoder = null;
  d.batchOps = new Set();
  d.batchDispatches = 0;
  d.stagedBytes = 0;
  d.profiler?.resolve(enc);
  const armed = d.gate ? armGate(d.gate) : [];
  const what = `the batch of [${ops}]`;
  captureErrors(what, () => gpuDevice().queue.submit([...armed, enc.finish()]));
  noteWork(what);
  d.profiler?.collect();
  d.totalSubmits++;
  for (const b of d.toDestroy) destroyNoted(b);
  d.toDestroy = [];
}

// Gated dispatches read their workgroup counts from `args`, which a small kernel fills, right
// before them, with the real counts when every flag is zero and with zeros otherwise.
interface Gate {
  flags: Binding;
  words: number;
  /** Indirect arguments of this segment's dispatches (3 words each); made at the first one. */
  args: GPUBuffer | null;
  /** Their real workgroup counts. */
  triples: number[];
}

// Dispatches per segment: one args buffer of 12 KiB; a longer region is armed in several.
const GATE_SEGMENT = 1024;

const ARM_CODE = `@group(0) @binding(0) var<storage, read> flags: array<u32>;
@group(0) @binding(1) var<storage, read> triples: array<u32>;
@group(0) @binding(2) var<storage, read_write> args: array<u32>;
struct U { words: u32, count: u32, p0: u32, p1: u32 }
@group(0) @binding(3) var<uniform> u: U;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3u) {
  var any = 0u;
  for (var k = 0u; k < u.words; k++) { any = any | flags[k]; }
  let keep = select(0u, 1u, any == 0u);
  for (var k = lid.x; k < u.count; k += 64u) { args[k] = triples[k] * keep; }
}`;

// A command buffer, submitted before the segment's own, that writes its indirect arguments.
function armGate(g: Gate): GPUCommandBuffer[] {
  if (!g.args || g.triples.length === 0) return [];
  const device = gpuDevice();
  const triples = filledBuffer(
    GPUBufferUsage.STORAGE,
    new Uint8Array(new Uint32Array(g.triples).buffer),
    4 * g.triples.length,
    "gate arguments",
    "other",
  );
  const pipeline = pipelineFor("gate", ARM_CODE);
  const enc = device.createCommandEncoder();
  const p = enc.beginComputePass();
  p.setPipeline(pipeline);
  p.setBindGroup(
    0,
    device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: bindingResource(g.flags, "gate") },
        { binding: 1, resource: { buffer: triples } },
        { binding: 2, resource: { buffer: g.args } },
        {
          binding: 3,
          resource: { buffer: uniformBuffer(new Uint32Array([g.words, g.triples.length, 0, 0])) },
        },
      ],
    }),
  );
  p.dispatchWorkgroups(1);
  p.end();
  d.toDestroy.push(triples, g.args);
  g.args = null;
  g.triples = [];
  return [enc.finish()];
}

/**
 * Runs `fn` with every dispatch it records made conditional on the GPU: each runs only if all
 * `words` u32 words of `flags` are zero when the GPU gets to it, and is skipped (zero workgroups)
 * otherwise. No GPU→CPU sync: the decision is made on the device, so work that overwrites its
 * inputs in place (an optimizer update, say) can be skipped after the fact. Copies, clears and
 * uploads inside `fn` are not gated: `fn` must change existing buffers through kernels only
 * (writing fresh buffers any way is fine). Work recorded before the call is submitted first, so
 * the flags are final when the gate reads them. Regions do not nest.
 */
export async function gated<T>(
  flags: Binding,
  words: number,
  fn: () => T | Promise<T>,
): Promise<T> {
  if (d.gate) throw new DeviceError("gated: regions do not nest");
  flush();
  d.gate = { flags, words, args: null, triples: [] };
  try {
    return await fn();
  } finally {
    flush();
    d.gate = null;
  }
}

/** A byte range of a storage to read back. */
export interface ReadRange {
  /** The storage. */
  storage: Storage;
  /** First byte (a multiple of 4). */
  offset: number;
  /** Bytes to read. */
  bytes: number;
}

/**
 * Streams byte ranges of storages back to the CPU through staging buffers of at most
 * `chunkBytes`: each staging buffer gathers as many (pieces of) ranges as fit, is submitted and
 * mapped (one GPU sync), and each piece is handed to `onPiece(rangeIndex, bytes, offsetInRange)`
 * while mapped (copy what must outlive the call). Pieces arrive in order. Pending GPU errors are
 * thrown with their op names, and a failed copy names the ranges and sizes involved.
 */
export async function readRanges(
  ranges: readonly ReadRange[],
  onPiece: (index: number, bytes: Uint8Array, offset: number) => void | Promise<void>,
  chunkBytes = TRANSFER_CHUNK_BYTES,
): Promise<void> {
  const device = gpuDevice();
  const step = Math.max(4, Math.floor(chunkBytes / 4) * 4);
  type Piece = { index: number; src: number; at: number; bytes: number; into: number };
  let pieces: Piece[] = [];
  let used = 0;
  const drain = async () => {
    if (pieces.length === 0) return;
    const what = `readback of ${used} bytes (${pieces.length} piece(s), from storages of up to ${
      Math.max(...pieces.map((p) => ranges[p.index].storage.bytes))
    } bytes)`;
    let staging: GPUBuffer | undefined;
    captureErrors(what, () => {
      beforeAllocation(what);
      staging = device.createBuffer({
        size: Math.max(4, used),
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      });
    });
    const buf = staging!;
    noteAllocated(buf, "staging", Math.max(4, used));
    try {
      for (const p of pieces) {
        const words = Math.ceil(p.bytes / 4) * 4;
        encodeCopy(ranges[p.index].storage.buffer, buf, words, p.at, p.src);
      }
      // Named in the batch, so a failed copy's error says which readback it was.
      d.batchOps.add(what);
      flush();
      try {
        await buf.mapAsync(GPUMapMode.READ);
      } catch (e) {
        // The GPU's own errors (validation, out of memory, device lost) say more than the map's.
        await settleErrors();
        throwPendingErrors();
        throw new DeviceError(`${what}: ${(e as Error).message}`);
      }
      await settleErrors();
      throwPendingErrors();
      const mapped = new Uint8Array(mappedRange(buf, what));
      for (const p of pieces) await onPiece(p.index, mapped.subarray(p.at, p.at + p.bytes), p.into);
    } finally {
      destroyNoted(buf);
    }
    pieces = [];
    used = 0;
  };
  for (let index = 0; index < ranges.length; index++) {
    const r = ranges[index];
    if (
      r.offset % 4 !== 0 || r.offset < 0 ||
      r.offset + Math.ceil(r.bytes / 4) * 4 > r.storage.buffer.size
    ) {
      throw new RangeError(
        `readback: range [${r.offset}, ${r.offset + r.bytes}) of a ${r.storage.bytes}-byte ` +
          "storage is out of range or not 4-byte aligned",
      );
    }
    for (let into = 0; into < r.bytes;) {
      if (used === step) await drain();
      const n = Math.min(r.bytes - into, step - used);
      // Copies move whole words; a ragged tail is read as a full word and trimmed.
      const words = Math.ceil(n / 4) * 4;
      pieces.push({ index, src: r.offset + into, at: used, bytes: n, into });
      used += words;
      into += n;
    }
  }
  await drain();
}

/**
 * Reads storages back whole (one ArrayBuffer per storage, `bytes` long) through
 * {@link readRanges}: bounded staging, one GPU sync per chunk.
 */
export async function readBuffers(list: readonly Storage[]): Promise<ArrayBuffer[]> {
  const out = list.map((s) => new Uint8Array(s.bytes));
  await readRanges(
    list.map((storage) => ({ storage, offset: 0, bytes: storage.bytes })),
    (i, bytes, off) => out[i].set(bytes, off),
  );
  return out.map((o) => o.buffer);
}

/** Waits until the GPU has finished all submitted work (a sync: costs >= 11 ms on software adapters). */
export async function sync(): Promise<void> {
  flush();
  await gpuDevice().queue.onSubmittedWorkDone();
  await settleErrors();
  throwPendingErrors();
}

/**
 * Splits `n` invocations of a 1-D kernel over a 2-D grid so no dimension exceeds the dispatch limit.
 * The kernel's flat index is `gid.x + gid.y * (workgroups[0] * wgSize)`; see {@link WGSL_FLAT_INDEX}.
 */
export function grid1d(n: number, wgSize: number): [number, number, number] {
  const groups = Math.ceil(n / wgSize);
  const max = gpuDevice().limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1, 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y, 1];
}

/** WGSL expression of the flat invocation index for a {@link grid1d} dispatch (needs `gid` and `nwg`). */
export const WGSL_FLAT_INDEX = "gid.x + gid.y * (nwg.x * WG)";

/** GPU time of one op name over a profiled stretch. */
export interface ProfileEntry {
  /** Op (kernel) name. */
  name: string;
  /** Dispatches. */
  count: number;
  /** Total GPU milliseconds. */
  ms: number;
}

const PROFILE_SLOTS = 2048;

class Profiler {
  readonly querySet: GPUQuerySet;
  readonly resolveBuf: GPUBuffer;
  names: string[] = [];
  readonly totals = new Map<string, ProfileEntry>();
  readonly pending: Promise<void>[] = [];
  #readback: GPUBuffer | null = null;

  constructor() {
    const device = gpuDevice();
    this.querySet = device.createQuerySet({ type: "timestamp", count: 2 * PROFILE_SLOTS });
    this.resolveBuf = device.createBuffer({
      size: 16 * PROFILE_SLOTS,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    // A timestamp is 8 bytes on the device.
    noteAllocated(this.querySet, "queries", 16 * PROFILE_SLOTS);
    noteAllocated(this.resolveBuf, "queries", 16 * PROFILE_SLOTS);
  }

  slot(name: string): GPUComputePassTimestampWrites {
    if (this.names.length === PROFILE_SLOTS) flush();
    const i = this.names.length;
    this.names.push(name);
    return {
      querySet: this.querySet,
      beginningOfPassWriteIndex: 2 * i,
      endOfPassWriteIndex: 2 * i + 1,
    };
  }

  resolve(enc: GPUCommandEncoder): void {
    const n = this.names.length;
    if (n === 0) return;
    enc.resolveQuerySet(this.querySet, 0, 2 * n, this.resolveBuf, 0);
    this.#readback = gpuDevice().createBuffer({
      size: 16 * n,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    noteAllocated(this.#readback, "queries", 16 * n);
    enc.copyBufferToBuffer(this.resolveBuf, 0, this.#readback, 0, 16 * n);
  }

  collect(): void {
    const buf = this.#readback;
    const names = this.names;
    this.#readback = null;
    this.names = [];
    if (!buf) return;
    this.pending.push(
      buf.mapAsync(GPUMapMode.READ).then(() => {
        const t = new BigUint64Array(buf.getMappedRange());
        names.forEach((name, i) => {
          const e = this.totals.get(name) ?? { name, count: 0, ms: 0 };
          e.count++;
          e.ms += Number(t[2 * i + 1] - t[2 * i]) / 1e6;
          this.totals.set(name, e);
        });
        destroyNoted(buf);
      }),
    );
  }

  destroy(): void {
    destroyNoted(this.querySet);
    destroyNoted(this.resolveBuf);
  }
}

/**
 * Times every dispatch on the GPU (timestamp queries) until {@link stopProfile}. Each dispatch then
 * gets its own compute pass, which adds overhead: profile to find hot kernels, not to time a step.
 */
export function startProfile(): void {
  if (!deviceInfo().timestamps) {
    throw new DeviceError(
      "profiling needs the adapter feature timestamp-query, which this adapter lacks",
    );
  }
  flush();
  d.profiler ??= new Profiler();
}

/** Stops profiling and returns GPU time per op name, largest first. */
export async function stopProfile(): Promise<ProfileEntry[]> {
  const p = d.profiler;
  if (!p) return [];
  flush();
  d.profiler = null;
  await Promise.all(p.pending);
  p.destroy();
  return [...p.totals.values()].sort((a, b) => b.ms - a.ms);
}
