/**
 * What verifying shard checksums costs: reads a shard folder's training stream with and without
 * verification, interleaved (verified, unverified, verified, ...), and prints tokens/s of each and
 * their ratio (medians). Two access patterns: the batches training draws (random packed windows of
 * `--seq` + 1 ids, `--batch` per step), and one sequential pass over `--sequential-tokens` ids.
 * Each measurement opens the folder afresh, so every chunk it touches is verified (once).
 *
 *   deno run -A bench/shard_verify.ts --data shards/ [--seq 128] [--batch 8] [--steps 2000] [--reps 5]
 * @module
 */
import { parseArgs } from "node:util";
import { openShards, type ShardSplit } from "../data/shards.ts";
import { Rng } from "../core/rng.ts";

const { values: f } = parseArgs({
  options: {
    data: { type: "string" },
    seq: { type: "string", default: "128" },
    batch: { type: "string", default: "8" },
    steps: { type: "string", default: "2000" },
    reps: { type: "string", default: "5" },
    "sequential-tokens": { type: "string", default: "2e8" },
  },
});
if (!f.data) throw new Error("--data SHARD_FOLDER is required");
const seq = Number(f.seq), batch = Number(f.batch), steps = Number(f.steps), reps = Number(f.reps);
// Opened afresh for each measurement: a chunk is verified the first time a process reads it.
const open = async (verify: boolean) => (await openShards(f.data!, { verify })).train;
const length = (await open(false)).length;

/** Tokens per second of `steps` training batches of random packed windows. */
function randomWindows(split: ShardSplit, seed: number): number {
  const rng = new Rng(seed);
  const windows = Math.floor((split.length - 1) / seq);
  const t0 = performance.now();
  let n = 0;
  for (let s = 0; s < steps * batch; s++) {
    const w = rng.nextInt(windows);
    n += split.read(w * seq, Math.min(w * seq + seq + 1, split.length)).length;
  }
  return n / ((performance.now() - t0) / 1000);
}

/** Tokens per second of one sequential pass (reads of 1 Mi ids). */
function sequential(split: ShardSplit): number {
  const end = Math.min(split.length, Number(f["sequential-tokens"]));
  const t0 = performance.now();
  for (let p = 0; p < end; p += 1 << 20) split.read(p, Math.min(end, p + (1 << 20)));
  return end / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (v: number) => `${(v / 1e6).toFixed(2)}M tok/s`;
console.log(`${f.data}: ${length} training ids; load ${Deno.loadavg().join(" ")}`);
for (
  const [name, measure] of [["random windows", randomWindows], ["sequential", sequential]] as const
) {
  const on: number[] = [], off: number[] = [];
  for (let r = 0; r < reps; r++) {
    on.push(measure(await open(true), r));
    off.push(measure(await open(false), r));
  }
  const [a, b] = [median(on), median(off)];
  console.log(
    `${name}: verified ${fmt(a)}, unverified ${fmt(b)}, verified/unverified ${(a / b).toFixed(2)}`,
  );
}
