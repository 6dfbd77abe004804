/**
 * The memory table of the SLTrain paper's Fig. 3, measured here: one training step (batch 1,
 * seq 256, the trainer's own step) per configuration, each in its own process (so one row's pool
 * and caches cannot lower or raise another's), with the analytic steady bytes (`estimateMemory`,
 * weights + buffers + optimizer states), the measured steady bytes after the step (params, buffers
 * and optimizer state as the trainer holds them), the measured peak of the step as tensors request
 * it (gradients and activations included), the peak the device allocates (size classes, pool,
 * textures, staging, uniforms: `memoryStats().allocatedPeak`), the process's peak RSS, and the
 * paper's figure beside each. Below the table, for each measured row: what the device held at its
 * allocated peak by kind, and the rest of the RSS (JS heap, the rest: data, tokenizer, shader
 * compiler, runtime).
 *
 * Rows per model: Adam with f32 weights; Adam with bf16 weights and f32 states (the paper's
 * baseline); the same two with per-layer updates (what per-layer frees), also with `--recompute`
 * (what is left is activations); Adam8bit, GaLore8bit and
 * SLTrain8bit with per-layer updates and bf16 weights (the paper's three); SLTrain8bit with
 * `--recompute` too; GoLore8bit, low-rank 8-bit, LoRO8bit (whole-tree: it steps B and A
 * together), SPAM and Stable-SPAM (f32 moments) with bf16 weights. `--estimate-only` models (default 7b) get the estimate of every row, and
 * `--measure-7b` measures the SLTrain8bit row there; `--estimate-rows` lists rows that only get
 * the estimate (e.g. one that would not fit this machine's memory).
 *
 * Usage: `deno run -A bench/memory.ts [--models 350m,1b] [--rows adam,adam-bf16,...]
 *   [--estimate-only 7b] [--measure-7b] [--estimate-rows adam] [--seq 256] [--timeout 1800]`
 * @module
 */
import { parseArgs } from "node:util";
import type { MethodName, OptimizerName, RunConfig } from "../cli/run_config.ts";
import { linearMethod, optimizerSpec } from "../cli/run_config.ts";
import type { Progress } from "../cli/progress.ts";
import { trainRun } from "../cli/trainer.ts";
import { parseFlags } from "../cli/flags.ts";
import { tokenizerFlag } from "../cli/data_source.ts";
import { buildRun } from "../train.ts";
import { init } from "../core/device.ts";
import { memoryStats } from "../core/memory.ts";
import { Rng } from "../core/rng.ts";
import { packedSequences } from "../data/batches.ts";
import { estimateMemory } from "../models/estimate.ts";
import { planPeak } from "../cli/plan.ts";
import { runChild } from "./child.ts";

/** One configuration of the table. */
interface Row {
  readonly key: string;
  readonly label: string;
  readonly method: MethodName;
  readonly optimizer: OptimizerName;
  readonly dtype: "f32" | "bf16";
  readonly perLayer: boolean;
  readonly recompute?: boolean;
  /** The paper's Fig. 3 column (GB) this row stands beside. */
  readonly paper?: "adam" | "adam8bit" | "galore8bit" | "sltrain8bit";
}

function row(
  key: string,
  label: string,
  method: MethodName,
  optimizer: OptimizerName,
  dtype: "f32" | "bf16",
  perLayer: boolean,
  more: Partial<Row> = {},
): Row {
  return { key, label, method, optimizer, dtype, perLayer, ...more };
}

