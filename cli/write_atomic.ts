/**
 * Whole-file replacement that a concurrent reader never sees half done.
 * @module
 */

/**
 * Writes `text` to a temporary sibling of `path` and renames it over `path`: a reader sees the
 * old file or the new one, never a mix (not durable across a power cut: no fsync, for files that
 * are redrawn often and cost nothing to redraw).
 */
export async function writeTextAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    await Deno.writeTextFile(tmp, text);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
