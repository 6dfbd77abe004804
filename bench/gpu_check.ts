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
import { launchChromium } from "../tests/browser/chromium.ts";

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

/** Bundles the timing core into a page, runs it in Chromium and prints what it prints. */
async function timeInChromium(): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "sltrain-gpu-check-" });
  const entry = `${dir}/entry.ts`;
  await Deno.writeTextFile(
    entry,
    `import { init } from "${new URL("mod.ts", ROOT).href}";
import { runGpuCheck } from "${new URL("bench/gpu_check_core.ts", ROOT).href}";
const post = (line: string) => fetch("/line", { method: "POST", body: line });
try {
  await init();
  await runGpuCheck(${JSON.stringify(opts)}, (l) => { post(l); });
} catch (e) { await post("ERROR " + (e as Error).message); }
await post("__done__");
`,
  );
  const b = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--platform", "browser", entry, "-o", `${dir}/bundle.js`],
    cwd: ROOT.pathname,
  }).output();
  if (!b.success) throw new Error(`deno bundle failed: ${new TextDecoder().decode(b.stderr)}`);
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const lines: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/line") {
      const l = await req.text();
      if (l === "__done__") done();
      else (console.log(l), lines.push(l));
      return new Response("ok");
    }
    if (path === "/bundle.js") {
      return new Response(await Deno.readFile(`${dir}/bundle.js`), {
        headers: { "content-type": "text/javascript" },
      });
    }
    return new Response(`<!doctype html><script type="module" src="/bundle.js"></script>`, {
      headers: { "content-type": "text/html" },
    });
  });
  // The machine's GPU, as a user's Chrome would use it; --swiftshader: Dawn on the CPU.
  const browser = await launchChromium({ adapter: f.swiftshader ? "swiftshader" : "system" });
  try {
    console.log(`(${browser.version})\n`);
    await browser.page.goto(`http://127.0.0.1:${server.addr.port}/`);
    await finished;
  } finally {
    await browser.close();
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
}