const ROWS: readonly Row[] = [
  row("adam", "Adam (f32 weights)", "full", "adamw", "f32", false),
  row("adam-pl", "Adam (f32) per-layer", "full", "adamw", "f32", true),
  row("adam-pl-rc", "Adam (f32) per-layer, --recompute", "full", "adamw", "f32", true, {
    recompute: true,
  }),
  row("adam-bf16", "Adam (bf16 weights, f32 states)", "full", "adamw", "bf16", false, {
    paper: "adam",
  }),
  row("adam-bf16-pl", "Adam (bf16) per-layer", "full", "adamw", "bf16", true),
  row("adam-bf16-pl-rc", "Adam (bf16) per-layer, --recompute", "full", "adamw", "bf16", true, {
    recompute: true,
  }),
  row("adam8bit", "Adam8bit per-layer, bf16", "full", "adamw8bit", "bf16", true, {
    paper: "adam8bit",
  }),
  row("galore8bit", "GaLore8bit per-layer, bf16", "galore", "adamw8bit", "bf16", true, {
    paper: "galore8bit",
  }),
  row("sltrain8bit", "SLTrain8bit per-layer, bf16", "sltrain", "adamw8bit", "bf16", true, {
    paper: "sltrain8bit",
  }),
  row(
    "sltrain8bit-rc",
    "SLTrain8bit per-layer, bf16, --recompute",
    "sltrain",
    "adamw8bit",
    "bf16",
    true,
    {
      recompute: true,
    },
  ),
  // The rest of Glentis et al.'s benchmark, in the paper's setting where the method allows it.
  row("golore8bit", "GoLore8bit per-layer, bf16", "golore", "adamw8bit", "bf16", true),
  row("lowrank8bit", "Low-rank 8bit per-layer, bf16", "lowrank", "adamw8bit", "bf16", true),
  // LoRO steps B and A together, so no per-layer updates.
  row("loro8bit", "LoRO8bit, bf16", "loro", "adamw8bit", "bf16", false),
  // SPAM's spike test reads v entrywise: f32 moments.
  row("spam", "SPAM per-layer, bf16", "spam", "adamw", "bf16", true),
  row("stable-spam", "Stable-SPAM per-layer, bf16", "stable-spam", "adamw", "bf16", true),
];

// sltrain-paper-facts.md §1.2, Fig. 3: actual memory, batch 1, bf16, one A100 (GB).
const PAPER: Record<string, Record<NonNullable<Row["paper"]>, number>> = {
  "350m": { adam: 4.5, adam8bit: 3.5, galore8bit: 3.1, sltrain8bit: 2.2 },
  "1b": { adam: 16.3, adam8bit: 11.8, galore8bit: 10.3, sltrain8bit: 6.8 },
  "7b": { adam: 67.4, adam8bit: 29.4, galore8bit: 22, sltrain8bit: 18.3 },
};

const { values: f } = parseArgs({
  options: {
    models: { type: "string", default: "350m,1b" },
    rows: { type: "string", default: ROWS.map((r) => r.key).join(",") },
    "estimate-only": { type: "string", default: "7b" },
    "measure-7b": { type: "boolean", default: false },
    "estimate-rows": { type: "string", default: "" },
    seq: { type: "string", default: "256" },
    timeout: { type: "string", default: "1800" },
    child: { type: "string" },
  },
});

/**
 * The settings `train.ts` resolves for `row` at `model` (LLaMA's tokenizer, the CLI's defaults:
 * rank hidden/4, δ = 0.03), for one step of batch 1 × `seq`.
 */
async function runConfig(model: string, row: Row, seq: number): Promise<RunConfig> {
  const flags = parseFlags([
    ...["--model", model, "--method", row.method, "--optimizer", row.optimizer],
    ...["--dtype", row.dtype, "--batch", "1", "--seq", String(seq), "--steps", "1"],
    ...["--eval-every", "0", "--eval-tokens", String(seq)],
    ...(row.perLayer ? ["--per-layer"] : []),
    ...(row.recompute ? ["--recompute"] : []),
  ]);
  return await buildRun(flags, row.method, await llama, null);
}

// Every preset here is a paper preset: LLaMA's 32000-piece tokenizer, loaded once.
const llama = tokenizerFlag("llama");

function estimate(run: RunConfig): number {
  return estimateMemory(
    run.model,
    { method: linearMethod(run), optimizer: optimizerSpec(run), weights: run.dtype },
    "ours",
  ).total;
}

/** Child: one step of one row; prints one JSON line. */
async function child(spec: { model: string; row: string; seq: number }): Promise<void> {
  await init();
  const row = ROWS.find((r) => r.key === spec.row)!;
  const run = await runConfig(spec.model, row, spec.seq);
  // Memory does not depend on the text: random ids of the model's vocabulary.
  const rng = new Rng(7);
  const doc = () =>
    Uint32Array.from({ length: 4 * spec.seq }, () => rng.nextInt(run.model.vocabSize));
  const data = {
    train: packedSequences([doc(), doc()], spec.seq, 0, 0),
    val: packedSequences([doc()], spec.seq, 0, 0),
  };
  const t0 = performance.now();
  const r = await trainRun(run, data, {
    out: "",
    resume: false,
    log: () => {},
    progress: { update() {}, log() {}, done() {} } as unknown as Progress,
    shouldStop: () => false,
  });
  const m = Deno.memoryUsage();
  console.log(JSON.stringify({
    estimate: r.estimatedBytes,
    steady: r.measuredBytes,
    peak: r.peakBytes,
    allocatedPeak: r.allocatedPeak,
    atPeak: memoryStats().allocatedAtPeak,
    rssPeak: peakRss(),
    heap: m.heapTotal + m.external,
    seconds: (performance.now() - t0) / 1000,
  }));
}

