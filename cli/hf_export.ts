/**
 * Writes a model as a Hugging Face folder on disk (Deno): the files themselves come from
 * `io/hf_export.ts`; the folder appears atomically, everything written into a temporary sibling
 * that is renamed into place only when complete.
 * @module
 */
import { exists } from "./exists.ts";
import type { LlamaModel, LlamaParams } from "../models/llama.ts";
import {
  checkExportFormat,
  ExportError,
  type ExportOptions,
  writeHfFiles,
} from "../io/hf_export.ts";

export * from "../io/hf_export.ts";

/** What {@link exportHf} wrote. */
export interface ExportResult {
  /** Files in the folder. */
  readonly files: readonly string[];
  /** Bytes of model.safetensors. */
  readonly weightBytes: number;
}

/**
 * Writes `model` with `params` to the new folder `out` (which must not exist). Nothing appears at
 * `out` unless everything was written: a failure removes the temporary folder.
 */
export async function exportHf(
  model: LlamaModel,
  params: LlamaParams,
  out: string,
  opts: ExportOptions,
): Promise<ExportResult> {
  checkExportFormat(model, opts.format);
  if (await exists(out)) {
    throw new ExportError(`${out} already exists; choose a new folder (nothing is overwritten)`);
  }
  const tmp = `${out.replace(/\/+$/, "")}.tmp-${crypto.randomUUID()}`;
  await Deno.mkdir(tmp);
  try {
    const files: string[] = [];
    await writeHfFiles(model, params, opts, async (name) => {
      files.push(name);
      const file = await Deno.open(`${tmp}/${name}`, { write: true, createNew: true });
      return {
        async write(chunk) {
          let off = 0;
          while (off < chunk.byteLength) off += await file.write(chunk.subarray(off));
        },
        async close() {
          await file.sync();
          file.close();
        },
      };
    });
    const weightBytes = (await Deno.stat(`${tmp}/model.safetensors`)).size;
    // Checked again: another process may have created it meanwhile (rename would replace a file).
    if (await exists(out)) throw new ExportError(`${out} appeared while exporting; not replaced`);
    await Deno.rename(tmp, out);
    return { files: files.sort(), weightBytes };
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
