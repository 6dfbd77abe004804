/**
 * Where bytes come from and go to, the same in a browser and in Deno: a {@link ByteSource} reads
 * any range of a file-like object (a `Uint8Array`, a `Blob` or `File`, a Deno file), a
 * {@link ByteSink} takes bytes in order (and, where it can, patches earlier ones: the safetensors
 * writer puts checksums into the header after the data has streamed).
 * @module
 */

/** Random-access bytes of known size: a file, a Blob, an array. */
export interface ByteSource {
  /** Total size in bytes. */
  readonly size: number;
  /** Fills `into` with the bytes at `offset`; throws when the source ends first. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Releases what the source holds open (a file handle); a no-op for memory. */
  close(): void;
}

/** An ordered byte destination. */
export interface ByteSink {
  /** Appends `chunk` (the sink may not keep a reference to it after the promise resolves). */
  write(chunk: Uint8Array): Promise<void>;
  /**
   * Overwrites already written bytes at `offset` (absent on sinks that cannot seek back, such as a
   * `WritableStream`).
   */
  writeAt?(offset: number, bytes: Uint8Array): Promise<void>;
}

function ended(name: string, offset: number, want: number, size: number): Error {
  return new Error(
    `${name}: unexpected end of data (${want} bytes at ${offset} asked, ${size} in all; truncated?)`,
  );
}

/** A source over bytes held in memory. */
export function bytesSource(bytes: Uint8Array, name = "bytes"): ByteSource {
  return {
    size: bytes.byteLength,
    read(offset, into) {
      if (offset < 0 || offset + into.byteLength > bytes.byteLength) {
        return Promise.reject(ended(name, offset, into.byteLength, bytes.byteLength));
      }
      into.set(bytes.subarray(offset, offset + into.byteLength));
      return Promise.resolve();
    },
    close() {},
  };
}

/**
 * A source over a `Blob` (a `File` from an `<input>` or a drop, or `await response.blob()`):
 * each read slices only the range it needs, so a large file is never held whole in JS memory.
 */
export function blobSource(blob: Blob, name = "blob"): ByteSource {
  return {
    size: blob.size,
    async read(offset, into) {
      if (offset < 0 || offset + into.byteLength > blob.size) {
        throw ended(name, offset, into.byteLength, blob.size);
      }
      into.set(new Uint8Array(await blob.slice(offset, offset + into.byteLength).arrayBuffer()));
    },
    close() {},
  };
}

/** A sink that keeps everything in memory; `bytes()` joins it, `blob()` wraps it for a download. */
export interface MemorySink extends ByteSink {
  /** Everything written so far, as one array. */
  bytes(): Uint8Array;
  /** Everything written so far, as a Blob of `type` (default `application/octet-stream`). */
  blob(type?: string): Blob;
  /** Bytes written so far. */
  readonly size: number;
}

/** A {@link MemorySink}: chunks are copied as they arrive and may be patched later. */
export function memorySink(): MemorySink {
  const chunks: { at: number; bytes: Uint8Array }[] = [];
  let size = 0;
  const sink: MemorySink = {
    get size() {
      return size;
    },
    write(chunk) {
      chunks.push({ at: size, bytes: chunk.slice() });
      size += chunk.byteLength;
      return Promise.resolve();
    },
    writeAt(offset, bytes) {
      if (offset < 0 || offset + bytes.byteLength > size) {
        return Promise.reject(new Error(`memorySink: writeAt ${offset} past the ${size} bytes`));
      }
      for (const c of chunks) {
        const lo = Math.max(offset, c.at),
          hi = Math.min(offset + bytes.byteLength, c.at + c.bytes.byteLength);
        if (lo < hi) c.bytes.set(bytes.subarray(lo - offset, hi - offset), lo - c.at);
      }
      return Promise.resolve();
    },
    bytes() {
      const out = new Uint8Array(size);
      for (const c of chunks) out.set(c.bytes, c.at);
      return out;
    },
    blob(type = "application/octet-stream") {
      return new Blob(chunks.map((c) => c.bytes as Uint8Array<ArrayBuffer>), { type });
    },
  };
  return sink;
}

/** A sink over a `WritableStream` (a Deno file's `.writable`, a compression stream, …); cannot seek back. */
export function streamSink(
  stream: WritableStream<Uint8Array>,
): ByteSink & { close(): Promise<void> } {
  const writer = stream.getWriter();
  return {
    // Copied: the caller may reuse its buffer once the promise resolves, the stream may not be done with it.
    write: (chunk) => writer.write(chunk.slice()),
    close: () => writer.close(),
  };
}
