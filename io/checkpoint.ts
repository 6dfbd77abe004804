/**
 * Training checkpoints as bytes: parameters, fixed buffers (sparse supports), optimizer state, step,
 * data position and history in one safetensors file with JSON metadata, checksummed and never with
 * a non-finite value in it. Streamed both ways in bounded chunks (a model of any size needs only a
 * chunk of extra host memory; small tensors share one readback). Works on any byte sink and
 * source, so a browser saves a checkpoint to a Blob and loads one from a File; `cli/checkpoint.ts`
 * adds atomic files, rotation and run folders on Deno.
 * @module
 */
import type { DType } from "../core/dtype.ts";
import { NonFiniteError } from "../core/errors.ts";
import { readRanges, TRANSFER_CHUNK_BYTES } from "../core/kernel.ts";
import { scope, Tensor, writeBytes } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { ByteSink, ByteSource } from "./bytes.ts";
import {
  openSafetensors,
  type SafetensorsDType,
  type TensorSource,
  writeSafetensors,
} from "./safetensors.ts";

/**
 * Format tag stored in every checkpoint (v3: SHA-256 checksums named in the header; v2 files, with
 * the older 64-bit checksums, and v1 files, without checksums, still load).
 */
export const CHECKPOINT_FORMAT = "sltrain-checkpoint-v3";
const FORMATS_WITH_CHECKSUMS = new Set([CHECKPOINT_FORMAT, "sltrain-checkpoint-v2"]);
const FORMATS_WITHOUT_CHECKSUMS = new Set(["sltrain-checkpoint-v1"]);

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
 * Writes a checkpoint into `sink` (one that can seek back: the checksums go into the header last).
 * Tensors stream from the device (small ones share a readback, one GPU sync per
 * {@link TRANSFER_CHUNK_BYTES}). A float tensor holding NaN or ±Infinity throws a
 * {@link NonFiniteError} naming it: a checkpoint is always one a run can continue from.
 */
export async function writeCheckpoint(sink: ByteSink, state: TrainingState): Promise<void> {
  const tensors = new Map<string, Tensor>();
  const parts = {
    params: skeleton(state.params, "params", tensors),
    buffers: skeleton(state.buffers, "buffers", tensors),
    optState: skeleton(state.optState, "opt", tensors),
  };
  await writeSafetensors(
    sink,
    readbackSources([...tensors]),
    {
      format: CHECKPOINT_FORMAT,
      step: String(state.step),
      skeleton: JSON.stringify(parts, checkStorable),
      meta: JSON.stringify(state.meta),
    },
    { checksums: true },
  );
}

/**
 * The tensors as file sources, in order. Consecutive tensors that fit one transfer chunk together
 * are read back at once (one GPU sync for all of them, not one each) by the first one's `write`
 * and handed out from that buffer; a larger tensor streams alone. Each is checked for
 * non-finite values on the way.
 */
function readbackSources(tensors: [string, Tensor][]): TensorSource[] {
  const groups: [string, Tensor][][] = [];
  let bytes = Infinity;
  for (const e of tensors) {
    const n = fileBytes(e[1]);
    if (bytes + n > TRANSFER_CHUNK_BYTES) groups.push([]), bytes = 0;
    groups.at(-1)!.push(e);
    bytes += n;
  }
  return groups.flatMap((group) => {
    let held: Uint8Array[] | null = null;
    return group.map(([name, t], k): TensorSource => ({
      name,
      dtype: TO_FILE[t.dtype],
      shape: [...t.shape],
      async write(sink) {
        if (k === 0 && group.length === 1) {
          await readRanges(rangesOf([t]), async (_, b, off) => {
            const piece = b.subarray(0, Math.max(0, Math.min(b.byteLength, fileBytes(t) - off)));
            checkFinite(name, t.dtype, piece, off);
            await sink(piece);
          });
          return;
        }
        if (k === 0) {
          const out = group.map(([, x]) => new Uint8Array(fileBytes(x)));
          await readRanges(rangesOf(group.map(([, x]) => x)), (i, b, off) => {
            out[i].set(
              b.subarray(0, Math.max(0, Math.min(b.byteLength, out[i].length - off))),
              off,
            );
          });
          held = out;
        }
        const mine = held![k];
        checkFinite(name, t.dtype, mine, 0);
        held![k] = new Uint8Array(0);
        await sink(mine);
      },
    }));
  });
}

// A packed tensor with an odd element count has a padding half-word the file does not keep.
function rangesOf(ts: Tensor[]) {
  return ts.map((t) => ({ storage: t.storage, offset: t.offset, bytes: t.bytes }));
}

function checkFinite(name: string, dtype: DType, bytes: Uint8Array, offset: number): void {
  let bad = -1;
  // Typed views need aligned bytes: a view when they are (readback chunks are), else a copy.
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (dtype === "f32") {
    const v = new Float32Array(aligned.buffer, aligned.byteOffset, aligned.byteLength >> 2);
    for (let i = 0; i < v.length && bad < 0; i++) if (v[i] - v[i] !== 0) bad = i;
    offset /= 4;
  } else if (dtype === "bf16") {
    const v = new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.byteLength >> 1);
    for (let i = 0; i < v.length && bad < 0; i++) if ((v[i] & 0x7f80) === 0x7f80) bad = i;
    offset /= 2;
  }
  if (bad >= 0) {
    throw new NonFiniteError(
      `checkpoint: ${name} holds a non-finite value (element ${offset + bad}); not written`,
    );
  }
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
 * Reads a checkpoint from `source`, streaming each tensor to the device in bounded chunks; errors
 * name `name` (a file name) and the problem. Closes the source.
 */
export async function readCheckpoint(
  source: ByteSource,
  name = "checkpoint",
  opts: LoadCheckpointOptions = {},
): Promise<TrainingState> {
  const withOpt = opts.optState ?? true;
  const file = await openSafetensors(source, name);
  const md = file.metadata;
  let meta: Record<string, unknown>;
  let step: number;
  try {
    if (!FORMATS_WITH_CHECKSUMS.has(md.format) && !FORMATS_WITHOUT_CHECKSUMS.has(md.format)) {
      throw new Error(
        `${name} is not an sltrain checkpoint (format ${JSON.stringify(md.format ?? null)})`,
      );
    }
    if (FORMATS_WITH_CHECKSUMS.has(md.format) && !file.checksummed) {
      throw new Error(`${name}: checkpoint checksums are missing (corrupt checkpoint?)`);
    }
    try {
      JSON.parse(md.skeleton);
      meta = JSON.parse(md.meta);
    } catch {
      throw new Error(`${name}: checkpoint metadata is not valid JSON (corrupt checkpoint?)`);
    }
    step = Number(md.step);
    if (!Number.isInteger(step) || step < 0) throw new Error(`${name}: invalid step ${md.step}`);
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
        if (!e) throw new Error(`${name}: tensor ${v.$tensor} is missing (corrupt checkpoint?)`);
        const dtype = FROM_FILE[e.dtype];
        if (!dtype) {
          throw new Error(`${name}: tensor ${v.$tensor} has unsupported dtype ${e.dtype}`);
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
