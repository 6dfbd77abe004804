/**
 * Checkpoint files of a run folder (Deno): the format and its (de)serialization live in
 * `io/checkpoint.ts`; this writes them atomically and durably (temp file, fsync, rename), keeps the
 * older ones `keep` asks for, and removes the temporary files a killed write left behind.
 * @module
 */
import {
  type LoadCheckpointOptions,
  readCheckpoint,
  type TrainingState,
  writeCheckpoint,
} from "../io/checkpoint.ts";
import { fileSource, openSafetensors, tempPrefix, writeFileAtomically } from "./safetensors.ts";

export * from "../io/checkpoint.ts";

/** The file name of a run's latest checkpoint inside its output folder. */
export const CHECKPOINT_FILE = "checkpoint.safetensors";

/** Options of {@link saveCheckpoint}. */
export interface SaveOptions {
  /**
   * How many checkpoints to keep: the new one at `path`, and the `keep − 1` before it as
   * `<path without .safetensors>.step-<step>.safetensors` (see {@link keptCheckpoints}); default 1.
   * The one being replaced stays whole until the new one is complete either way.
   */
  keep?: number;
}

/**
 * Writes a checkpoint file (see `writeCheckpoint` in `io/checkpoint.ts`) atomically and durably: a
 * temporary file is synced, then renamed over `path`. With `keep` > 1 the replaced checkpoint is
 * kept under its step's name first. Nothing is written when a tensor is non-finite.
 */
export async function saveCheckpoint(
  path: string,
  state: TrainingState,
  opts: SaveOptions = {},
): Promise<void> {
  const keep = opts.keep ?? 1;
  await writeFileAtomically(path, (sink) => writeCheckpoint(sink, state), {
    beforeRename: keep > 1 ? () => keepPrevious(path, state.step) : undefined,
  });
  if (keep > 1) await pruneKept(path, keep - 1);
}

/** The checkpoints kept beside `path` by `keep`, oldest first: `[step, file]` pairs. */
export async function keptCheckpoints(path: string): Promise<[number, string][]> {
  const { dir, stem } = splitPath(path);
  const found: [number, string][] = [];
  const [head, tail] = [`${stem}.step-`, ".safetensors"];
  try {
    for await (const e of Deno.readDir(dir)) {
      const step = e.name.slice(head.length, e.name.length - tail.length);
      if (e.isFile && e.name.startsWith(head) && e.name.endsWith(tail) && /^\d+$/.test(step)) {
        found.push([Number(step), `${dir}/${e.name}`]);
      }
    }
  } catch { /* no folder: nothing kept */ }
  return found.sort((a, b) => a[0] - b[0]);
}

function splitPath(path: string): { dir: string; stem: string } {
  const slash = path.lastIndexOf("/");
  const dir = slash >= 0 ? path.slice(0, slash) || "/" : ".";
  const stem = path.slice(slash + 1).replace(/\.safetensors$/, "");
  return { dir, stem };
}

// A hard link: the old checkpoint is never absent from `path` while the new one is renamed in. One
// of the same step as the new one is simply replaced.
async function keepPrevious(path: string, next: number): Promise<void> {
  let step: number;
  try {
    const f = await openSafetensors(path);
    step = Number(f.metadata.step);
    f.close();
  } catch {
    return; // nothing there yet, or unreadable: nothing worth keeping under a step name
  }
  if (!Number.isSafeInteger(step) || step === next) return;
  const { dir, stem } = splitPath(path);
  const target = `${dir}/${stem}.step-${step}.safetensors`;
  await Deno.remove(target).catch(() => {});
  await Deno.link(path, target).catch(() => Deno.copyFile(path, target));
}

async function pruneKept(path: string, keep: number): Promise<void> {
  const kept = await keptCheckpoints(path);
  for (const [, file] of kept.slice(0, Math.max(0, kept.length - keep))) {
    await Deno.remove(file).catch(() => {});
  }
}

/** Removes temporary files left by a checkpoint write that was killed (they are never complete). */
export async function removeStaleTemps(path: string): Promise<string[]> {
  const { dir } = splitPath(path);
  const prefix = tempPrefix(path).slice(dir.length + 1);
  const removed: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.startsWith(prefix)) {
        await Deno.remove(`${dir}/${e.name}`);
        removed.push(e.name);
      }
    }
  } catch { /* no folder */ }
  return removed;
}

/** Reads a checkpoint file; errors name the file and the problem. */
export async function loadCheckpoint(
  path: string,
  opts: LoadCheckpointOptions = {},
): Promise<TrainingState> {
  return await readCheckpoint(await fileSource(path), path, opts);
}
