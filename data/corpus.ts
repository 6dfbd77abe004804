/**
 * User corpora: a text file, a folder of text files, or JSONL with a `text` field; each file (or
 * JSONL line) is one document. {@link loadCorpus} reads them into memory; {@link streamCorpus}
 * reads the same documents in bounded pieces, for corpora larger than memory.
 * @module
 */
import type { Doc } from "./brown.ts";

/** The files of a corpus path in reading order (a folder's non-hidden files, sorted by name). */
export async function corpusFiles(path: string): Promise<string[]> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch {
    throw new Error(`data path ${path} does not exist`);
  }
  if (!info.isDirectory) return [path];
  const names: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.isFile && !e.name.startsWith(".")) names.push(e.name);
  }
  return names.sort().map((n) => `${path}/${n}`);
}

const isJsonl = (path: string) => /\.jsonl$/i.test(path);

/** Loads documents from a path; errors name the path and what is wrong with it. */
export async function loadCorpus(path: string): Promise<Doc[]> {
  const docs: Doc[] = [];
  for (const f of await corpusFiles(path)) docs.push(...(await loadFile(f)));
  const kept = docs.filter((d) => d.text.trim().length > 0);
  if (kept.length === 0) throw new Error(`data path ${path} holds no text`);
  return kept;
}

/** The text of JSONL line `lineNo` (1-based), or an error naming the file and line. */
function jsonlText(path: string, lineNo: number, line: string): string {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new Error(`${path}:${lineNo}: not valid JSON`);
  }
  const t = (obj as { text?: unknown })?.text;
  if (typeof t !== "string") throw new Error(`${path}:${lineNo}: no string "text" field`);
  return t;
}

/**
 * A file's text. Training on mis-decoded bytes would be silently wrong, so a file that is not
 * UTF-8 (another encoding, or a mix) or that holds NUL bytes (binary) is refused with the offset
 * of the first offending byte. A UTF-8 byte-order mark is dropped.
 */
async function readUtf8(path: string): Promise<string> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    throw new Error(`cannot read data file ${path}: ${(e as Error).message}`);
  }
  const nul = bytes.indexOf(0);
  if (nul >= 0) throw binaryFile(path, nul);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw notUtf8(path, firstBadUtf8(bytes));
  }
}

function binaryFile(path: string, offset: number): Error {
  return new Error(`data file ${path} looks binary (a NUL byte at offset ${offset}), not text`);
}

function notUtf8(path: string, offset: number): Error {
  return new Error(
    `data file ${path} is not valid UTF-8 (first bad byte at offset ${offset}); convert it, ` +
      "e.g. iconv -f latin1 -t utf-8",
  );
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
  const text = await readUtf8(path);
  if (!isJsonl(path)) return [{ id: path, text }];
  const docs: Doc[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim()) docs.push({ id: `${path}:${i + 1}`, text: jsonlText(path, i + 1, line) });
  });
  return docs;
}

/** A piece of a streamed document. */
export interface DocPiece {
  /** Index of the document among the corpus's non-empty documents (as {@link loadCorpus} returns them). */
  doc: number;
  /** The next part of its text. */
  text: string;
  /** Bytes of the corpus read so far, for progress. */
  bytesRead: number;
}

/** Options of {@link streamCorpus}. */
export interface StreamOptions {
  /** Longest piece in UTF-16 units; longer documents are cut at the last newline before it. */
  pieceChars?: number;
  /** Bytes per file read. */
  readBytes?: number;
  /** Only the first piece of each document (to count documents cheaply). */
  firstPieceOnly?: boolean;
}

/** Where to cut `s` so the first part has at most `max` units: after a newline, else mid-line. */
function cutPoint(s: string, max: number): number {
  const nl = s.lastIndexOf("\n", max - 1);
  if (nl >= 0) return nl + 1;
  const c = s.charCodeAt(max - 1);
  return c >= 0xd800 && c <= 0xdbff ? max - 1 : max; // never split a surrogate pair
}

/** Decoded text of a file in chunks, with the running byte count; refused as {@link readUtf8} does. */
async function* readText(
  path: string,
  readBytes: number,
): AsyncGenerator<{ text: string; bytes: number }> {
  using file = await Deno.open(path);
  const dec = new TextDecoder("utf-8", { fatal: true });
  const buf = new Uint8Array(readBytes);
  let at = 0;
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    const bytes = buf.subarray(0, n);
    const nul = bytes.indexOf(0);
    if (nul >= 0) throw binaryFile(path, at + nul);
    let text;
    try {
      text = dec.decode(bytes, { stream: true });
    } catch {
      throw notUtf8(path, at + firstBadUtf8(bytes));
    }
    at += n;
    yield { text, bytes: n };
  }
  let rest;
  try {
    rest = dec.decode();
  } catch {
    throw notUtf8(path, at);
  }
  if (rest) yield { text: rest, bytes: 0 };
}

