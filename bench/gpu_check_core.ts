/**
 * The timing half of `bench/gpu_check.ts`, on the library alone so that it runs in Deno and in a
 * browser page alike: the adapter and its limits, the matmul table (GFLOP/s and the share of the
 * card's fp32 peak when known), and training steps (full-rank and SLTrain) at the given model
 * sizes. Everything it prints goes through `print`, as markdown.
 * @module
 */
import {
  deviceInfo,
  matmul,
  memoryStats,
  models,
  optim,
  randomUniform,
  resetPeakBytes,
  sync,
  tensor,
  tree,
  valueAndGrad,
} from "../mod.ts";
import type { PresetName } from "../models/config.ts";
import {
  buildOptimizer,
  linearMethod,
  type MethodName,
  type RunConfig,
} from "../cli/run_config.ts";

const { initLlama, loss, PRESETS, withVocab } = models;
const { applyUpdates } = optim;

/** Options of {@link runGpuCheck}. */
export interface GpuCheckOptions {
  /** Square matmul sizes to time (each in the three layouts A·B, A·Bᵀ, Aᵀ·B). */
  matmulSizes: number[];
  /** Presets to time a training step of. */
  models: PresetName[];
  /** Methods to time at each model. */
  methods: MethodName[];
  /** Timed repetitions (after two warm-up runs). */
  reps: number;
  /** The card's fp32 peak in TFLOP/s, when the caller knows it better than {@link knownPeak}. */
  peakTflops?: number;
}

/** Dense fp32 (non-tensor-core) peaks of common cards, TFLOP/s, by a pattern of their name. */
const PEAKS: [RegExp, number, string][] = [
  [/H200/i, 66.9, "H200 SXM"],
  [/H100.*PCIe/i, 51.2, "H100 PCIe"],
  [/H100/i, 66.9, "H100 SXM (PCIe: 51.2)"],
  [/A100/i, 19.5, "A100"],
  [/L40S/i, 91.6, "L40S"],
  [/L4\b/i, 30.3, "L4"],
  [/A10\b/i, 31.2, "A10"],
  [/RTX 4090/i, 82.6, "RTX 4090"],
  [/RTX 3090/i, 35.6, "RTX 3090"],
  [/T4\b/i, 8.1, "T4"],
  [/V100/i, 15.7, "V100"],
];

/** The fp32 peak (TFLOP/s) of the adapter named `description`, when it is a card we know. */
export function knownPeak(description: string): { tflops: number; card: string } | null {
  const hit = PEAKS.find(([re]) => re.test(description));
  return hit ? { tflops: hit[1], card: hit[2] } : null;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

/** Median ms of `fn` (which dispatches work) per call, synced, after a warm-up. */
async function timeIt(fn: () => void, reps: number): Promise<number> {
  fn();
  await sync();
  const t0 = performance.now();
  fn();
  await sync();
  // Enough calls per rep to be well above the ~ms cost of one sync.
  const inner = Math.max(1, Math.min(50, Math.round(50 / Math.max(0.05, performance.now() - t0))));
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    for (let i = 0; i < inner; i++) fn();
    await sync();
    times.push((performance.now() - t) / inner);
  }
  return median(times);
}

