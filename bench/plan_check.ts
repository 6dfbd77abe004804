/**
 * The planner's predicted device peak beside the measured one: for each configuration, two
 * training steps of `train.ts`'s own loop in a fresh process (random token ids; memory does not
 * depend on the text), its allocated peak (`memoryStats().allocatedPeak`, the device's view) and
 * requested peak, against `planPeak`'s prediction, with the error.
 *
 * Usage: `deno run -A bench/plan_check.ts [--model tiny] [--batch 1] [--seq 256]
 *   [--configs "sltrain adamw8bit bf16 per-layer,full adamw bf16"] [--timeout 900]`
 * Each configuration is `method optimizer dtype [per-layer] [recompute]`; the default is the
 * six rows of the memory table (full-rank Adam f32 / bf16 / per-layer / recompute, SLTrain8bit).
 * @module
 */
import { parseArgs } from "node:util";
import { parseFlags } from "../cli/flags.ts";
import { tokenizerFlag } from "../cli/data_source.ts";
import type { Progress } from "../cli/progress.ts";
import { trainRun } from "../cli/trainer.ts";
import { buildRun } from "../train.ts";
import { applyVariant, planPeak, type PlanVariant } from "../cli/plan.ts";
import { init } from "../core/device.ts";
import { memoryStats } from "../core/memory.ts";
import { Rng } from "../core/rng.ts";
import { packedSequences } from "../data/batches.ts";
import { PRESETS } from "../models/config.ts";
import { runChild } from "./child.ts";
// train.ts's default: LLaMA's tokenizer for the paper presets, bytes for tiny, small and files.
const tokenizerOf = (model: string) =>
  model in PRESETS && !["tiny", "small"].includes(model) ? "llama" : "bytes";

const { values: f } = parseArgs({
  options: {
    model: { type: "string", default: "tiny" },
    batch: { type: "string", default: "1" },
    seq: { type: "string", default: "256" },
    configs: { type: "string" },
    timeout: { type: "string", default: "900" },
    child: { type: "string" },
  },
});

function argv(model: string, c: PlanVariant, seq: number): string[] {
  return [
    ...["--model", model, "--method", c.method, "--optimizer", c.optimizer, "--dtype", c.dtype],
    ...["--batch", String(c.batch), "--seq", String(seq), "--steps", "2"],
    ...["--eval-every", "0", "--eval-tokens", String(seq)],
    ...(c.perLayer ? ["--per-layer"] : []),
    ...(c.recompute ? ["--recompute"] : []),
    ...["--tokenizer", tokenizerOf(model)],
  ];
}

async function child(args: string[]): Promise<void> {
  await init();
  const flags = parseFlags(args);
  const method = String(flags.method) as Parameters<typeof buildRun>[1];
  const tok = await tokenizerFlag(String(flags.tokenizer ?? "llama"));
  const run = await buildRun(flags, method, tok, null);
  const rng = new Rng(7);
  const doc = () =>
    Uint32Array.from({ length: 4 * run.batch * run.seq }, () => rng.nextInt(run.model.vocabSize));
  const data = {
    train: packedSequences([doc(), doc()], run.seq, 0, 0),
    val: packedSequences([doc()], run.seq, 0, 0),
  };
  const r = await trainRun(run, data, {
    out: "",
    resume: false,
    log: () => {},
    progress: { update() {}, log() {}, done() {} } as unknown as Progress,
    shouldStop: () => false,
  });
  console.log(JSON.stringify({
    peak: r.peakBytes,
    allocatedPeak: r.allocatedPeak,
    atPeak: memoryStats().allocatedAtPeak,
    steady: r.measuredBytes,
  }));
}

function measure(args: string[]): Promise<Record<string, number> | string> {
  return runChild(import.meta.filename!, JSON.stringify(args), Number(f.timeout));
}

const DEFAULT_CONFIGS = [
  "full adamw f32",
  "full adamw bf16",
  "full adamw bf16 per-layer",
  "full adamw bf16 per-layer recompute",
  "sltrain adamw8bit bf16 per-layer",
  "sltrain adamw8bit bf16 per-layer recompute",
].join(",");

function parseConfig(s: string, batch: number): PlanVariant {
  const [method, optimizer, dtype, ...rest] = s.trim().split(/\s+/);
  return {
    method,
    optimizer,
    dtype,
    perLayer: rest.includes("per-layer"),
    recompute: rest.includes("recompute"),
    batch,
  } as PlanVariant;
}

const gb = (b: number) => (b / 1e9).toFixed(3);

async function main(): Promise<void> {
  if (f.child) return await child(JSON.parse(f.child));
  const model = f.model!, batch = Number(f.batch), seq = Number(f.seq);
  const flags = parseFlags(["--model", model]);
  const tok = await tokenizerFlag(tokenizerOf(model));
  const base = { ...await buildRun(flags, "sltrain", tok, null), seq };
  const configs = (f.configs ?? DEFAULT_CONFIGS).split(",").map((c) => parseConfig(c, batch));
  console.log(
    `# ${model}, batch ${batch} × ${seq}; two steps per configuration, each its own process`,
  );
  console.log("| configuration | predicted GB | allocated peak GB | error | requested peak GB |");
  console.log("|---|---|---|---|---|");
  for (const c of configs) {
    const predicted = planPeak(applyVariant(base, c));
    const m = await measure(argv(model, c, seq));
    const label = `${c.method} ${c.optimizer} ${c.dtype}${c.perLayer ? " per-layer" : ""}${
      c.recompute ? " recompute" : ""
    }`;
    if (typeof m === "string") {
      console.log(`| ${label} | ${gb(predicted.total)} | ${m} | – | – |`);
      continue;
    }
    const err = (predicted.total / m.allocatedPeak - 1) * 100;
    console.log(
      `| ${label} | ${gb(predicted.total)} | ${gb(m.allocatedPeak)} | ${err >= 0 ? "+" : ""}${
        err.toFixed(1)
      }% | ${gb(m.peak)} |`,
    );
    console.error(JSON.stringify({ label, predicted, measured: m }));
  }
}

await main();
