/**
 * Small tokenizer.json files made on the spot (no downloads): a GPT-2-style byte-level BPE
 * trained on a sample text, and a word-level vocabulary large enough to need uint32 shards.
 */

/** GPT-2's map from bytes to the printable characters that byte-level vocabularies use. */
function byteChars(): string[] {
  const keep: number[] = [];
  for (let b = 0; b < 256; b++) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) keep.push(b);
  }
  const out = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    out[b] = String.fromCodePoint(keep.includes(b) ? b : 256 + extra++);
  }
  return out;
}

const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

/**
 * A byte-level BPE tokenizer.json with `merges` merges learned from `text` (most frequent pair
 * first, ties by name), the 256 byte tokens, and `<|endoftext|>` as the last id.
 */
export function bpeTokenizerJson(text: string, merges: number): Record<string, unknown> {
  const chars = byteChars();
  const enc = new TextEncoder();
  const counts = new Map<string, number>();
  for (const w of text.match(/ ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+/gu) ?? []) {
    const key = Array.from(enc.encode(w), (b) => chars[b]).join("\u0000");
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  let words = [...counts].map(([k, n]) => ({ parts: k.split("\u0000"), n }));
  const vocab: Record<string, number> = {};
  chars.forEach((c, b) => (vocab[c] = b));
  const learned: string[] = [];
  while (learned.length < merges) {
    const pairs = new Map<string, number>();
    for (const { parts, n } of words) {
      for (let i = 0; i + 1 < parts.length; i++) {
        const p = `${parts[i]} ${parts[i + 1]}`;
        pairs.set(p, (pairs.get(p) ?? 0) + n);
      }
    }
    const best = [...pairs].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0];
    if (!best) break;
    const [a, b] = best[0].split(" ");
    learned.push(best[0]);
    vocab[a + b] = Object.keys(vocab).length;
    words = words.map(({ parts, n }) => {
      const out: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        const merge = parts[i] === a && parts[i + 1] === b;
        out.push(merge ? a + b : parts[i]);
        if (merge) i++;
      }
      return { parts: out, n };
    });
  }
  const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(Object.keys(vocab).length, "<|endoftext|>")],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", ...byteLevel },
    post_processor: { type: "ByteLevel", ...byteLevel },
    decoder: { type: "ByteLevel", ...byteLevel },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: learned,
    },
  };
}

/**
 * A WordPiece tokenizer.json of whole words: `[UNK]` 0, `</s>` 1, then `w0`, `w1`, … up to `size`
 * ids (tokenizers.js has no WordLevel model; WordPiece over whole words behaves the same).
 */
export function wordTokenizerJson(size: number): Record<string, unknown> {
  const vocab: Record<string, number> = { "[UNK]": 0, "</s>": 1 };
  for (let i = 2; i < size; i++) vocab[`w${i - 2}`] = i;
  return {
    version: "1.0",
    added_tokens: [special(0, "[UNK]"), special(1, "</s>")],
    normalizer: null,
    pre_tokenizer: { type: "WhitespaceSplit" },
    post_processor: null,
    decoder: { type: "WordPiece", prefix: "##", cleanup: false },
    model: {
      type: "WordPiece",
      vocab,
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
    },
  };
}

/** Writes `json` (and a tokenizer_config.json when given) into `dir`; returns tokenizer.json's path. */
export async function writeTokenizer(
  dir: string,
  json: unknown,
  config?: unknown,
): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(json));
  if (config !== undefined) {
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(config));
  }
  return `${dir}/tokenizer.json`;
}
