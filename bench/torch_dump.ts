/**
 * Writes what the PyTorch reference (`bench/torch_ref/`) needs to replay one of our training runs
 * step for step: the initial weights exactly as the trainer builds them (`initLlama` with the run's
 * seed, saved with `saveCheckpoint`), the exact micro-batches the trainer's `BatchStream` feeds,
 * the validation sequences `evaluate` reads, and the resolved run settings.
 *
 * Usage: `deno run -A bench/torch_dump.ts DIR [train.ts flags, e.g. --method sltrain --steps 150]`
 *
 * Files in DIR:
 * - `init.safetensors`: an sltrain checkpoint at step 0 (`params.*`, `buffers.*`, no optimizer state);
 * - `train.bin`: int32 little-endian [steps · gradAccum, 2, batch, seq] (inputs, then targets);
 * - `val.bin`: int32 [sequences, 2, seq], the validation prefix `evaluate` covers;
 * - `run.json`: `{ run, steps, microBatches, valSequences, lr }`, `lr[k]` being our learning rate
 *   of update k (for cross-checking the reference's schedule).
 * @module
 */
import { init } from "../core/device.ts";
import { BatchStream, IGNORE_INDEX } from "../data/batches.ts";
import { initLlama } from "../models/llama.ts";
import { saveCheckpoint } from "../cli/checkpoint.ts";
import { methodName, parseFlags, type RawFlags } from "../cli/flags.ts";
import { linearMethod, lrSchedule, type RunConfig } from "../cli/run_config.ts";
import { tokenizerFlag } from "../cli/data_source.ts";
import type { RunData } from "../cli/trainer.ts";
import { buildRun, loadData, PAPER_PRESETS } from "../train.ts";
import * as tree from "../core/tree.ts";

/** A run as train.ts would resolve it, with its data. */
export interface ResolvedRun {
  /** Settings with every default filled in. */
  run: RunConfig;
  /** Training and validation sequences. */
  data: RunData;
}

/**
 * Resolves train.ts flags (Brown and bytes unless `--data`/`--tokenizer` say otherwise) into the
 * run and data the CLI would train on. Shard folders are not supported here.
 */
export async function resolveRun(flags: RawFlags): Promise<ResolvedRun> {
  const method = methodName(String(flags.method ?? "sltrain"));
  const modelName = String(flags.model ?? "tiny");
  const tok = await tokenizerFlag(
    typeof flags.tokenizer === "string"
      ? flags.tokenizer
      : PAPER_PRESETS.has(modelName)
      ? "llama"
      : "bytes",
  );
  const run = await buildRun(flags, method, tok, null);
  const { data } = await loadData(flags, tok, run.seq);
  return { run, data };
}

function int32Bytes(parts: Int32Array[]): Uint8Array {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Int32Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return new Uint8Array(out.buffer);
}

/** The validation sequences `evaluate` reads for `run` (its batching and token cutoff). */
function validationPrefix(run: RunConfig, data: RunData): Int32Array[] {
  const { val } = data;
  const parts: Int32Array[] = [];
  let seen = 0;
  for (let start = 0; start < val.count && seen < run.evalTokens; start += run.batch) {
    const rows = Math.min(run.batch, val.count - start);
    for (let r = 0; r < rows; r++) {
      const inp = new Int32Array(val.seq);
      const tgt = new Int32Array(val.seq);
      val.fill(start + r, inp, tgt, 0);
      for (const t of tgt) if (t !== IGNORE_INDEX) seen++;
      parts.push(inp, tgt);
    }
  }
  return parts;
}

/** Writes the replay files of `steps` optimizer steps of `run` into `dir` (created if needed). */
export async function writeDump(
  dir: string,
  { run, data }: ResolvedRun,
  steps = run.steps,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  // The trainer's own construction: same seed, same stream, same order.
  const { params, buffers } = initLlama(run.model, linearMethod(run), run.seed);
  try {
    await saveCheckpoint(`${dir}/init.safetensors`, {
      params,
      buffers,
      optState: {},
      step: 0,
      meta: { run },
    });
  } finally {
    tree.dispose([params, buffers]);
  }
  const stream = new BatchStream(data.train, run.batch, run.seed);
  const micro = steps * run.gradAccum;
  const batches: Int32Array[] = [];
  for (let k = 0; k < micro; k++) {
    const b = stream.next();
    batches.push(b.inputs, b.targets);
  }
  await Deno.writeFile(`${dir}/train.bin`, int32Bytes(batches));
  const val = validationPrefix(run, data);
  await Deno.writeFile(`${dir}/val.bin`, int32Bytes(val));
  const lr = lrSchedule(run);
  await Deno.writeTextFile(
    `${dir}/run.json`,
    JSON.stringify(
      {
        run,
        steps,
        microBatches: micro,
        valSequences: val.length / 2,
        lr: Array.from({ length: steps }, (_, k) => lr(k)),
      },
      null,
      1,
    ),
  );
}

if (import.meta.main) {
  const [dir, ...rest] = Deno.args;
  if (!dir || dir.startsWith("--")) {
    console.error("usage: deno run -A bench/torch_dump.ts DIR [train.ts flags]");
    Deno.exit(2);
  }
  await init();
  const resolved = await resolveRun(parseFlags(rest));
  await writeDump(dir, resolved);
  console.log(
    `wrote ${dir}: ${resolved.run.method} on ${resolved.run.modelName}, ${resolved.run.steps} steps`,
  );
}
