/**
 * sltrain on Deno's file system: checkpoints, safetensors files and Hugging Face folders by path
 * (written atomically and durably: temporary file, fsync, rename), model configs from JSON files,
 * and the WebGPU backend choice of the CLI. The byte-level versions, which also work in browsers,
 * are in `jsr:@sltrain/sltrain/io`.
 *
 * @example Save a checkpoint and continue from it later
 * ```ts
 * import { initGpu, loadCheckpoint, saveCheckpoint } from "jsr:@sltrain/sltrain/files";
 *
 * await initGpu(); // picks Vulkan when installed, never prompts for permissions
 * await saveCheckpoint("run/checkpoint.safetensors", { params, buffers, optState, step, meta: {} });
 * const state = await loadCheckpoint("run/checkpoint.safetensors");
 * ```
 * @module
 */
export {
  CHECKPOINT_FILE,
  keptCheckpoints,
  loadCheckpoint,
  saveCheckpoint,
  type SaveOptions,
} from "./cli/checkpoint.ts";
export {
  fileSource,
  openSafetensors,
  readSafetensors,
  writeFileAtomically,
  type WriteOptions as FileWriteOptions,
  writeSafetensors,
  writeSafetensorsStream,
} from "./cli/safetensors.ts";
export { dirFolder, isHfFolder, openHfWeights, readHfConfig } from "./cli/hf_format.ts";
export { loadHf } from "./cli/hf_import.ts";
export { exportHf, type ExportResult } from "./cli/hf_export.ts";
export { loadConfig } from "./cli/load_config.ts";
export { type Backend, chooseBackend, type DenoDeviceInfo, initGpu } from "./cli/gpu.ts";
