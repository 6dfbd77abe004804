/**
 * Which adapter's kernel configuration the fused ops (flash attention, residual + RMSNorm) use:
 * the device's own kind by default, or one forced, so that the real-GPU configuration (workgroup
 * memory tiles, one workgroup per row) runs and is checked on a software adapter too.
 * @module
 */
import { type AdapterKind, deviceInfo } from "../core/device.ts";

/** The configuration fused ops pick: `"auto"` (the device's kind) or a kind forced. */
export type FusedTarget = "auto" | AdapterKind;

let target: FusedTarget = "auto";

/**
 * Forces the kernel configuration of the fused ops for every later call (`"gpu"`: the one for
 * real GPUs, `"cpu"`: the one for software adapters, `"auto"`: the device's); returns the previous
 * setting. Meant for tests and benchmarks.
 */
export function setFusedTarget(t: FusedTarget): FusedTarget {
  const prev = target;
  target = t;
  return prev;
}

/** The adapter kind whose kernel configuration fused ops use now. */
export function fusedTarget(): AdapterKind {
  return target === "auto" ? deviceInfo().kind : target;
}
