/**
 * User corpora: a text file, a folder of text files, or JSONL with a `text` field; each file (or
 * JSONL line) is one document.
 * @module
 */
import type { Doc } from "./brown.ts";

/** Loads documents from a path; errors name the path and what is wrong with it. */
export async function loadCorpus(path: string): Promise<Doc[]> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch {
    throw new Error(`data path ${path} does not exist`);
  }
  let docs: Doc[];
  if (info.isDirectory) {
    const names: string[] = [];
    for await (const e of Deno.readDir(path)) {
      if (e.isFile && !e.name.startsWith(".")) names.push(e.name);
    }
    names.sort();
    docs = [];
    for (const n of names) docs.push(...(await loadFile(`${path}/${n}`)));
  } else {
    docs = await loadFile(path);
  }
  docs = docs.filter((d) => d.text.trim().length > 0);
  if (docs.length === 0) throw new Error(`data path ${path} holds no text`);
  return docs;
}

/**
 * A file's text. Training on mis-decoded bytes would be silently wrong, so a file that is not
 * UTF-8 (another encoding, or a mix) or that holds NUL bytes (binary) is refused with the offset
 * of the first offending byte. A UTF-8 byte-order mark is dropped.
 */
export async function readText(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`cannot read data file ${path}: ${(e as Error).message}`);
  }
  const nul = bytes.indexOf(0);
  if (nul >= 0) {
    throw new Error(`data file ${path} looks binary (a NUL byte at offset ${nul}), not text`);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new Error(
      `data file ${path} is not valid UTF-8 (first bad byte at offset ${firstBadUtf8(bytes)}); ` +
        "convert it, e.g. iconv -f latin1 -t utf-8",
    );
  }
}

// The offset of the first byte that does not start or continue a UTF-8 sequence (for the message;
// the decoder above is the judge, and also refuses overlong forms and surrogates).
function firstBadUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length;) {
    const c = b[i];
    const n = c < 0x80
      ? 0
      : c >= 0xc2 && c < 0xe0
      ? 1
      : c >= 0xe0 && c < 0xf0
      ? 2
      : c < 0xf5
      ? 3
      : -1;
    if (n < 0 || (c >= 0x80 && c < 0xc2)) return i;
    for (let k = 1; k <= n; k++) if (i + k >= b.length || (b[i + k] & 0xc0) !== 0x80) return i;
    i += n + 1;
  }
  return 0;
}

async function loadFile(path: string): Promise<Doc[]> {
  const text = await readText(path);
  if (!/\.jsonl$/i.test(path)) return [{ id: path, text }];
  const docs: Doc[] = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch {
      throw new Error(`${path}:${i + 1}: not valid JSON`);
    }
    const t = (obj as { text?: unknown })?.text;
    if (typeof t !== "string") throw new Error(`${path}:${i + 1}: no string "text" field`);
    docs.push({ id: `${path}:${i + 1}`, text: t });
  });
  return docs;
}

/** Holds out a deterministic fraction of documents (every k-th) for validation; at least one each. */
export function holdOut(docs: readonly Doc[], fraction: number): { train: Doc[]; val: Doc[] } {
  if (!(fraction > 0 && fraction < 1)) {
    throw new Error(`validation fraction must be in (0, 1), got ${fraction}`);
  }
  if (docs.length < 2) {
    throw new Error(
      "need at least two documents to hold one out for validation (or pass --val-data)",
    );
  }
  const every = Math.max(2, Math.round(1 / fraction));
  const val = docs.filter((_, i) => i % every === every - 1);
  const train = docs.filter((_, i) => i % every !== every - 1);
  return val.length > 0 ? { train, val } : { train: docs.slice(0, -1), val: docs.slice(-1) };
}
