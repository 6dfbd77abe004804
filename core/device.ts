/**
 * The one shared WebGPU device: adapter discovery, limits, optional features and error capture.
 * @module
 */
import { DeviceError } from "./errors.ts";

/** Whether the adapter is a CPU rasterizer (Mesa llvmpipe/lavapipe) or a real GPU; kernels pick tile configs by it. */
export type AdapterKind = "cpu" | "gpu";

/** What the library knows about the device it runs on. */
export interface DeviceInfo {
  /** The adapter's description, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`. */
  readonly description: string;
  /** `cpu` for software adapters, `gpu` otherwise. */
  readonly kind: AdapterKind;
  /** True when the device was created with `shader-f16`. */
  readonly f16: boolean;
  /** True when the device was created with `subgroups`. */
  readonly subgroups: boolean;
  /**
   * The subgroup size when the device has `subgroups` and the adapter reports a fixed one
   * (subgroupMinSize == subgroupMaxSize, e.g. 8 on lavapipe), else undefined.
   */
  readonly subgroupSize?: number;
  /** True when the device can time kernels (`timestamp-query`), used by `profile`. */
  readonly timestamps: boolean;
  /** The device's limits (requested at the adapter's maxima). */
  readonly limits: GPUSupportedLimits;
  /** A line for the user: which adapter runs, and how to get a faster one when there is one. */
  readonly summary: string;
}

/** Options for {@link init}. */
export interface InitOptions {
  /** Passed to `requestAdapter`. */
  powerPreference?: GPUPowerPreference;
}

interface DeviceState {
  device: GPUDevice;
  info: DeviceInfo;
  lost: string | null;
  /** GPU errors not thrown yet, each naming what caused it. */
  errors: string[];
  /** Error scopes still to be popped. */
  outstanding: Promise<void>[];
  /** What was last handed to the GPU, for the device-lost message. */
  lastWork: string;
}

let state: DeviceState | null = null;
let pending: Promise<DeviceInfo> | null = null;

const NO_WEBGPU = "WebGPU is not available here: in a browser, use one with WebGPU (Chrome, Edge " +
  "113+, Safari 26+, Firefox 141+) from a secure context (https:// or http://127.0.0.1); in Deno, " +
  "install a GPU driver (Linux without a GPU: Mesa's Vulkan software driver)";

function summarize(description: string, kind: AdapterKind): string {
  return kind === "gpu"
    ? `adapter: ${description} (GPU)`
    : `adapter: ${description} (CPU software adapter: every kernel runs on the CPU, so training ` +
      `is slow; a machine with a GPU is much faster)`;
}

const LIMIT_NAMES = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxUniformBufferBindingSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxBindGroups",
  "maxBindingsPerBindGroup",
] as const;

/**
 * Creates the shared device, once; later calls return the same info. The device is requested with
 * the adapter's own limits, and with `shader-f16`/`subgroups` when the adapter can provide them.
 * Uses nothing but `navigator.gpu` (no permission, environment or file): on Deno the entry points
 * choose the backend first (`cli/gpu.ts`).
 */
export function init(options: InitOptions = {}): Promise<DeviceInfo> {
  if (state) return Promise.resolve(state.info);
  pending ??= createDevice(options).finally(() => (pending = null));
  return pending;
}

async function createDevice(options: InitOptions): Promise<DeviceInfo> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) throw new DeviceError(`navigator.gpu is missing. ${NO_WEBGPU}`);
  const adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference });
  if (!adapter) throw new DeviceError(`No WebGPU adapter was found. ${NO_WEBGPU}`);

  const requiredLimits: Record<string, number> = {};
  for (const name of LIMIT_NAMES) {
    const v = (adapter.limits as unknown as Record<string, number>)[name];
    if (typeof v === "number") requiredLimits[name] = v;
  }
  const f16 = adapter.features.has("shader-f16");
  const device = await requestWithOptionalFeatures(adapter, requiredLimits, f16);
  // Chromium reports an empty description (SwiftShader: vendor "google", architecture "swiftshader").
  const ai = adapter.info;
  const description = ai?.description ||
    [ai?.vendor, ai?.architecture, ai?.device].filter(Boolean).join(" ") || "unknown adapter";
  const kind: AdapterKind = adapter.info?.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader/i
      .test(description)
    ? "cpu"
    : "gpu";
  const info: DeviceInfo = {
    description,
    kind,
    f16: device.features.has("shader-f16"),
    subgroups: device.features.has("subgroups"),
    subgroupSize: device.features.has("subgroups") ? fixedSubgroupSize(adapter) : undefined,
    timestamps: device.features.has("timestamp-query"),
    limits: device.limits,
    summary: summarize(description, kind),
  };
  const s: DeviceState = {
    device,
    info,
    lost: null,
    errors: [],
    outstanding: [],
    lastWork: "nothing yet",
  };
  device.lost.then((l) => (s.lost = `${l.reason}: ${l.message || "no message"}`));
  device.addEventListener("uncapturederror", (e) => {
    // Outside any scope; bind groups carry their op and shapes as labels, which wgpu quotes.
    const err = (e as GPUUncapturedErrorEvent).error;
    s.errors.push(`${errorKind(err)} error: ${err.message}`);
  });
  state = s;
  return info;
}

