/**
 * Whether anything is at a path, for the entry points' "never overwrite" and "is there a run to
 * resume" questions.
 * @module
 */

/** True when something is at `path`: a file, a folder, or a link (even one to nothing). */
export async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}
