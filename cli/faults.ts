/**
 * Fault injection, a test hook and not a feature: `SLTRAIN_FAULT=<kind>@<phase>[:<n>]`, read by
 * train.ts only, makes one fault happen in the n-th (default first) training step, evaluation or
 * checkpoint write of the run, so tests can check that each ends the run with a message naming
 * the failure and the operation, a non-zero exit, the last complete checkpoint and the log intact,
 * and that `--resume` continues bit for bit.
 *
 * - `oom`: the phase's first device-buffer allocation reports an out-of-memory error, as a GPU
 *   does (at the next sync).
 * - `device-lost`: the device is destroyed at the phase's first buffer allocation (a checkpoint
 *   write: at its first file write, between the tensors it reads back), as a driver reset would.
 * - `enospc`: the phase's first file write (a log record, a plot, a checkpoint chunk) fails with
 *   ENOSPC, as on a full disk.
 * - `stall`: the process says `SLTRAIN_FAULT: stalled in <phase> <n>` on stderr at the phase's
 *   first buffer allocation or file write, and stops there for a minute, so a test can kill it
 *   in the middle of that phase (the crash test's kills mid-step, mid-evaluation and
 *   mid-checkpoint-write).
 *
 * Phases: `step` (forward, backward, update and the log records read after it), `eval` (the
 * evaluation, its log record and plots), `checkpoint` (writing the checkpoint file).
 * @module
 */
import { gpuDevice, setAllocationFault } from "../core/device.ts";
import { FlagError } from "./flag_error.ts";

/** Fault kinds. */
export const FAULT_KINDS = ["oom", "device-lost", "enospc", "stall"] as const;
/** Phases of a run a fault can hit. */
export const PHASES = ["step", "eval", "checkpoint"] as const;
/** A phase of {@link PHASES}. */
export type Phase = (typeof PHASES)[number];

/** One fault to inject. */
export interface Fault {
  /** What happens. */
  kind: (typeof FAULT_KINDS)[number];
  /** Where. */
  phase: Phase;
  /** In the n-th occurrence of the phase (1-based). */
  n: number;
}

/** Parses `SLTRAIN_FAULT`; a bad value is a FlagError naming the format. */
export function parseFault(text: string): Fault {
  const m = /^([a-z-]+)@([a-z]+)(?::(\d+))?$/.exec(text);
  const kind = m?.[1] as Fault["kind"];
  const phase = m?.[2] as Phase;
  if (!m || !FAULT_KINDS.includes(kind) || !PHASES.includes(phase) || m[3] === "0") {
    throw new FlagError(
      `SLTRAIN_FAULT ${JSON.stringify(text)}: expected <kind>@<phase>[:<n>] with kind ${
        FAULT_KINDS.join("|")
      } and phase ${PHASES.join("|")} (a test hook)`,
    );
  }
  return { kind, phase, n: m[3] ? Number(m[3]) : 1 };
}

const NOTE = "injected by SLTRAIN_FAULT";
let armed: Fault | null = null;
let fired = false;
let inPhase = false;
/** Visits of each phase since the fault was armed. */
const counts = new Map<Phase, number>();

/** Arms `fault` for this process (train.ts, from `SLTRAIN_FAULT`); null disarms. */
export function armFault(fault: Fault | null): void {
  armed = fault;
  fired = false;
  inPhase = false;
  counts.clear();
  setAllocationFault(fault && fault.kind !== "enospc" ? onAllocation : null);
}

/** The run enters `phase` (called by the trainer); the armed fault's phase counts its visits. */
export function enterPhase(phase: Phase): void {
  if (!armed) return;
  const n = (counts.get(phase) ?? 0) + 1;
  counts.set(phase, n);
  inPhase = phase === armed.phase && n === armed.n;
}

function fire(): boolean {
  if (!armed || fired || !inPhase) return false;
  fired = true;
  return true;
}

function onAllocation(): string | void {
  if (armed?.kind === "device-lost" && armed.phase === "checkpoint") return;
  if (!fire()) return;
  if (armed!.kind === "stall") return stall();
  if (armed!.kind === "oom") return `not enough memory for this buffer (${NOTE})`;
  gpuDevice().destroy();
}

/** Says where it is and blocks this thread (so a kill lands here). */
function stall(): void {
  console.error(`SLTRAIN_FAULT: stalled in ${armed!.phase} ${armed!.n}`);
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
}

/**
 * Called before each file write of a run (log records, plots, checkpoint chunks) with what is
 * being written: throws ENOSPC when an `enospc` fault fires here; destroys the device when a
 * `device-lost` fault of a checkpoint write does.
 */
export function beforeWrite(path: string): void {
  const kind = armed?.kind;
  if (kind === "oom" || (kind === "device-lost" && armed!.phase !== "checkpoint")) return;
  if (!fire()) return;
  if (kind === "stall") return stall();
  if (kind === "device-lost") {
    gpuDevice().destroy();
    return;
  }
  throw Object.assign(
    new Error(`No space left on device (os error 28): write '${path}' (${NOTE})`),
    { code: "ENOSPC" },
  );
}
