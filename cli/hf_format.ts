/**
 * Hugging Face LLaMA folders on disk (Deno): the format lives in `io/hf_format.ts`, over any
 * {@link ModelFolder}; this makes a directory one, and keeps the path-taking helpers the CLI uses.
 * @module
 */
import {
  type HfConfig,
  type HfWeights,
  type ModelFolder,
  openHfWeights as openFolderWeights,
  readHfConfig as readFolderConfig,
} from "../io/hf_format.ts";
import { fileSource } from "./safetensors.ts";

export * from "../io/hf_format.ts";

/** A directory as a {@link ModelFolder}: its regular files, by name. */
export function dirFolder(dir: string): ModelFolder {
  return {
    name: dir,
    async open(file) {
      const path = `${dir}/${file}`;
      const isFile = await Deno.stat(path).then((s) => s.isFile, () => false);
      return isFile ? await fileSource(path) : null;
    },
  };
}

/** Reads and validates `dir/config.json`; errors say when the folder is not an HF model at all. */
export function readHfConfig(dir: string): Promise<HfConfig> {
  return readFolderConfig(dirFolder(dir));
}

/** True when `dir` is a folder with a config.json (a Hugging Face model, valid or not). */
export async function isHfFolder(dir: string): Promise<boolean> {
  try {
    return (await Deno.stat(dir)).isDirectory && (await Deno.stat(`${dir}/config.json`)).isFile;
  } catch {
    return false;
  }
}

/** Opens the weight files of the Hugging Face folder `dir` (see `openHfWeights` in io). */
export function openHfWeights(dir: string): Promise<HfWeights> {
  return openFolderWeights(dirFolder(dir));
}