/**
 * The documents of {@link loadCorpus}, in the same order and with the same `doc` numbers, as
 * pieces of at most `pieceChars` units: memory stays bounded by a piece and a read buffer (and by
 * the longest JSONL line, which has to be parsed whole). A document no longer than `pieceChars`
 * comes as one piece, so its tokens are exactly those of its whole text.
 */
export async function* streamCorpus(
  path: string,
  { pieceChars: maxChars = 1 << 22, readBytes = 1 << 20, firstPieceOnly = false }: StreamOptions =
    {},
): AsyncGenerator<DocPiece> {
  const pieceChars = Math.max(2, maxChars); // room for a surrogate pair
  let doc = -1;
  let bytesRead = 0;
  /** The pieces of a new document's text. */
  const pieces = function* (text: string): Generator<DocPiece> {
    doc++;
    for (let rest = text; rest;) {
      const cut = rest.length <= pieceChars ? rest.length : cutPoint(rest, pieceChars);
      yield { doc, text: rest.slice(0, cut), bytesRead };
      if (firstPieceOnly) return;
      rest = rest.slice(cut);
    }
  };
  for (const file of await corpusFiles(path)) {
    let carry = "";
    if (isJsonl(file)) {
      let lineNo = 0;
      /** Complete lines' texts; the unfinished last line stays in `carry` until `last`. */
      const texts = function* (last: boolean): Generator<string> {
        let from = 0;
        for (let nl; (nl = carry.indexOf("\n", from)) >= 0 || (last && from < carry.length);) {
          const end = nl >= 0 ? nl : carry.length;
          const line = carry.slice(from, end);
          from = end + 1;
          lineNo++;
          if (line.trim()) yield jsonlText(file, lineNo, line);
        }
        carry = carry.slice(from);
      };
      for await (const chunk of readText(file, readBytes)) {
        bytesRead += chunk.bytes;
        carry += chunk.text;
        for (const text of texts(false)) if (text.trim()) yield* pieces(text);
      }
      for (const text of texts(true)) if (text.trim()) yield* pieces(text);
      continue;
    }
    // A text file is one document, cut into pieces as it streams in. Leading whitespace waits
    // until the document proves non-empty (loadCorpus drops whitespace-only documents).
    let started = false;
    let pending = "";
    for await (const chunk of readText(file, readBytes)) {
      bytesRead += chunk.bytes;
      carry += chunk.text;
      while (carry.length > pieceChars && !(firstPieceOnly && started)) {
        const cut = cutPoint(carry, pieceChars);
        const piece = pending + carry.slice(0, cut);
        carry = carry.slice(cut);
        pending = "";
        if (!started && !piece.trim()) {
          pending = piece;
          continue;
        }
        if (!started) doc++;
        started = true;
        yield { doc, text: piece, bytesRead };
      }
      if (firstPieceOnly && started) break;
    }
    const last = pending + carry;
    if (started && !firstPieceOnly && last) yield { doc, text: last, bytesRead };
    else if (!started && last.trim()) yield* pieces(last);
  }
}

/** Non-empty documents of a corpus, counted up to `limit` (reads only what it needs). */
export async function countDocs(path: string, limit: number): Promise<number> {
  let n = 0;
  for await (const p of streamCorpus(path, { firstPieceOnly: true })) {
    n = p.doc + 1;
    if (n >= limit) break;
  }
  return n;
}

/** Holds out a deterministic fraction of documents (every k-th) for validation; at least one each. */
export function holdOut(docs: readonly Doc[], fraction: number): { train: Doc[]; val: Doc[] } {
  const isVal = heldOutRule(docs.length, fraction);
  return {
    train: docs.filter((_, i) => !isVal(i)),
    val: docs.filter((_, i) => isVal(i)),
  };
}

/**
 * The rule of {@link holdOut} for a corpus of `count` documents (or at least `count` when
 * `count >= heldOutEvery(fraction)`, since the rule then no longer depends on the total):
 * every k-th document with k = round(1 / fraction), or the last one when there are fewer than k.
 */
export function heldOutRule(count: number, fraction: number): (i: number) => boolean {
  const every = heldOutEvery(fraction);
  if (count < 2) {
    throw new Error(
      "need at least two documents to hold one out for validation (or pass --val-data)",
    );
  }
  return count >= every ? (i) => i % every === every - 1 : (i) => i === count - 1;
}

/** The k of {@link heldOutRule}: one document in k is held out. */
export function heldOutEvery(fraction: number): number {
  if (!(fraction > 0 && fraction < 1)) {
    throw new Error(`validation fraction must be in (0, 1), got ${fraction}`);
  }
  return Math.max(2, Math.round(1 / fraction));
}
