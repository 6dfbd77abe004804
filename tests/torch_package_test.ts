/**
 * The PyTorch package (`torch/`) against this engine: the same checksums and batch order, and a
 * toy run continued across engines both ways — our checkpoint at step 2 continued in PyTorch
 * gives our losses of steps 3-4, and PyTorch's checkpoint resumes here with PyTorch's losses of
 * steps 5-6. Needs Debian's python3-torch (`.ci/run` installs it); the package's own tests run
 * in `.ci/run` with unittest.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { checksumOf } from "../core/checksum.ts";
import { Rng } from "../core/rng.ts";
import { BatchStream, type Sequences } from "../data/batches.ts";
import {
  CHUNK_BYTES,
  CHUNK_HASH,
  openShards,
  SHARD_VERSION,
  shardSequences,
  SplitWriter,
} from "../data/shards.ts";
import { dataSource } from "../cli/data_source.ts";
import { type RunData, trainRun } from "../cli/trainer.ts";
import { quietIO, toyConfig, toyRun } from "./fixtures.ts";
import { FC, setup } from "./util.ts";

await setup();

const PYTHON = Deno.env.get("SLTRAIN_PYTHON") ?? "/usr/bin/python3";
const PACKAGE = new URL("../torch", import.meta.url).pathname;

async function python(code: string, ...args: string[]): Promise<string> {
  const r = await new Deno.Command(PYTHON, {
    args: ["-c", code, ...args],
    env: { PYTHONPATH: PACKAGE },
    stdout: "piped",
    stderr: "piped",
  }).output().catch((e) => {
    throw new Error(`${PYTHON} is not runnable (${e}): apt-get install -y python3-torch`);
  });
  const err = new TextDecoder().decode(r.stderr);
  assert.equal(r.code, 0, `python failed (install python3-torch if it is missing):\n${err}`);
  return new TextDecoder().decode(r.stdout);
}

Deno.test("the package's checksum and batch order are ours", async () => {
  const samples = fc.sample(fc.uint8Array({ maxLength: 70 }), { numRuns: FC.numRuns ?? 100 });
  // Batch order: epoch 0 of a BatchStream with seed s is the permutation seeded s · 1000003.
  const perms: [number, number][] = [[1, 0], [7, 3], [100, 42]];
  const out = JSON.parse(
    await python(
      `import json, sys
from sltrain_torch.checksum import checksum
from sltrain_torch.rng import permutation
data, perms = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps([[checksum(bytes.fromhex(h)) for h in data],
                  [permutation(n, s * 1000003) for n, s in perms]]))`,
      JSON.stringify(
        samples.map((b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("")),
      ),
      JSON.stringify(perms),
    ),
  );
  assert.deepEqual(out[0], samples.map((b) => checksumOf(b)));
  for (const [k, [n, seed]] of perms.entries()) {
    const seqs: Sequences = { count: n, seq: 1, fill: (i, inp, _t, o) => void (inp[o] = i) };
    assert.deepEqual(Array.from(new BatchStream(seqs, n, seed).next().inputs), out[1][k]);
  }
});

async function shardData(dir: string, vocab: number): Promise<RunData> {
  const rng = new Rng(9);
  const splits: Record<string, unknown> = {};
  for (const [split, docs] of [["train", 12], ["val", 3]] as const) {
    const w = new SplitWriter(dir, split, vocab, 97);
    for (let d = 0; d < docs; d++) {
      await w.push(Array.from({ length: 10 + rng.nextInt(40) }, () => 1 + rng.nextInt(vocab - 1)));
      await w.endDoc(0);
    }
    splits[split] = await w.finish();
  }
  const tokenizer = { name: "toy-v1", vocabSize: vocab, eos: 0, pad: 0 };
  await Deno.writeTextFile(
    `${dir}/manifest.json`,
    JSON.stringify({
      format: "sltrain-shards",
      version: SHARD_VERSION,
      dtype: "uint16",
      shardTokens: 97,
      tokenizer: { ...tokenizer, files: [] },
      splits,
      source: { data: "toy", valData: null, valFraction: null },
      checksum: { algorithm: CHUNK_HASH, chunkBytes: CHUNK_BYTES },
    }),
  );
  const set = await openShards(dir);
  const train = shardSequences(set.train, 8, "packed", tokenizer);
  return {
    train,
    val: shardSequences(set.val, 8, "packed", tokenizer),
    source: dataSource({ ...tokenizer } as never, "packed", train),
  };
}

async function trainLosses(dir: string): Promise<Map<number, number>> {
  const recs = (await Deno.readTextFile(`${dir}/log.jsonl`)).trim().split("\n").map((l) =>
    JSON.parse(l)
  );
  return new Map(recs.filter((r) => r.kind === "train").map((r) => [r.step, r.loss]));
}

function assertClose(a: Map<number, number>, b: Map<number, number>, steps: number[]): void {
  for (const s of steps) {
    const rel = Math.abs(a.get(s)! - b.get(s)!) / Math.abs(b.get(s)!);
    assert.ok(rel <= 1e-4, `step ${s}: ${a.get(s)} vs ${b.get(s)} (relative ${rel})`);
  }
}

Deno.test("a run continues in PyTorch and comes back with the same losses", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/shards`);
    const vocab = 64;
    const data = await shardData(`${dir}/shards`, vocab);
    // 8-bit AdamW: the embedding and head (64 × 64) keep block-quantized moments, the rest f32.
    for (const optimizer of ["adamw8bit"] as const) {
      const run = toyRun({
        model: { ...toyConfig(vocab, 64), hidden: 64, heads: 4 },
        optimizer,
        rank: 8,
        batch: 4,
        steps: 4,
        evalEvery: 2,
        logEvery: 1,
        weightDecay: 0.1,
      });
      const ours = `${dir}/ours-${optimizer}`;
      await Deno.mkdir(ours);
      await trainRun(run, data, { ...quietIO(ours), keep: 2 });
      const torch = `${dir}/torch-${optimizer}`;
      const cont = (from: string, out: string, steps: number) =>
        python(
          "import sys; from sltrain_torch.train import main; sys.exit(main(sys.argv[1:]))",
          "--run",
          from,
          "--data",
          `${dir}/shards`,
          "--out",
          out,
          "--steps",
          String(steps),
          "--device",
          "cpu",
          "--threads",
          "1",
        );
      await cont(`${ours}/checkpoint.step-2.safetensors`, torch, 4);
      assertClose(await trainLosses(torch), await trainLosses(ours), [3, 4]);
      // Back: PyTorch's step-4 checkpoint resumes here; PyTorch continues its own copy.
      const back = `${dir}/back-${optimizer}`;
      await Deno.mkdir(back);
      for (const f of ["checkpoint.safetensors", "log.jsonl"]) {
        await Deno.copyFile(`${torch}/${f}`, `${back}/${f}`);
      }
      await trainRun({ ...run, steps: 6 }, data, quietIO(back, { resume: true }));
      await cont(torch, torch, 6);
      assertClose(await trainLosses(back), await trainLosses(torch), [5, 6]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
