/**
 * Training checkpoints: parameters, fixed buffers (sparse supports), optimizer state, step, data
 * position and history in one safetensors file with JSON metadata. Written atomically; validated
 * on load with errors that say what does not match.
 * @module
 */
import { readAll, scope, Tensor, tensor } from "../core/tensor.ts";
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

type Skeleton = null | boolean | number | string | { $tensor: string } | Skeleton[] | {
  [k: string]: Skeleton;
};

function split(value: unknown, path: string, out: Map<string, Tensor>): Skeleton {
  if (value instanceof Tensor) {
    out.set(path, value);
    return { $tensor: path };
  }
  if (value === null || value === undefined) return null;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`checkpoint: non-finite number at ${path}`);
    return value;
  }
  if (typeof value === "boolean" || typeof value === "string") return value;
  if (Array.isArray(value)) return value.map((v, i) => split(v, `${path}.${i}`, out));
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, split(v, `${path}.${k}`, out)]),
    );
  }
  throw new Error(`checkpoint: cannot store a ${Object.prototype.toString.call(value)} at ${path}`);
}

function join(s: Skeleton, stored: Record<string, StoredTensor>, source: string): unknown {
  if (s === null || typeof s !== "object") return s;
  if (Array.isArray(s)) return s.map((v) => join(v, stored, source));
  if ("$tensor" in s && typeof s.$tensor === "string") {
    const t = stored[s.$tensor];
    if (!t) throw new Error(`${source}: tensor ${s.$tensor} is missing (corrupt checkpoint?)`);
    const dtype = t.dtype === "F32" ? "f32" : t.dtype === "I32" ? "i32" : "u32";
    return tensor(t.data, t.shape, dtype);
  }
  return Object.fromEntries(
    Object.entries(s).map(([k, v]) => [k, join(v as Skeleton, stored, source)]),
  );
}

/** Writes a checkpoint (one GPU sync to read the tensors back); atomic: temp file + rename. */
export async function saveCheckpoint(path: string, state: TrainingState): Promise<void> {
  const tensors = new Map<string, Tensor>();
  const skeleton = {
    params: split(state.params, "params", tensors),
    buffers: split(state.buffers, "buffers", tensors),
    optState: split(state.optState, "opt", tensors),
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
      skeleton: JSON.stringify(skeleton),
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
  let skeleton: { params: Skeleton; buffers: Skeleton; optState: Skeleton };
  let meta: Record<string, unknown>;
  try {
    skeleton = JSON.parse(md.skeleton);
    meta = JSON.parse(md.meta);
  } catch {
    throw new Error(`${path}: checkpoint metadata is not valid JSON (corrupt checkpoint?)`);
  }
  const step = Number(md.step);
  if (!Number.isInteger(step) || step < 0) throw new Error(`${path}: invalid step ${md.step}`);
  // scope: a missing tensor halfway through frees what was already uploaded.
  return scope(() => ({
    params: join(skeleton.params, file.tensors, path),
    buffers: join(skeleton.buffers, file.tensors, path),
    optState: join(skeleton.optState, file.tensors, path),
    step,
    meta,
  }));
}
