/**
 * Training checkpoints: parameters, fixed buffers (sparse supports), optimizer state, step, data
 * position and history in one safetensors file with JSON metadata. Written atomically; validated
 * on load with errors that say what does not match.
 * @module
 */
import { readAll, scope, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { readSafetensors, type StoredTensor, writeSafetensors } from "./safetensors.ts";

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

/** Writes a checkpoint (one GPU sync to read the tensors back); atomic: temp file + rename. */
export async function saveCheckpoint(path: string, state: TrainingState): Promise<void> {
  const tensors = new Map<string, Tensor>();
  const parts = {
    params: skeleton(state.params, "params", tensors),
    buffers: skeleton(state.buffers, "buffers", tensors),
    optState: skeleton(state.optState, "opt", tensors),
  };
  const names = [...tensors.keys()];
  const data = await readAll(names.map((n) => tensors.get(n)!));
  const stored: Record<string, StoredTensor> = {};
  names.forEach((n, i) => {
    const t = tensors.get(n)!;
    stored[n] = {
      dtype: t.dtype === "f32" ? "F32" : t.dtype === "i32" ? "I32" : "U32",
      shape: [...t.shape],
      data: data[i],
    };
  });
  await writeSafetensors(path, {
    tensors: stored,
    metadata: {
      format: CHECKPOINT_FORMAT,
      step: String(state.step),
      skeleton: JSON.stringify(parts, checkStorable),
      meta: JSON.stringify(state.meta),
    },
  });
}

/** Reads a checkpoint and uploads its tensors; errors name the file and the problem. */
export async function loadCheckpoint(path: string): Promise<TrainingState> {
  const file = await readSafetensors(path);
  const md = file.metadata;
  if (md.format !== CHECKPOINT_FORMAT) {
    throw new Error(
      `${path} is not an sltrain checkpoint (format ${JSON.stringify(md.format ?? null)})`,
    );
  }
  let meta: Record<string, unknown>;
  try {
    JSON.parse(md.skeleton);
    meta = JSON.parse(md.meta);
  } catch {
    throw new Error(`${path}: checkpoint metadata is not valid JSON (corrupt checkpoint?)`);
  }
  const step = Number(md.step);
  if (!Number.isInteger(step) || step < 0) throw new Error(`${path}: invalid step ${md.step}`);
  // Each `{ $tensor: name }` placeholder becomes its tensor, uploaded as the JSON is rebuilt;
  // scope: a missing tensor halfway through frees what was already uploaded.
  const parts = scope(() =>
    JSON.parse(md.skeleton, (_, v) => {
      if (typeof v !== "object" || v === null || typeof v.$tensor !== "string") return v;
      const t = file.tensors[v.$tensor];
      if (!t) throw new Error(`${path}: tensor ${v.$tensor} is missing (corrupt checkpoint?)`);
      const dtype = t.dtype === "F32" ? "f32" : t.dtype === "I32" ? "i32" : "u32";
      return tensor(t.data, t.shape, dtype);
    })
  );
  return { params: parts.params, buffers: parts.buffers, optState: parts.optState, step, meta };
}
