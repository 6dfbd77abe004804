/**
 * Sequences and batches: packed contiguous windows (default) or one document per sequence with
 * padding (the paper's recipe), in a seeded, reproducible, resumable order.
 * @module
 */
import { Rng } from "../core/rng.ts";
import type { TokenizedDocs } from "./cache.ts";

/** Label value of targets that the loss ignores (padding). */
export const IGNORE_INDEX: number = -100;

/** How documents become sequences. */
export type Packing = "packed" | "none";

/** A fixed set of training sequences of `seq` input tokens and their next-token targets. */
export interface Sequences {
  /** Number of sequences. */
  readonly count: number;
  /** Input length. */
  readonly seq: number;
  /** Writes sequence `i` into `inputs`/`targets` at `offset` (both `seq` long). */
  fill(i: number, inputs: Int32Array, targets: Int32Array, offset: number): void;
}

/** Random access to a token stream (in memory, or token shards on disk). */
export interface TokenSource {
  /** Number of tokens. */
  readonly length: number;
  /** Tokens `[start, end)`, `0 <= start <= end <= length`. */
  read(start: number, end: number): ArrayLike<number>;
}

/**
 * Windows of `seq + 1` tokens that overlap by one (window k = stream[k·seq … k·seq + seq]): every
 * token is an input exactly once per epoch and a target exactly once (but the first). The last
 * window is padded with `pad` inputs and ignored targets.
 */
export function packedWindows(stream: TokenSource, seq: number, pad: number): Sequences {
  const total = stream.length;
  return {
    count: Math.ceil(total / seq),
    seq,
    fill(i, inputs, targets, o) {
      const start = i * seq;
      const w = stream.read(start, Math.min(start + seq + 1, total));
      for (let t = 0; t < seq; t++) {
        inputs[o + t] = t < w.length ? w[t] : pad;
        targets[o + t] = t + 1 < w.length ? w[t + 1] : IGNORE_INDEX;
      }
    },
  };
}

/** Packs documents, each followed by `eos`, into one stream cut by {@link packedWindows}. */
export function packedSequences(
  docs: TokenizedDocs,
  seq: number,
  eos: number,
  pad: number,
): Sequences {
  const stream = new Uint32Array(docs.reduce((n, d) => n + d.length + 1, 0));
  let off = 0;
  for (const d of docs) {
    stream.set(d, off);
    stream[off + d.length] = eos;
    off += d.length + 1;
  }
  return packedWindows(
    { length: stream.length, read: (a, b) => stream.subarray(a, b) },
    seq,
    pad,
  );
}

/**
 * One document per sequence: its tokens plus `eos`, truncated to `seq + 1`, padded with ignored
 * targets. `doc(i)` returns document i (at least its first `seq + 1` tokens, or all of it).
 */
export function documentWindows(
  count: number,
  doc: (i: number) => ArrayLike<number>,
  seq: number,
  eos: number,
  pad: number,
): Sequences {
  return {
    count,
    seq,
    fill(i, inputs, targets, o) {
      const d = doc(i);
      const n = d.length + 1; // with eos
      const at = (p: number) => (p < d.length ? d[p] : eos);
      for (let t = 0; t < seq; t++) {
        inputs[o + t] = t < n ? at(t) : pad;
        targets[o + t] = t + 1 < n ? at(t + 1) : IGNORE_INDEX;
      }
    },
  };
}

/** {@link documentWindows} over in-memory documents; empty documents are skipped. */
export function documentSequences(
  docs: TokenizedDocs,
  seq: number,
  eos: number,
  pad: number,
): Sequences {
  const list = docs.filter((d) => d.length > 0);
  return documentWindows(list.length, (i) => list[i], seq, eos, pad);
}

/** A batch of `batch` sequences, row-major [batch, seq]. */
export interface Batch {
  /** Input ids. */
  inputs: Int32Array;
  /** Target ids, {@link IGNORE_INDEX} where ignored. */
  targets: Int32Array;
  /** Rows. */
  batch: number;
  /** Columns. */
  seq: number;
  /** Targets that count in the loss. */
  tokens: number;
}

/** Position of a {@link BatchStream}, for checkpoints. */
export interface BatchStreamState {
  /** Completed epochs. */
  epoch: number;
  /** Next position inside the epoch's permutation. */
  index: number;
}

/** Endless batches over shuffled sequences; epoch e uses a permutation seeded by (seed, e). */
export class BatchStream {
  #order: Uint32Array;
  #state: BatchStreamState = { epoch: 0, index: 0 };

  /** Creates the stream; throws when there are no sequences. */
  constructor(
    readonly sequences: Sequences,
    readonly batch: number,
    readonly seed: number,
    readonly shuffle = true,
  ) {
    if (sequences.count === 0) throw new Error("no training sequences: the data is empty");
    if (!(Number.isInteger(batch) && batch > 0)) {
      throw new Error(`batch size must be a positive integer, got ${batch}`);
    }
    this.#order = this.#permutation(0);
  }

  #permutation(epoch: number): Uint32Array {
    const n = this.sequences.count;
    const p = new Uint32Array(n).map((_, i) => i);
    if (!this.shuffle) return p;
    const rng = new Rng(this.seed * 1_000_003 + epoch);
    for (let i = n - 1; i > 0; i--) {
      const j = rng.nextInt(i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  }

  /** The next batch (crossing into the next epoch when needed). */
  next(): Batch {
    const { seq } = this.sequences;
    const inputs = new Int32Array(this.batch * seq);
    const targets = new Int32Array(this.batch * seq);
    for (let b = 0; b < this.batch; b++) {
      if (this.#state.index >= this.#order.length) {
        this.#state = { epoch: this.#state.epoch + 1, index: 0 };
        this.#order = this.#permutation(this.#state.epoch);
      }
      this.sequences.fill(this.#order[this.#state.index++], inputs, targets, b * seq);
    }
    let tokens = 0;
    for (const t of targets) if (t !== IGNORE_INDEX) tokens++;
    return { inputs, targets, batch: this.batch, seq, tokens };
  }

  /** The position, for checkpoints. */
  get state(): BatchStreamState {
    return { ...this.#state };
  }

  /** Restores a position saved with {@link BatchStream.state}. */
  set state(s: BatchStreamState) {
    this.#state = { ...s };
    this.#order = this.#permutation(s.epoch);
  }
}