function fixedSubgroupSize(adapter: GPUAdapter): number | undefined {
  const info = adapter.info as
    | (GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number })
    | undefined;
  const lo = info?.subgroupMinSize, hi = info?.subgroupMaxSize;
  return typeof lo === "number" && lo > 0 && lo === hi ? lo : undefined;
}

// Lavapipe supports subgroups without advertising them, so ask and fall back on refusal.
async function requestWithOptionalFeatures(
  adapter: GPUAdapter,
  requiredLimits: Record<string, number>,
  f16: boolean,
): Promise<GPUDevice> {
  const base: GPUFeatureName[] = f16 ? ["shader-f16"] : [];
  if (adapter.features.has("timestamp-query")) base.push("timestamp-query");
  try {
    return await adapter.requestDevice({
      requiredFeatures: [...base, "subgroups" as GPUFeatureName],
      requiredLimits,
    });
  } catch {
    return await adapter.requestDevice({ requiredFeatures: base, requiredLimits });
  }
}

/** The shared GPUDevice; throws if {@link init} has not completed or the device was lost. */
export function gpuDevice(): GPUDevice {
  return current().device;
}

/** Information about the shared device; throws if {@link init} has not completed. */
export function deviceInfo(): DeviceInfo {
  return current().info;
}

function current(): DeviceState {
  if (!state) {
    throw new DeviceError(
      "sltrain is not initialized: call `await init()` before creating tensors",
    );
  }
  if (state.lost !== null) {
    throw new DeviceError(
      `the GPU device was lost (${state.lost}); the last work handed to it was ${state.lastWork}`,
    );
  }
  return state;
}

function errorKind(e: GPUError): string {
  return e instanceof GPUOutOfMemoryError
    ? "out-of-memory"
    : e instanceof GPUValidationError
    ? "validation"
    : "internal";
}

let allocationFault: ((what: string) => string | void) | null = null;

/**
 * Fault injection (a test hook; train.ts arms it only through `SLTRAIN_FAULT`): `hook` sees every
 * device-buffer allocation before it is made; a string it returns is reported as an out-of-memory
 * error of that allocation, exactly as a GPU's would be (at the next sync). null disarms it.
 */
export function setAllocationFault(hook: ((what: string) => string | void) | null): void {
  allocationFault = hook;
}

/** Called by every device-buffer allocation, inside its error scope (see {@link setAllocationFault}). */
export function beforeAllocation(what: string): void {
  const message = allocationFault?.(what);
  if (message) current().errors.push(`out-of-memory error in ${what}: ${message}`);
}

/** The error filters {@link captureErrors} listens to by default. */
export const ALL_ERRORS: readonly GPUErrorFilter[] = ["validation", "out-of-memory", "internal"];

/**
 * Runs `fn` (which calls the device) inside error scopes: any validation, out-of-memory or
 * internal error it causes is recorded against `what` (an op with its shapes, a copy, an
 * allocation) and thrown by the next {@link throwPendingErrors}. Costs a few microseconds.
 */
export function captureErrors(
  what: string,
  fn: () => void,
  filters: readonly GPUErrorFilter[] = ALL_ERRORS,
): void {
  const s = current();
  for (const f of filters) s.device.pushErrorScope(f);
  try {
    fn();
  } finally {
    for (let k = 0; k < filters.length; k++) {
      s.outstanding.push(
        s.device.popErrorScope().then((e) => {
          if (e) s.errors.push(`${errorKind(e)} error in ${what}: ${e.message}`);
        }, () => {/* the device was lost: reported as such */}),
      );
    }
  }
}

/**
 * The device-lost error, if the device is lost: a WebGPU call that fails because the device went
 * away often fails before the loss is reported (it arrives as a promise), so a caller handling a
 * failure asks this first, which waits a moment for the report.
 */
export async function deviceLostError(): Promise<DeviceError | null> {
  if (!state) return null;
  await new Promise((r) => setTimeout(r, 10));
  try {
    current();
    return null;
  } catch (e) {
    return e as DeviceError;
  }
}

/** Notes what was just handed to the GPU, so that losing the device can say what was running. */
export function noteWork(what: string): void {
  current().lastWork = what;
}

/** Waits for the error scopes still open to report (part of every sync). */
export async function settleErrors(): Promise<void> {
  if (!state) return;
  await Promise.all(state.outstanding.splice(0));
}

/**
 * Throws a DeviceError if the device was lost or the GPU reported errors since the last check.
 * The first error leads (later ones in the same batch are usually its consequences: a pipeline
 * that failed to build makes every use of it invalid).
 */
export function throwPendingErrors(): void {
  const s = current();
  if (s.errors.length > 0) {
    const [first, ...rest] = s.errors.splice(0);
    throw new DeviceError(
      `GPU ${first}` +
        (rest.length > 0 ? ` (and ${rest.length} more error(s) after it: ${rest[0]}...)` : ""),
    );
  }
}