/** Prints the adapter, the matmul table and the step table; returns the rows as data. */
export async function runGpuCheck(
  opts: GpuCheckOptions,
  print: (line: string) => void,
): Promise<{ matmul: Record<string, number>; steps: Record<string, number> }> {
  const info = deviceInfo();
  const peak = opts.peakTflops ? { tflops: opts.peakTflops, card: "given" } : knownPeak(
    info.description,
  );
  print(`## Adapter\n\n${info.summary}\n`);
  print(
    `features: ${
      [
        info.f16 && "shader-f16",
        info.subgroups && `subgroups (${info.subgroupSize ?? "varied"})`,
        info.timestamps && "timestamp-query",
      ].filter(Boolean).join(", ") || "none"
    }; fp32 peak: ${peak ? `${peak.tflops} TFLOP/s (${peak.card})` : "unknown"}\n`,
  );
  print("| limit | value |\n|---|---|");
  for (const [k, v] of Object.entries(limitsOf(info.limits))) print(`| ${k} | ${v} |`);

  print(`\n## Matmul (fp32, median of ${opts.reps})\n`);
  print("| size | layout | ms | GFLOP/s | share of fp32 peak |\n|---|---|---|---|---|");
  const mm: Record<string, number> = {};
  for (const n of opts.matmulSizes) {
    const a = randomUniform([n, n], -1, 1, { seed: 1 });
    const b = randomUniform([n, n], -1, 1, { seed: 2 });
    for (
      const [layout, o] of [["A·B", {}], ["A·Bᵀ", { transB: true }], ["Aᵀ·B", {
        transA: true,
      }]] as const
    ) {
      const ms = await timeIt(() => matmul(a, b, o).dispose(), opts.reps);
      const gflops = (2 * n ** 3) / (ms * 1e6);
      mm[`${n} ${layout}`] = gflops;
      const share = peak ? `${((100 * gflops) / (peak.tflops * 1000)).toFixed(1)}%` : "–";
      print(`| ${n}³ | ${layout} | ${ms.toFixed(2)} | ${gflops.toFixed(1)} | ${share} |`);
    }
    tree.dispose([a, b]);
  }

  print(`\n## Training step (AdamW, median of ${opts.reps} after 2 warm-up steps)\n`);
  print(
    "| model | method | batch × seq | ms/step | tokens/s | peak device MB |\n|---|---|---|---|---|---|",
  );
  const steps: Record<string, number> = {};
  for (const name of opts.models) {
    const [batch, seq, vocab] = name === "tiny" || name === "small"
      ? [16, 128, 256]
      : [8, 256, 32000];
    for (const method of opts.methods) {
      const r = await timeStep(name, method, batch, seq, vocab, opts.reps);
      steps[`${name} ${method}`] = r.ms;
      print(
        `| ${name} | ${method} | ${batch}×${seq} | ${r.ms.toFixed(1)} | ${
          Math.round((batch * seq * 1000) / r.ms)
        } | ${(r.peak / 1e6).toFixed(0)} |`,
      );
    }
  }
  return { matmul: mm, steps };
}

function limitsOf(l: GPUSupportedLimits): Record<string, number> {
  const names = [
    "maxBufferSize",
    "maxStorageBufferBindingSize",
    "maxStorageBuffersPerShaderStage",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxComputeWorkgroupsPerDimension",
    "minStorageBufferOffsetAlignment",
  ] as const;
  return Object.fromEntries(names.map((k) => [k, l[k]]));
}

/** Median ms of one full training step (forward, backward, AdamW, one loss read). */
async function timeStep(
  name: PresetName,
  method: MethodName,
  batch: number,
  seq: number,
  vocab: number,
  reps: number,
): Promise<{ ms: number; peak: number }> {
  const model = withVocab(PRESETS[name], vocab);
  const rank = Math.floor(model.hidden / 4);
  const run = {
    model,
    modelName: name,
    method,
    optimizer: "adamw",
    rank,
    delta: 0.03,
    alpha: rank / 4,
    lr: 1e-3,
    warmup: 10,
    steps: 1000,
    minLrRatio: 0.1,
    batch,
    seq,
    gradAccum: 1,
    clip: 0,
    weightDecay: 0,
    galoreGap: 200,
    galoreScale: 0.25,
    seed: 1,
  } as RunConfig;
  const m = initLlama(model, linearMethod(run), 1);
  let params: models.LlamaParams = m.params;
  const opt = buildOptimizer(run, params);
  let state = opt.init(params);
  const ids = Int32Array.from({ length: batch * seq }, (_, i) => (i * 7919) % vocab);
  const times: number[] = [];
  let peak = 0;
  for (let i = 0; i < reps + 2; i++) {
    resetPeakBytes();
    const t0 = performance.now();
    const inputs = tensor(ids, [batch, seq], "i32");
    const targets = tensor(ids, [batch, seq], "i32");
    const { value, grads } = valueAndGrad((p: models.LlamaParams) =>
      loss(m, p, { inputs, targets })
    )(
      params,
    );
    const r = await opt.update(grads, state, params);
    state = r.state;
    params = applyUpdates(params, r.updates);
    await value.data();
    tree.dispose([value, inputs, targets]);
    if (i >= 2) times.push(performance.now() - t0);
    peak = Math.max(peak, memoryStats().peakBytes);
  }
  tree.dispose([params, m.buffers, state]);
  return { ms: median(times), peak };
}
