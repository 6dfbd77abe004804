/**
 * The device memory a run is checked against when `--max-device-bytes` is not given: WebGPU does
 * not report a GPU's memory, but a CPU (software) adapter's buffers live in host memory, so there
 * the host's total memory is the budget. train.ts refuses a run whose planned peak (`planPeak` in
 * `plan.ts`) is over it before anything is allocated.
 * @module
 */
import type { DeviceInfo } from "../core/device.ts";

/** The device's memory in bytes and where that figure comes from; null when unknown (a GPU). */
export function deviceMemory(
  info: Pick<DeviceInfo, "kind">,
): { bytes: number; from: string } | null {
  if (info.kind !== "cpu") return null;
  try {
    return { bytes: Deno.systemMemoryInfo().total, from: "host memory of the CPU adapter" };
  } catch {
    return null; // no --allow-sys: nothing to check against
  }
}
