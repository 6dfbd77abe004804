/**
 * Kernel dispatch: WGSL pipelines cached by source, dispatches recorded into one command encoder
 * and one compute pass, submitted in batches. Nothing waits on the GPU except {@link readBuffers}.
 * @module
 */
import { deviceInfo, gpuDevice, reportGpuError, throwPendingErrors } from "./device.ts";
import { DeviceError } from "./errors.ts";
import { DeviceLimitError } from "./errors.ts";
import type { Storage } from "./memory.ts";

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

const pipelines = new Map<string, GPUComputePipeline>();
const uniformCache = new Map<string, GPUBuffer>();
const UNIFORM_CACHE_MAX = 8192;

let encoder: GPUCommandEncoder | null = null;
let pass: GPUComputePassEncoder | null = null;
let batchOps = new Set<string>();
let batchDispatches = 0;
let toDestroy: (GPUBuffer | GPUTexture)[] = [];
let stagedBytes = 0;
const outstanding: Promise<void>[] = [];
let totalDispatches = 0;
let totalSubmits = 0;

const AUTO_FLUSH_DISPATCHES = 4096;
const AUTO_FLUSH_STAGED_BYTES = 256 * 1024 * 1024;

/** Counters of the dispatcher: total dispatches, submits and cached pipelines. */
export function dispatchStats(): { dispatches: number; submits: number; pipelines: number } {
  return { dispatches: totalDispatches, submits: totalSubmits, pipelines: pipelines.size };
}

function scoped(op: string, fn: () => void): void {
  const device = gpuDevice();
  device.pushErrorScope("validation");
  fn();
  outstanding.push(
    device.popErrorScope().then((e) => {
      if (e) reportGpuError(op, e.message);
    }),
  );
}

function pipelineFor(name: string, code: string): GPUComputePipeline {
  let p = pipelines.get(code);
  if (!p) {
    const device = gpuDevice();
    scoped(name, () => {
      const module = device.createShaderModule({ code, label: name });
      p = device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: name,
      });
    });
    pipelines.set(code, p!);
  }
  return p!;
}

