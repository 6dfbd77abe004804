/**
 * Whole-file replacement that a concurrent reader never sees half done.
 * @module
 */

import { beforeWrite } from "./faults.ts";

/**
 * Writes `text` to `path`.tmp and renames it over `path`: a reader sees the old file or the new
 * one, never a mix. A temporary left by a kill is overwritten and renamed away by the next write
 * (one writer per file, as each run folder has). Not durable across a power cut (no fsync): for
 * files that are redrawn often and cost nothing to redraw.
 */
export async function writeTextAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  try {
    beforeWrite(tmp);
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`writing ${path}: ${(e as Error).message}`, { cause: e });
  }
}
