/**
 * A model config from the command line: a preset name or a JSON file (Deno: it reads files).
 * @module
 */
import { type LlamaConfig, parseConfig, type PresetName, PRESETS } from "../models/config.ts";
import { ConfigError } from "../models/errors.ts";

/**
 * A preset by name (case-insensitive, e.g. `60m`, `1B`), or a config read from a JSON file path
 * (see {@link parseConfig}). Strings that look like neither a preset nor a path (no `/`, `\`,
 * or `.json`) are reported as unknown presets with the valid names listed. Reading a file needs
 * `--allow-read`.
 */
export async function loadConfig(nameOrPath: string): Promise<LlamaConfig> {
  const key = nameOrPath.toLowerCase();
  if (Object.hasOwn(PRESETS, key)) return PRESETS[key as PresetName];
  if (!/[\\/]|\.json$/i.test(nameOrPath)) {
    throw new ConfigError(
      `unknown preset "${nameOrPath}"; valid presets: ${Object.keys(PRESETS).join(", ")} ` +
        `(or pass a path to a JSON config)`,
    );
  }
  let text: string;
  try {
    text = await Deno.readTextFile(nameOrPath);
  } catch (e) {
    throw new ConfigError(
      `cannot read config file ${nameOrPath}: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(
      `config file ${nameOrPath} is not valid JSON: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  return parseConfig(json, nameOrPath);
}
