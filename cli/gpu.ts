/**
 * WebGPU on Deno, for the entry points (train.ts, sample.ts, export.ts, the `sltrain` script):
 * picks Deno's backend before the first adapter request — the user's `DENO_WEBGPU_BACKEND`, else
 * Vulkan when a Vulkan loader and a driver are installed — and says which adapter runs and how to
 * get a faster one. It only reads the environment and the file system where the process already
 * may (permissions are queried, never requested), so it never prompts.
 * @module
 */
import { type DeviceInfo, init, type InitOptions } from "../core/device.ts";
import { DeviceError } from "../core/errors.ts";

/** The WebGPU backend of Deno's `navigator.gpu`: `default` when Deno chose. */
export type Backend = "vulkan" | "gl" | "default";

/** The device, the backend it runs through, and a line for the user. */
export interface DenoDeviceInfo extends DeviceInfo {
  /** `vulkan` or `gl` when chosen (by the user or here), `default` when Deno chose. */
  readonly backend: Backend;
}

const INSTALL_HINT = "Install a WebGPU driver: on Debian/Ubuntu `apt-get install -y libvulkan1 " +
  "mesa-vulkan-drivers` (Vulkan, software lavapipe) or `libegl1 libgl1-mesa-dri` (GL, llvmpipe); " +
  "sltrain picks Vulkan when it is installed (override with DENO_WEBGPU_BACKEND=vulkan|gl).";

const VULKAN_HINT = "install `libvulkan1 mesa-vulkan-drivers` (apt-get) for the Vulkan software " +
  "adapter, which adds shader-f16 and subgroups and avoids GL's slow shader compiles";

const LIB_DIRS = [
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/lib",
  "/lib/x86_64-linux-gnu",
  "/lib64",
  "/lib",
];
const ICD_DIRS = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];

function granted(desc: Deno.PermissionDescriptor): boolean {
  return Deno.permissions.querySync(desc).state === "granted";
}

function anyFile(paths: string[]): boolean {
  return paths.some((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  });
}

function hasIcd(): boolean {
  if (Deno.env.get("VK_ICD_FILENAMES") || Deno.env.get("VK_DRIVER_FILES")) return true;
  return ICD_DIRS.some((d) => {
    try {
      return [...Deno.readDirSync(d)].some((e) => e.name.endsWith(".json"));
    } catch {
      return false;
    }
  });
}

/**
 * Chooses Deno's WebGPU backend before the first `requestAdapter` (Deno reads
 * `DENO_WEBGPU_BACKEND` then): the user's setting if any, else Vulkan when a Vulkan loader and a
 * driver (ICD) are installed, else Deno's default (GL on a machine without Vulkan). On Vulkan it
 * also quiets the loader's Wayland probe (see {@link quietVulkanLoader}).
 * Without env, read and write permissions already granted it leaves everything to Deno.
 */
export function chooseBackend(): Backend {
  if (!granted({ name: "env" })) return "default";
  const set = Deno.env.get("DENO_WEBGPU_BACKEND");
  if (set === "gl") return set;
  if (set === "vulkan") return quietVulkanLoader();
  if (set || !granted({ name: "read" }) || !granted({ name: "write" })) return "default";
  if (!anyFile(LIB_DIRS.map((d) => `${d}/libvulkan.so.1`)) || !hasIcd()) return "default";
  Deno.env.set("DENO_WEBGPU_BACKEND", "vulkan");
  return quietVulkanLoader();
}

/**
 * Gives the Vulkan loader a private `XDG_RUNTIME_DIR` when none is set (and writing is allowed):
 * without one, its Wayland probe prints "error: XDG_RUNTIME_DIR is invalid" lines on stderr,
 * whoever chose Vulkan.
 */
function quietVulkanLoader(): "vulkan" {
  if (!Deno.env.get("XDG_RUNTIME_DIR") && granted({ name: "write" })) {
    const dir = Deno.makeTempDirSync({ prefix: "sltrain-xdg-" });
    Deno.chmodSync(dir, 0o700);
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  }
  return "vulkan";
}

/**
 * {@link chooseBackend}, then `init()`: the shared device, with a summary that names the backend
 * and, on a software adapter without shader-f16, how to get the faster one. A missing adapter is
 * a DeviceError saying what to install.
 */
export async function initGpu(options: InitOptions = {}): Promise<DenoDeviceInfo> {
  const backend = chooseBackend();
  let info: DeviceInfo;
  try {
    info = await init(options);
  } catch (e) {
    if (e instanceof DeviceError) throw new DeviceError(`${e.message}. ${INSTALL_HINT}`);
    throw e;
  }
  const via = backend === "default" ? "" : ` via ${backend === "vulkan" ? "Vulkan" : "GL"}`;
  const summary = info.summary.replace(info.description, `${info.description}${via}`) +
    (info.kind === "cpu" && !info.f16 ? `; ${VULKAN_HINT}` : "");
  return { ...info, backend, summary };
}
