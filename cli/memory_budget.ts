/**
 * Whether a run fits the device before anything is allocated: its analytic memory (weights,
 * optimizer states, indices, projectors, and one gradient per trainable value) against what the
 * device has. WebGPU does not report a GPU's memory, so the budget is known only for a CPU
 * (software) adapter, whose buffers live in host memory, or when `SLTRAIN_DEVICE_MEMORY` gives it
 * (bytes, or with a suffix: `80GB`, `24GiB`).
 * @module
 */
import type { DeviceInfo } from "../core/device.ts";
import { estimateMemory } from "../models/estimate.ts";
import { fmtBytes } from "./format.ts";
import { FlagError } from "./flags.ts";
import { linearMethod, optimizerSpec, type RunConfig } from "./run_config.ts";

const UNITS: Record<string, number> = {
  "": 1,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  TB: 1e12,
  KIB: 2 ** 10,
  MIB: 2 ** 20,
  GIB: 2 ** 30,
  TIB: 2 ** 40,
};

/** Parses `SLTRAIN_DEVICE_MEMORY`: bytes, or a number with a unit (`80GB`, `24GiB`). */
export function parseBytes(text: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2].toUpperCase()] : undefined;
  if (!m || unit === undefined) {
    throw new FlagError(
      `SLTRAIN_DEVICE_MEMORY ${JSON.stringify(text)}: expected bytes, or e.g. 80GB or 24GiB`,
    );
  }
  return Number(m[1]) * unit;
}

/** The device's memory in bytes, and where that figure comes from; null when unknown. */
export function deviceMemory(
  info: Pick<DeviceInfo, "kind">,
): { bytes: number; from: string } | null {
  const env = Deno.permissions.querySync({ name: "env", variable: "SLTRAIN_DEVICE_MEMORY" })
      .state === "granted"
    ? Deno.env.get("SLTRAIN_DEVICE_MEMORY")
    : undefined;
  if (env) return { bytes: parseBytes(env), from: "SLTRAIN_DEVICE_MEMORY" };
  if (info.kind !== "cpu") return null;
  try {
    return { bytes: Deno.systemMemoryInfo().total, from: "host memory (CPU adapter)" };
  } catch {
    return null;
  }
}

/** The bytes a run needs at least (see the module doc). */
export function runBytes(run: RunConfig): number {
  const est = estimateMemory(
    run.model,
    { method: linearMethod(run), optimizer: optimizerSpec(run), weights: run.dtype },
    "ours",
  );
  return est.total + 4 * est.params.trainable;
}

/** Refuses a run that cannot fit the device, with the estimate (see the module doc). */
export function checkFits(run: RunConfig, info: Pick<DeviceInfo, "kind">): void {
  const have = deviceMemory(info);
  if (!have) return;
  const need = runBytes(run);
  if (need > have.bytes) {
    throw new FlagError(
      `${run.method} on ${run.modelName} needs at least ${fmtBytes(need)} (weights, optimizer ` +
        `states and gradients, before activations), more than the device's ${
          fmtBytes(have.bytes)
        } (${have.from}); choose a smaller model, a lower --rank, --optimizer adamw8bit or ` +
        "--dtype bf16",
    );
  }
}
