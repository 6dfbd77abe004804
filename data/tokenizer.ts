/**
 * Tokenizers: byte-level (256 ids, for tiny CPU runs) and LLaMA's 32000-piece SentencePiece
 * vocabulary (npm package `llama-tokenizer-js`, offline) for the paper presets.
 * @module
 */

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

/** A tokenizer by name: `bytes` or `llama`. */
export async function tokenizerByName(name: string): Promise<Tokenizer> {
  if (name === "bytes") return byteTokenizer();
  if (name === "llama") return await llamaTokenizer();
  throw new Error(`unknown tokenizer "${name}" (expected "bytes" or "llama")`);
}
