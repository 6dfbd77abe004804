/**
 * One command for a machine with a GPU (or any adapter), under 8 minutes on a GPU:
 *
 *   deno run -A bench/gpu_check.ts            # kernels checked, matmul and step timed, in Deno
 *   deno run -A bench/gpu_check.ts --browser  # the same in Chromium, on the machine's GPU
 *                                             # (--swiftshader: on Dawn's CPU adapter)
 *   deno run -A bench/gpu_check.ts --quick    # tiny only: a check on a CPU adapter in minutes
 *
 * 1. The adapter and its limits.
 * 2. Every kernel checked in the configuration the adapter selects: the kernel test files (the
 *    browser suite's list: every op family against float64 and finite differences, matmul in
 *    every family, flash attention in both configurations, the optimizer kernels, bf16, windows,
 *    the whole model), which also force the real-GPU configurations on any adapter.
 * 3. The matmul table (GFLOP/s, share of the card's fp32 peak when known) and a training step of
 *    full-rank and SLTrain at `tiny`, `60m` and `350m` (bench/gpu_check_core.ts).
 *
 * Flags: `--models tiny,60m,350m`, `--sizes 1024,2048,4096`, `--reps 5`, `--peak-tflops X` (the
 * card's fp32 peak when it is not in the table), `--skip-tests`, `--timeout S` for the kernel tests
 * (default 300). Prints markdown; the closing table says what passed.
 * @module
 */
import { parseArgs } from "node:util";
import { initGpu } from "../cli/gpu.ts";
import type { PresetName } from "../models/config.ts";
import type { MethodName } from "../cli/run_config.ts";
import { type GpuCheckOptions, runGpuCheck } from "./gpu_check_core.ts";
import { browserTestFiles } from "../tests/browser/run.ts";
import { REPORT_PRELUDE, runInChromium } from "../tests/browser/page.ts";

const ROOT = new URL("../", import.meta.url);

const { values: f } = parseArgs({
  options: {
    browser: { type: "boolean", default: false },
    swiftshader: { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
    models: { type: "string" },
    sizes: { type: "string" },
    methods: { type: "string", default: "full,sltrain" },
    reps: { type: "string", default: "5" },
    "peak-tflops": { type: "string" },
    "skip-tests": { type: "boolean", default: false },
    timeout: { type: "string", default: "300" },
  },
});

const list = (s: string) => s.split(",").map((x) => x.trim()).filter(Boolean);
const opts: GpuCheckOptions = {
  models: list(f.models ?? (f.quick ? "tiny" : "tiny,60m,350m")) as PresetName[],
  matmulSizes: list(f.sizes ?? (f.quick ? "256,512" : "1024,2048,4096")).map(Number),
  methods: list(f.methods!) as MethodName[],
  reps: Number(f.reps),
  peakTflops: f["peak-tflops"] ? Number(f["peak-tflops"]) : undefined,
};
const started = performance.now();
const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)} s`;

/** Runs a command with a time limit; returns its exit code and the last lines of its output. */
async function runFor(args: string[], seconds: number): Promise<{ code: number; tail: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT.pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), seconds * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const code = out.signal === "SIGKILL" ? 124 : out.code;
  return { code, tail: text.split("\n").slice(-40).join("\n") };
}

const summary: [string, string][] = [];
console.log(`# sltrain GPU check (${new Date().toISOString()})\n`);

if (!f.browser) {
  await initGpu();
  if (!f["skip-tests"]) {
    const files = browserTestFiles().map((x) => `tests/${x}`);
    console.log(`## Kernel tests (${files.length} files, deno test)\n`);
    const r = await runFor(["test", "-A", "--parallel", ...files], Number(f.timeout));
    const line = r.tail.split("\n").find((l) => /^(ok|FAILED) \|/.test(l)) ??
      (r.code === 124 ? `timed out after ${f.timeout} s` : `exit ${r.code}`);
    console.log(r.code === 0 ? line : `${r.tail}\n`);
    summary.push(["kernel tests (Deno)", line]);
  }
  await runGpuCheck(opts, console.log);
  summary.push(["timing (Deno)", "done"]);
} else {
  if (!f["skip-tests"]) {
    console.log("## Kernel tests in Chromium (deno task test:browser)\n");
    const adapter = f.swiftshader ? [] : ["--system-gpu"];
    const r = await runFor(["run", "-A", "tests/browser/run.ts", ...adapter], Number(f.timeout));
    const line = r.tail.split("\n").find((l) => /^(ok|FAILED) \|/.test(l)) ?? `exit ${r.code}`;
    console.log(r.code === 0 ? line : `${r.tail}\n`);
    summary.push(["kernel tests (Chromium)", line]);
  }
  await timeInChromium();
  summary.push(["timing (Chromium)", "done"]);
}

console.log(`\n## Summary (${elapsed()})\n\n| part | result |\n|---|---|`);
for (const [k, v] of summary) console.log(`| ${k} | ${v} |`);
Deno.exit(summary.some(([, v]) => /FAILED|timed out|exit [1-9]/.test(v)) ? 1 : 0);

/** Runs the timing core in a page in Chromium and prints what it prints. */
async function timeInChromium(): Promise<void> {
  const entry = `import { init } from "${new URL("mod.ts", ROOT).href}";
import { runGpuCheck } from "${new URL("bench/gpu_check_core.ts", ROOT).href}";
${REPORT_PRELUDE}
await init();
// Posted one after another, so that the lines arrive in order.
let posted: Promise<unknown> = Promise.resolve();
await runGpuCheck(${
    JSON.stringify(opts)
  }, (l: string) => { posted = posted.then(() => report(l)); });
await posted;
await done();
`;
  // The machine's GPU, as a user's Chrome would use it; --swiftshader: Dawn on the CPU.
  const { version } = await runInChromium(entry, (l) => console.log(l), {
    adapter: f.swiftshader ? "swiftshader" : "system",
  });
  console.log(`\n(${version})`);
}
