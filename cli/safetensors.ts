/**
 * Safetensors files on disk (Deno): the format itself lives in `io/safetensors.ts`; this adds
 * files as byte sources and sinks, and writes that are atomic and durable — a temporary file in
 * the same folder receives everything, is synced, then renamed over the target (and the folder
 * synced), so a crash leaves either the old file or the complete new one (and maybe a stale
 * temporary file, see {@link tempPrefix}).
 * @module
 */
import type { ByteSink, ByteSource } from "../io/bytes.ts";
import {
  decodeSafetensors,
  memorySources,
  openSafetensors as openSource,
  type SafetensorsFile,
  type SafetensorsReader,
  type TensorSource,
  type WriteOptions as SinkWriteOptions,
  writeSafetensors as writeToSink,
} from "../io/safetensors.ts";
import { beforeWrite } from "./faults.ts";

export * from "../io/safetensors.ts";

/** Opens `path` as a {@link ByteSource}; errors name the file. */
export async function fileSource(path: string): Promise<ByteSource> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const size = (await file.stat()).size;
    return {
      size,
      async read(pos, out) {
        await file.seek(pos, Deno.SeekMode.Start);
        let got = 0;
        while (got < out.byteLength) {
          const n = await file.read(out.subarray(got));
          if (n === null) {
            throw new Error(`${path}: unexpected end of file (truncated while reading?)`);
          }
          got += n;
        }
      },
      close: () => file.close(),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Options of {@link writeFileAtomically} and {@link writeSafetensorsStream}. */
export interface WriteOptions extends SinkWriteOptions {
  /**
   * Runs once the complete file is on disk under its temporary name, right before it is renamed
   * over `path`; e.g. to keep the file it replaces under another name.
   */
  beforeRename?: () => Promise<void>;
}

/** The prefix of the temporary files {@link writeFileAtomically} writes next to `path`. */
export function tempPrefix(path: string): string {
  return `${path}.tmp-`;
}

async function syncDir(path: string): Promise<void> {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  try {
    const f = await Deno.open(dir, { read: true });
    try {
      await f.sync();
    } finally {
      f.close();
    }
  } catch {
    // Not every platform lets a directory be opened or synced; the rename itself is still atomic.
  }
}

/**
 * Writes `path` atomically and durably: `write` fills a seekable sink over a temporary file in the
 * same folder, which is synced and renamed over `path` only when `write` succeeds; on failure the
 * temporary file is removed and `path` is untouched.
 */
export async function writeFileAtomically(
  path: string,
  write: (sink: ByteSink) => Promise<void>,
  opts: Pick<WriteOptions, "beforeRename"> = {},
): Promise<void> {
  const tmp = `${tempPrefix(path)}${crypto.randomUUID()}`;
  const file = await Deno.open(tmp, { write: true, createNew: true });
  let closed = false;
  const writeAll = async (chunk: Uint8Array) => {
    beforeWrite(tmp);
    let off = 0;
    while (off < chunk.byteLength) off += await file.write(chunk.subarray(off));
  };
  let end = 0;
  try {
    await write({
      async write(chunk) {
        await writeAll(chunk);
        end += chunk.byteLength;
      },
      async writeAt(offset, bytes) {
        await file.seek(offset, Deno.SeekMode.Start);
        await writeAll(bytes);
        await file.seek(end, Deno.SeekMode.Start);
      },
    });
    await file.sync();
    file.close();
    closed = true;
    await opts.beforeRename?.();
    await Deno.rename(tmp, path);
    await syncDir(path);
  } catch (e) {
    if (!closed) file.close();
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Writes a safetensors file from tensor sources, atomically and durably (see
 * {@link writeFileAtomically}); host memory: the header plus whatever chunk a source hands over.
 */
export async function writeSafetensorsStream(
  path: string,
  sources: readonly TensorSource[],
  metadata: Record<string, string>,
  opts: WriteOptions = {},
): Promise<void> {
  await writeFileAtomically(path, (sink) => writeToSink(sink, sources, metadata, opts), opts);
}

/** Opens and validates a safetensors file; errors name the file and the problem. */
export async function openSafetensors(path: string): Promise<SafetensorsReader> {
  return await openSource(await fileSource(path), path);
}

/** Writes a small file held in memory, atomically and durably (tensors in sorted name order). */
export async function writeSafetensors(
  path: string,
  file: SafetensorsFile,
  opts: WriteOptions = {},
): Promise<void> {
  await writeFileAtomically(
    path,
    (sink) => writeToSink(sink, memorySources(file), file.metadata, opts),
    opts,
  );
}

/** Reads and validates a small file into memory (use {@link openSafetensors} for large ones). */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  return decodeSafetensors(bytes, path);
}
