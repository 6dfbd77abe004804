/**
 * Training checkpoints: parameters, fixed buffers (sparse supports), optimizer state, step, data
 * position and history in one safetensors file with JSON metadata. Streamed both ways, tensor by
 * tensor in bounded chunks (a model of any size needs only a chunk of extra host memory);
 * written atomically and durably (temp file, fsync, rename); validated on load with errors that
 * say what does not match.
 * @module
 */
import type { DType } from "../core/dtype.ts";
import { scope, streamBytes, Tensor, writeBytes } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { openSafetensors, type SafetensorsDType, writeSafetensorsStream } from "./safetensors.ts";

/** Format tag stored in every checkpoint. */
export const CHECKPOINT_FORMAT = "sltrain-checkpoint-v1";

/** Everything a run needs to continue exactly. */
export interface TrainingState {
  /** Trainable tensors. */
  params: unknown;
  /** Fixed tensors (sparse supports, frozen ReLoRA weights). */
  buffers: unknown;
  /** Optimizer state tree. */
  optState: unknown;
  /** Completed optimizer steps. */
  step: number;
  /** JSON-serializable extras: run config, data position, history. */
  meta: Record<string, unknown>;
}

/** `value` with each tensor replaced by `{ $tensor: name }`, the tensors collected in `out`. */
function skeleton(value: unknown, root: string, out: Map<string, Tensor>): unknown {
  return tree.map(value, (t, path) => {
    const name = path ? `${root}.${path}` : root;
    out.set(name, t);
    return { $tensor: name };
  });
}

// Only what JSON round-trips exactly may go into the skeleton: no NaN/Infinity (JSON writes them
// as null) and no class instances (JSON would keep their fields and lose their class).
function checkStorable(this: unknown, key: string, value: unknown): unknown {
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new Error(`checkpoint: non-finite number ${value} at "${key}"`);
  }
  if (typeof value === "object" && value !== null && !Array.isArray(value)) {
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      throw new Error(
        `checkpoint: cannot store a ${Object.prototype.toString.call(value)} at "${key}"`,
      );
    }
  }
  return value;
}

const TO_FILE: Record<DType, SafetensorsDType> = {
  f32: "F32",
  i32: "I32",
  u32: "U32",
  bf16: "BF16",
  u8: "U8",
};
const FROM_FILE: Partial<Record<SafetensorsDType, DType>> = {
  F32: "f32",
  I32: "i32",
  U32: "u32",
  BF16: "bf16",
  U8: "u8",
};

/**
 * Writes a checkpoint, streaming each tensor from the device to the file in bounded chunks (a GPU
 * sync per chunk); atomic and durable: a temporary file is synced, then renamed over `path`.
 */
export async function saveCheckpoint(path: string, state: TrainingState): Promise<void> {
  const tensors = new Map<string, Tensor>();
  const parts = {
    params: skeleton(state.params, "params", tensors),
    buffers: skeleton(state.buffers, "buffers", tensors),
    optState: skeleton(state.optState, "opt", tensors),
  };
  await writeSafetensorsStream(
    path,
    [...tensors].map(([name, t]) => ({
      name,
      dtype: TO_FILE[t.dtype],
      shape: [...t.shape],
      // A packed tensor with an odd element count has a padding half-word the file does not keep.
      write: (sink) =>
        streamBytes(
          t,
          (bytes, off) =>
            sink(bytes.subarray(0, Math.max(0, Math.min(bytes.byteLength, fileBytes(t) - off)))),
        ),
    })),
    {
      format: CHECKPOINT_FORMAT,
      step: String(state.step),
      skeleton: JSON.stringify(parts, checkStorable),
      meta: JSON.stringify(state.meta),
    },
  );
}

function fileBytes(t: Tensor): number {
  return t.dtype === "bf16" ? t.size * 2 : t.dtype === "u8" ? t.size : t.size * 4;
}

/** Options of {@link loadCheckpoint}. */
export interface LoadCheckpointOptions {
  /** Load the optimizer state (default true); false leaves `optState` null and allocates none of it. */
  readonly optState?: boolean;
}

/**
 * Reads a checkpoint, streaming each tensor from the file to the device in bounded chunks; errors
 * name the file and the problem.
 */
export async function loadCheckpoint(
  path: string,
  opts: LoadCheckpointOptions = {},
): Promise<TrainingState> {
  const withOpt = opts.optState ?? true;
  const file = await openSafetensors(path);
  const md = file.metadata;
  let meta: Record<string, unknown>;
  let step: number;
  try {
    if (md.format !== CHECKPOINT_FORMAT) {
      throw new Error(
        `${path} is not an sltrain checkpoint (format ${JSON.stringify(md.format ?? null)})`,
      );
    }
    try {
      JSON.parse(md.skeleton);
      meta = JSON.parse(md.meta);
    } catch {
      throw new Error(`${path}: checkpoint metadata is not valid JSON (corrupt checkpoint?)`);
    }
    step = Number(md.step);
    if (!Number.isInteger(step) || step < 0) throw new Error(`${path}: invalid step ${md.step}`);
  } catch (e) {
    file.close();
    throw e;
  }
  // Each `{ $tensor: name }` placeholder becomes an allocated tensor, filled from the file chunk
  // by chunk below; scope: a missing tensor or a failed read frees what was already allocated.
  const fills: [string, Tensor][] = [];
  try {
    const parts = scope(() =>
      JSON.parse(md.skeleton, (_, v) => {
        if (typeof v !== "object" || v === null || typeof v.$tensor !== "string") return v;
        if (!withOpt && /^opt(\.|$)/.test(v.$tensor)) return null;
        const e = file.entries.get(v.$tensor);
        if (!e) throw new Error(`${path}: tensor ${v.$tensor} is missing (corrupt checkpoint?)`);
        const dtype = FROM_FILE[e.dtype];
        if (!dtype) {
          throw new Error(`${path}: tensor ${v.$tensor} has unsupported dtype ${e.dtype}`);
        }
        const t = Tensor.empty(e.shape, dtype);
        fills.push([v.$tensor, t]);
        return t;
      })
    );
    try {
      for (const [name, t] of fills) {
        // Chunks are whole 32-bit words except a packed tensor's last one, padded to a word.
        await file.read(name, (bytes, off) => {
          const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
          padded.set(bytes);
          writeBytes(t, padded, off);
        });
      }
    } catch (e) {
      tree.dispose(parts);
      throw e;
    }
    const optState = withOpt ? parts.optState : null;
    return { params: parts.params, buffers: parts.buffers, optState, step, meta };
  } finally {
    file.close();
  }
}