/** The process's peak resident set (VmHWM), in bytes. */
function peakRss(): number {
  const line = Deno.readTextFileSync("/proc/self/status").split("\n").find((l) =>
    l.startsWith("VmHWM:")
  );
  return Number(line?.match(/(\d+)/)?.[1] ?? NaN) * 1024;
}

interface Measured {
  estimate: number;
  steady: number;
  peak: number;
  allocatedPeak: number;
  atPeak: Record<string, number>;
  rssPeak: number;
  heap: number;
  seconds: number;
}

function measure(model: string, row: Row, seq: number): Promise<Measured | string> {
  const payload = JSON.stringify({ model, row: row.key, seq });
  return runChild(import.meta.filename!, payload, Number(f.timeout));
}

const gb = (b: number) => (b / 1e9).toFixed(3);

async function main(): Promise<void> {
  if (f.child) return await child(JSON.parse(f.child));
  const info = await init();
  const seq = Number(f.seq);
  const rows = f.rows!.split(",").map((k) => {
    const r = ROWS.find((x) => x.key === k.trim());
    if (!r) {
      throw new Error(`--rows: unknown row ${k} (expected ${ROWS.map((x) => x.key).join(", ")})`);
    }
    return r;
  });
  console.log(
    `# one training step, batch 1 × ${seq} tokens; ${info.summary}; binding limit ` +
      `${info.limits.maxStorageBufferBindingSize} B, buffer limit ${info.limits.maxBufferSize} B\n`,
  );
  console.log(
    "| model | configuration | est. steady GB | measured steady GB | requested peak GB | " +
      "allocated peak GB | planned peak GB (error) | peak RSS GB | alloc / Adam bf16 | " +
      "RSS / Adam bf16 | paper GB | paper / paper Adam | step s |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  const notes: string[] = [];
  const models = f.models!.split(",").filter(Boolean);
  const estimateOnly = f["estimate-only"]!.split(",").filter(Boolean);
  for (const model of [...models, ...estimateOnly]) {
    const only = !models.includes(model);
    let adam: Measured | null = null;
    for (const row of rows) {
      const run = await runConfig(model, row, seq);
      const est = estimate(run);
      const planned = planPeak(run).total;
      const paper = row.paper ? PAPER[model]?.[row.paper] : undefined;
      const paperCols = paper === undefined
        ? "– | –"
        : `${paper} | ${(paper / PAPER[model].adam).toFixed(2)}`;
      const measureIt = only
        ? f["measure-7b"] && row.key === "sltrain8bit"
        : !f["estimate-rows"]!.split(",").includes(row.key);
      const m = measureIt ? await measure(model, row, seq) : "estimate only";
      if (typeof m === "string") {
        console.log(
          `| ${model} | ${row.label} | ${gb(est)} | ${m} | – | – | ${
            gb(planned)
          } | – | – | – | ${paperCols} | – |`,
        );
        continue;
      }
      if (row.key === "adam-bf16") adam = m;
      if (m.estimate !== est) throw new Error(`${model} ${row.key}: estimates differ`);
      const ratio = (v: number, base?: number) => base ? (v / base).toFixed(2) : "–";
      console.log(
        `| ${model} | ${row.label} | ${gb(est)} | ${gb(m.steady)} | ${gb(m.peak)} | ${
          gb(m.allocatedPeak)
        } | ${gb(planned)} (${((planned / m.allocatedPeak - 1) * 100).toFixed(1)}%) | ${
          gb(m.rssPeak)
        } | ${ratio(m.allocatedPeak, adam?.allocatedPeak)} | ${
          ratio(m.rssPeak, adam?.rssPeak)
        } | ${paperCols} | ${m.seconds.toFixed(0)} |`,
      );
      const kinds = Object.entries(m.atPeak).filter(([, v]) => v > 0)
        .map(([k, v]) => `${k} ${gb(v)}`).join(", ");
      notes.push(
        `- ${model} ${row.label}: at the allocated peak ${kinds}; peak RSS − allocated peak = ` +
          `${gb(m.rssPeak - m.allocatedPeak)} GB, of which JS heap + external ${gb(m.heap)} GB`,
      );
    }
  }
  if (notes.length > 0) console.log(`\nWhere the bytes go (GB):\n${notes.join("\n")}`);
}

await main();
