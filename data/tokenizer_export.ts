/**
 * A tokenizer as the files a Hugging Face model folder carries: a tokenizer.json-based tokenizer's
 * own files, or generated ones for the presets: the byte tokenizer as a byte-level BPE without
 * merges (ids = byte values), and LLaMA's SentencePiece vocabulary as the BPE-with-byte-fallback
 * tokenizer.json that Hugging Face ships for LLaMA-2 (its vocabulary and merges, in their order,
 * come from the same file through `llama-tokenizer-js`).
 * @module
 */
import type { Tokenizer } from "./tokenizer.ts";

/** What to write beside a model, and the ids its config.json names. */
export interface TokenizerFiles {
  /** File name -> contents. */
  readonly files: ReadonlyMap<string, Uint8Array>;
  /** Begin-of-text id, when the tokenizer has one. */
  readonly bos?: number;
  /** End-of-text id. */
  readonly eos: number;
  /** One line saying what was written. */
  readonly description: string;
}

const enc = new TextEncoder();
const json = (v: unknown) => enc.encode(JSON.stringify(v, null, 1) + "\n");

/**
 * GPT-2's byte -> printable character table, which byte-level tokenizers use so that every byte is
 * a visible vocabulary entry: printable Latin-1 bytes map to themselves, the rest to U+0100 onward.
 */
export function byteLevelChars(): string[] {
  const keep = (b: number) =>
    (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 256;
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(keep(b) ? b : next++));
}

function bytesTokenizerJson(): unknown {
  const chars = byteLevelChars();
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: false,
      use_regex: false,
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(chars.map((c, i) => [c, i])),
      merges: [],
    },
  };
}

interface LlamaTokData {
  vocabById: string[];
  merges: Map<string, number>;
}

async function llamaTokenizerJson(): Promise<unknown> {
  const tok = (await import("llama-tokenizer-js")).default as unknown as LlamaTokData;
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: true,
    special: true,
  });
  const bos = { SpecialToken: { id: "<s>", type_id: 0 } };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
    normalizer: {
      type: "Sequence",
      normalizers: [
        { type: "Prepend", prepend: "▁" },
        { type: "Replace", pattern: { String: " " }, content: "▁" },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [bos, { Sequence: { id: "A", type_id: 0 } }],
      pair: [bos, { Sequence: { id: "A", type_id: 0 } }, bos, {
        Sequence: { id: "B", type_id: 1 },
      }],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab: Object.fromEntries(tok.vocabById.map((piece, id) => [piece, id])),
      // Map keys keep insertion order, which is the merge priority.
      merges: [...tok.merges.keys()],
    },
  };
}

/** The id of a named token in a tokenizer.json (its added tokens, then its model vocabulary). */
function idOf(tokJson: Record<string, unknown>, name: string): number | undefined {
  const added = (tokJson.added_tokens ?? []) as { id: number; content: string }[];
  const hit = added.find((t) => t.content === name);
  if (hit) return hit.id;
  const vocab = (tokJson.model as { vocab?: unknown } | undefined)?.vocab;
  const id = vocab && !Array.isArray(vocab) ? (vocab as Record<string, unknown>)[name] : undefined;
  return typeof id === "number" ? id : undefined;
}

/**
 * The files of `tok` for a model folder: `tokenizer.json` (and `tokenizer_config.json`) copied as
 * they are for a tokenizer.json-based tokenizer, generated for the `bytes` and `llama` presets.
 */
export async function tokenizerFiles(tok: Tokenizer): Promise<TokenizerFiles> {
  if (tok.files && tok.files.length > 0) {
    const files = new Map<string, Uint8Array>();
    for (const path of tok.files) {
      files.set(path.slice(path.lastIndexOf("/") + 1), await Deno.readFile(path));
    }
    const parse = (name: string) =>
      files.has(name) ? JSON.parse(new TextDecoder().decode(files.get(name))) : {};
    const cfg = parse("tokenizer_config.json");
    const bosName = typeof cfg.bos_token === "string" ? cfg.bos_token : cfg.bos_token?.content;
    const bos = typeof bosName === "string" ? idOf(parse("tokenizer.json"), bosName) : undefined;
    return {
      files,
      bos,
      eos: tok.eos,
      description: `copied ${[...files.keys()].join(" and ")} of ${tok.files[0]}`,
    };
  }
  if (tok.name === "bytes-v1") {
    const eosChar = byteLevelChars()[tok.eos];
    return {
      files: new Map([
        ["tokenizer.json", json(bytesTokenizerJson())],
        [
          "tokenizer_config.json",
          json({
            tokenizer_class: "PreTrainedTokenizerFast",
            eos_token: eosChar,
            pad_token: eosChar,
            clean_up_tokenization_spaces: false,
          }),
        ],
      ]),
      eos: tok.eos,
      description:
        "wrote the byte tokenizer as a byte-level BPE tokenizer.json (id = byte value, " +
        `end of text = byte 0, spelled "${eosChar}")`,
    };
  }
  if (tok.name === "llama-sp-32000") {
    return {
      files: new Map([
        ["tokenizer.json", json(await llamaTokenizerJson())],
        [
          "tokenizer_config.json",
          json({
            tokenizer_class: "LlamaTokenizerFast",
            bos_token: "<s>",
            eos_token: "</s>",
            unk_token: "<unk>",
            add_bos_token: true,
            add_eos_token: false,
            legacy: true,
            clean_up_tokenization_spaces: false,
          }),
        ],
      ]),
      bos: 1,
      eos: 2,
      description: "wrote LLaMA-2's tokenizer.json (32000 pieces, byte fallback) and its config",
    };
  }
  throw new Error(`tokenizer ${tok.name} has no files to export`);
}
