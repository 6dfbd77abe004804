/**
 * Saving and loading, in a browser as in Deno: safetensors over bytes, Blobs and streams, training
 * checkpoints, and Hugging Face LLaMA folders (config, export, import). Everything works on
 * {@link ByteSource}s and {@link ByteSink}s — a `File` a user dropped, a `Blob` to download, a
 * `Uint8Array` — and streams tensors to and from the device in bounded chunks. On Deno,
 * `jsr:@sltrain/sltrain/files` adds the same on files and folders (atomic writes, run folders).
 *
 * @example Download a checkpoint from a page, and load it back from a dropped file
 * ```ts
 * import { blobSource, memorySink, readCheckpoint, writeCheckpoint } from "jsr:@sltrain/sltrain/io";
 *
 * const sink = memorySink();
 * await writeCheckpoint(sink, { params, buffers, optState, step, meta: {} });
 * const url = URL.createObjectURL(sink.blob());
 * // … later, from <input type="file">:
 * const state = await readCheckpoint(blobSource(file), file.name);
 * ```
 * @module
 */
export {
  blobSource,
  type ByteSink,
  type ByteSource,
  bytesSource,
  type MemorySink,
  memorySink,
  streamSink,
} from "./bytes.ts";
export {
  decodeSafetensors,
  DTYPE_BYTES,
  encodeSafetensors,
  openSafetensors,
  type SafetensorsDType,
  type SafetensorsEntry,
  type SafetensorsFile,
  type SafetensorsReader,
  type StoredTensor,
  type TensorSource,
  type WriteOptions,
  writeSafetensors,
} from "./safetensors.ts";
export {
  CHECKPOINT_FORMAT,
  type LoadCheckpointOptions,
  readCheckpoint,
  type TrainingState,
  writeCheckpoint,
} from "./checkpoint.ts";
export {
  filesFolder,
  HF_NAMES,
  type HfConfig,
  hfConfigJson,
  type HfConfigOptions,
  HfFormatError,
  type HfWeights,
  type ModelFolder,
  openHfWeights,
  parseHfConfig,
  readHfConfig,
  type SLTrainSection,
} from "./hf_format.ts";
export { ExportError, type ExportOptions, exportSources, writeHfFiles } from "./hf_export.ts";
export { type HfLoaded, loadHf, type LoadHfOptions } from "./hf_import.ts";
export type { TokenizerFiles } from "../data/tokenizer_export.ts";
