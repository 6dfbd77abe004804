/**
 * What train.ts's --tokenizer and --data name when they are not the in-memory corpus: a tokenizer
 * by name or path, and a shard folder made by prepare.ts (its tokenizer, and training and
 * validation sequences streamed from disk).
 * @module
 */
import {
  isShardDir,
  openShards,
  ShardError,
  shardSequences,
  type ShardSet,
} from "../data/shards.ts";
import { hfTokenizer, type Tokenizer, tokenizerByName } from "../data/tokenizer.ts";
import { FlagError, packingFlag, type RawFlags } from "./flags.ts";
import { fmtCount } from "./format.ts";
import type { DataSource, RunData } from "./trainer.ts";
import type { Packing, Sequences } from "../data/batches.ts";

/** The tokenizer `--tokenizer NAME` names; a bad name or file is a {@link FlagError}. */
export async function tokenizerFlag(name: string): Promise<Tokenizer> {
  return await tokenizerByName(name).catch((e) => {
    throw new FlagError(`--tokenizer: ${(e as Error).message}`);
  });
}

/** The shard folder --data names, or null when --data is absent or a corpus. */
export async function shardFlag(flags: RawFlags): Promise<ShardSet | null> {
  return typeof flags.data === "string" && await isShardDir(flags.data)
    ? await openShards(flags.data)
    : null;
}

/**
 * The tokenizer the shards were made with (a preset, or the tokenizer.json copied beside them).
 * `--tokenizer`, when given, must be that same tokenizer.
 */
export async function shardTokenizer(set: ShardSet, flag: RawFlags[string]): Promise<Tokenizer> {
  const want = set.manifest.tokenizer;
  if (typeof flag === "string") {
    const tok = await tokenizerFlag(flag);
    if (tok.name !== want.name) {
      throw new FlagError(
        `--tokenizer ${flag} (${tok.name}) is not the tokenizer ${set.dir} was made with (${want.name}); leave --tokenizer out to use that one`,
      );
    }
    return tok;
  }
  const tok = want.preset
    ? await tokenizerByName(want.preset)
    : await hfTokenizer(`${set.dir}/tokenizer.json`);
  if (tok.name !== want.name || tok.vocabSize !== want.vocabSize || tok.eos !== want.eos) {
    throw new ShardError(
      `${set.dir}: its tokenizer (${tok.name}) differs from the one in manifest.json (${want.name})`,
    );
  }
  return tok;
}

/** Training and validation sequences over the shards, and a one-line description. */
export function shardRunData(
  set: ShardSet,
  tok: Tokenizer,
  flags: RawFlags,
  seq: number,
): { data: RunData; desc: string } {
  for (const f of ["val-data", "val-fraction"]) {
    if (flags[f] !== undefined) {
      throw new FlagError(
        `--${f}: ${set.dir} is a shard folder with its own validation split (choose it in prepare.ts)`,
      );
    }
  }
  const packing = packingFlag(flags);
  const { train, val } = set;
  const sequences = shardSequences(train, seq, packing, tok);
  return {
    data: {
      train: sequences,
      val: shardSequences(val, seq, packing, tok),
      source: dataSource(tok, packing, sequences),
    },
    desc: `${set.dir} (token shards): ${train.docs} train docs, ${val.docs} val docs (${
      fmtCount(train.length)
    } and ${fmtCount(val.length)} tokens with end-of-text ids), ${tok.name}`,
  };
}

/** The provenance a checkpoint records for sequences made with `tok` and `packing`. */
export function dataSource(tok: Tokenizer, packing: Packing, train: Sequences): DataSource {
  const { name, vocabSize, eos, pad } = tok;
  return { tokenizer: { name, vocabSize, eos, pad }, packing, sequences: train.count };
}