function uniformBuffer(data: ArrayBufferView): GPUBuffer {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const key = Array.from(new Uint32Array(bytes.slice().buffer, 0, bytes.byteLength >> 2)).join(",");
  let buf = uniformCache.get(key);
  if (!buf) {
    if (uniformCache.size >= UNIFORM_CACHE_MAX) {
      for (const b of uniformCache.values()) toDestroy.push(b);
      uniformCache.clear();
    }
    const size = Math.max(16, Math.ceil(bytes.byteLength / 16) * 16);
    buf = gpuDevice().createBuffer({ size, usage: GPUBufferUsage.UNIFORM, mappedAtCreation: true });
    new Uint8Array(buf.getMappedRange()).set(bytes);
    buf.unmap();
    uniformCache.set(key, buf);
  }
  return buf;
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

function currentEncoder(): GPUCommandEncoder {
  encoder ??= gpuDevice().createCommandEncoder();
  return encoder;
}

function endPass(): void {
  pass?.end();
  pass = null;
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
  const entries: GPUBindGroupEntry[] = all.map((b, i) => ({
    binding: i,
    resource: bindingResource(b, call.name),
  }));
  if (call.uniforms) {
    entries.push({ binding: all.length, resource: { buffer: uniformBuffer(call.uniforms) } });
  }
  for (const view of call.textures ?? []) entries.push({ binding: entries.length, resource: view });
  if (x * y * z === 0) return;
  const pipeline = pipelineFor(call.name, call.code);
  const bindGroup = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
  if (profiler) {
    // One pass per dispatch, so the pass timestamps bracket exactly this kernel.
    endPass();
    pass = currentEncoder().beginComputePass({ timestampWrites: profiler.slot(call.name) });
  }
  pass ??= currentEncoder().beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(x, y, z);
  if (profiler) endPass();
  batchOps.add(call.name);
  totalDispatches++;
  if (++batchDispatches >= AUTO_FLUSH_DISPATCHES) flush();
}

/** Records a buffer-to-buffer copy (ordered with the dispatches around it). */
export function encodeCopy(src: GPUBuffer, dst: GPUBuffer, bytes: number, dstOffset = 0): void {
  if (bytes === 0) return;
  endPass();
  currentEncoder().copyBufferToBuffer(src, 0, dst, dstOffset, bytes);
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
  if (encoder) toDestroy.push(resource);
  else resource.destroy();
}

/** Records zero-filling of a storage (ordered with the dispatches around it). */
export function encodeClear(s: Storage): void {
  endPass();
  currentEncoder().clearBuffer(s.buffer, 0, Math.ceil(s.bytes / 4) * 4);
}

/**
 * Records an upload of `data` into a storage. The bytes go through a fresh staging buffer copied
 * inside the command stream, so the write lands after earlier recorded work that may still read a
 * recycled buffer (a plain `queue.writeBuffer` would overtake it).
 */
export function encodeUpload(s: Storage, data: ArrayBufferView): void {
  const bytes = data.byteLength;
  if (bytes === 0) return;
  const staging = gpuDevice().createBuffer({
    size: Math.ceil(bytes / 4) * 4,
    usage: GPUBufferUsage.COPY_SRC,
    mappedAtCreation: true,
  });
  new Uint8Array(staging.getMappedRange(), 0, bytes).set(
    new Uint8Array(data.buffer, data.byteOffset, bytes),
  );
  staging.unmap();
  encodeCopy(staging, s.buffer, Math.ceil(bytes / 4) * 4);
  toDestroy.push(staging);
  stagedBytes += bytes;
  if (stagedBytes >= AUTO_FLUSH_STAGED_BYTES) flush();
}

/** Submits everything recorded so far. Cheap when nothing is pending; never waits for the GPU. */
export function flush(): void {
  if (!encoder) return;
  endPass();
  const enc = encoder;
  const ops = [...batchOps].join(", ");
  encoder = null;
  batchOps = new Set();
  batchDispatches = 0;
  stagedBytes = 0;
  profiler?.resolve(enc);
  scoped(`batch [${ops}]`, () => gpuDevice().queue.submit([enc.finish()]));
  profiler?.collect();
  totalSubmits++;
  for (const b of toDestroy) b.destroy();
  toDestroy = [];
}

/**
 * Copies storages into one staging buffer, submits, and waits once: the only GPU-to-JS sync.
 * Returns one ArrayBuffer per storage, `bytes` long. Throws pending GPU errors with their op names.
 */
export async function readBuffers(list: readonly Storage[]): Promise<ArrayBuffer[]> {
  const offsets: number[] = [];
  let total = 0;
  for (const s of list) {
    offsets.push(total);
    total += Math.ceil(s.bytes / 4) * 4;
  }
  const device = gpuDevice();
  const staging = device.createBuffer({
    size: Math.max(4, total),
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  list.forEach((s, i) => encodeCopy(s.buffer, staging, Math.ceil(s.bytes / 4) * 4, offsets[i]));
  flush();
  try {
    await staging.mapAsync(GPUMapMode.READ);
    await Promise.all(outstanding.splice(0));
    throwPendingErrors();
    const mapped = staging.getMappedRange();
    return list.map((s, i) => mapped.slice(offsets[i], offsets[i] + s.bytes));
  } finally {
    staging.destroy();
  }
}

/** Waits until the GPU has finished all submitted work (a sync: costs >= 11 ms on software adapters). */
export async function sync(): Promise<void> {
  flush();
  await gpuDevice().queue.onSubmittedWorkDone();
  await Promise.all(outstanding.splice(0));
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
        buf.destroy();
      }),
    );
  }

  destroy(): void {
    this.querySet.destroy();
    this.resolveBuf.destroy();
  }
}

let profiler: Profiler | null = null;

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
  profiler ??= new Profiler();
}

/** Stops profiling and returns GPU time per op name, largest first. */
export async function stopProfile(): Promise<ProfileEntry[]> {
  const p = profiler;
  if (!p) return [];
  flush();
  profiler = null;
  await Promise.all(p.pending);
  p.destroy();
  return [...p.totals.values()].sort((a, b) => b.ms - a.ms);
}
