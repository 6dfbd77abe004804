/**
 * Corpus -> token shards, streaming: the corpus is read in pieces, tokenized and written shard by
 * shard into a temporary folder that is renamed to its final name only when complete, so a failed
 * or interrupted run leaves nothing behind.
 * @module
 */
import { corpusFiles, countDocs, heldOutEvery, heldOutRule, streamCorpus } from "./corpus.ts";
import {
  CHUNK_BYTES,
  CHUNK_HASH,
  manifestTokenizer,
  SHARD_FORMAT,
  SHARD_VERSION,
  type ShardManifest,
  SplitWriter,
} from "./shards.ts";
import type { Tokenizer } from "./tokenizer.ts";

/** Default shard size in ids: 32 MiB of uint16, 64 MiB of uint32. */
export const DEFAULT_SHARD_TOKENS = 1 << 24;

/** What {@link prepareShards} reads and writes. */
export interface PrepareOptions {
  /** Corpus path (as `train.ts --data` accepts). */
  data: string;
  /** Validation corpus; without it every k-th document of `data` is held out. */
  valData?: string;
  /** Held-out fraction when there is no `valData` (default 0.1, as train.ts). */
  valFraction?: number;
  /** Tokenizer. */
  tokenizer: Tokenizer;
  /** Preset name to record (`bytes`, `llama`) when the tokenizer has no files. */
  preset?: string;
  /** Output folder: must not exist, or be empty. */
  out: string;
  /** Ids per shard (default {@link DEFAULT_SHARD_TOKENS}). */
  shardTokens?: number;
  /** Longest text piece tokenized at once (see `streamCorpus`). */
  pieceChars?: number;
  /** Bytes per corpus read (see `streamCorpus`). */
  readBytes?: number;
  /** Called after each piece with the corpus bytes read, their total, and the ids written. */
  onProgress?: (bytesRead: number, totalBytes: number, tokens: number) => void;
  /** Aborting stops the run and removes what it wrote. */
  signal?: AbortSignal;
}

async function checkOut(out: string): Promise<boolean> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(out);
  } catch {
    return false;
  }
  if (!info.isDirectory) throw new Error(`--out ${out}: is a file, not a folder`);
  for await (const _ of Deno.readDir(out)) {
    throw new Error(`--out ${out}: already exists and is not empty (choose another folder)`);
  }
  return true;
}

async function totalBytes(paths: string[]): Promise<number> {
  let n = 0;
  for (const p of paths) n += (await Deno.stat(p)).size;
  return n;
}

/** Tokenizes a corpus into a shard folder (layout in data/shards.ts) and returns its manifest. */
export async function prepareShards(opts: PrepareOptions): Promise<ShardManifest> {
  const { data, valData, tokenizer: tok, out } = opts;
  const shardTokens = opts.shardTokens ?? DEFAULT_SHARD_TOKENS;
  const valFraction = valData ? null : opts.valFraction ?? 0.1;
  const outExists = await checkOut(out);
  const files = [...await corpusFiles(data), ...(valData ? await corpusFiles(valData) : [])];
  const total = await totalBytes(files);
  // Which documents are held out must be known as they stream by; only a corpus of fewer than
  // k documents (whose last one is held out) needs its count, and counting stops at k.
  let isVal: (i: number) => boolean = () => false;
  const limit = valFraction === null ? 1 : heldOutEvery(valFraction);
  for (const p of valData ? [data, valData] : [data]) {
    const n = await countDocs(p, limit);
    if (n === 0) throw new Error(`data path ${p} holds no text`);
    if (valFraction !== null) isVal = heldOutRule(n, valFraction);
  }

  const slash = out.replace(/\/+$/, "").lastIndexOf("/");
  const parent = slash >= 0 ? out.slice(0, slash) || "/" : ".";
  await Deno.mkdir(parent, { recursive: true });
  const tmp = `${parent}/.${out.slice(slash + 1).replace(/\/+$/, "")}.tmp-${crypto.randomUUID()}`;
  await Deno.mkdir(tmp);
  try {
    const train = new SplitWriter(tmp, "train", tok.vocabSize, shardTokens);
    const val = new SplitWriter(tmp, "val", tok.vocabSize, shardTokens);
    let bytesBefore = 0;
    const passes: { path: string; fixed?: SplitWriter }[] = valData
      ? [{ path: data, fixed: train }, { path: valData, fixed: val }]
      : [{ path: data }];
    for (const { path, fixed } of passes) {
      let writer = fixed ?? train;
      let doc = -1;
      let bytes = 0;
      for await (const piece of streamCorpus(path, opts)) {
        opts.signal?.throwIfAborted();
        if (piece.doc !== doc) {
          if (doc >= 0) await writer.endDoc(tok.eos);
          doc = piece.doc;
          writer = fixed ?? (isVal(doc) ? val : train);
        }
        await writer.push(tok.encode(piece.text));
        bytes = piece.bytesRead;
        opts.onProgress?.(bytesBefore + bytes, total, train.tokens + val.tokens);
      }
      if (doc >= 0) await writer.endDoc(tok.eos);
      bytesBefore += bytes;
    }
    const splits = { train: await train.finish(), val: await val.finish() };
    for (const [name, s] of Object.entries(splits)) {
      if (s.docs === 0) {
        throw new Error(`the ${name === "val" ? "validation" : "training"} data has no tokens`);
      }
    }
    const tokenizer = manifestTokenizer(tok, opts.preset);
    for (const f of tok.files ?? []) {
      await Deno.copyFile(f, `${tmp}/${f.slice(f.lastIndexOf("/") + 1)}`);
    }
    const manifest: ShardManifest = {
      format: SHARD_FORMAT,
      version: SHARD_VERSION,
      dtype: train.dtype,
      shardTokens,
      tokenizer,
      splits,
      source: { data, valData: valData ?? null, valFraction },
      checksum: { algorithm: CHUNK_HASH, chunkBytes: CHUNK_BYTES },
    };
    await Deno.writeTextFile(`${tmp}/manifest.json`, JSON.stringify(manifest, null, 1) + "\n");
    if (outExists) await Deno.remove(out); // empty, checked above
    await Deno.rename(tmp, out);
    return manifest;
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
}
