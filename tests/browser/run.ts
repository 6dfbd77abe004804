/**
 * `deno task test:browser`: runs the test suite inside headless Chromium (WebGPU through Dawn,
 * WGSL through Tint — what Chrome on a real GPU uses), the same test files `deno test` runs,
 * except the Deno-only ones listed in {@link DENO_ONLY} with the reason.
 *
 * How: the chosen test files are bundled for the browser behind a small harness (`harness.ts`:
 * `Deno.test` registers, the page runs them in order and reports each result), with
 * `node:assert/strict` mapped to a browser implementation (`assert.ts`), and run in Chromium
 * (`page.ts`, over the DevTools protocol of `chromium.ts`).
 *
 *   deno task test:browser                       every browser test
 *   deno task test:browser tests/matmul_test.ts  only these files
 *   deno task test:browser --filter bf16         only tests whose name contains "bf16"
 *   deno task test:browser --system-gpu          on the machine's GPU instead of SwiftShader
 *
 * Prints one line per test and `ok | N passed | M failed (time)`; exits 1 on any failure.
 * @module
 */
import { parseArgs } from "node:util";
import type { TestReport } from "./harness.ts";
import { REPORT_PRELUDE, runInChromium } from "./page.ts";

/** Test files that need Deno (files, processes, the CLI), with the reason; all others run in Chromium. */
export const DENO_ONLY: Readonly<Record<string, string>> = {
  "benchmark_methods_test.ts": "run folders and checkpoints on disk",
  "bounded_fuzz_test.ts": "damaged Hugging Face folders and shards on disk",
  "browser_test.ts": "starts Chromium itself (this runner)",
  "checkpoint_test.ts": "checkpoint files on disk (rotation, atomic rename)",
  "cli_test.ts": "runs train.ts in subprocesses",
  "crash_test.ts": "kills train.ts subprocesses",
  "dashboard_browser_test.ts": "starts Chromium itself, and train.ts in a subprocess",
  "dashboard_test.ts": "run folders on disk, the dashboard's HTTP server",
  "data_test.ts": "corpora and token caches on disk",
  "estimate_test.ts": "reads config files from disk (loadConfig)",
  "extend_test.ts": "run folders on disk, train.ts resumed",
  "fault_test.ts": "injects faults into train.ts subprocesses",
  "flags_test.ts": "parses train.ts's command line (node:util parseArgs)",
  "fuzz_test.ts": "damaged files on disk, train.ts in subprocesses",
  "generate_test.ts": "sample.ts in subprocesses, checkpoints on disk",
  "gpu_errors_test.ts": "loses the device in a train.ts subprocess",
  "guard_test.ts": "run folders on disk",
  "hf_test.ts": "Hugging Face folders on disk, export.ts in subprocesses",
  "optimizer_run_test.ts": "run folders and checkpoints on disk",
  "parity_test.ts": "runs the PyTorch reference in Python subprocesses",
  "plan_test.ts":
    "the planner of train.ts --fit (its report imports the CLI flag parser, node:util)",
  "prepare_cli_test.ts": "prepare.ts in subprocesses",
  "run_lock_test.ts": "lock files and processes",
  "run_records_test.ts": "run folders on disk",
  "runlog_test.ts": "log files on disk",
  "safetensors_test.ts": "safetensors files on disk",
  "shards_test.ts": "token shards on disk",
  "sltrain_script_test.ts": "runs the ./sltrain shell script",
  "soak_test.ts": "run folders on disk",
  "tokenizer_test.ts": "tokenizer files on disk",
  "torch_package_test.ts": "runs the PyTorch package (torch/) in Python subprocesses",
  "train_plots_test.ts": "runs train.ts, in process and in a subprocess",
  "train_test.ts": "run folders on disk",
  "web_demo_test.ts": "serves the demo page and drives Chromium itself",
};

const HERE = new URL(".", import.meta.url);
const TESTS = new URL("../", HERE);

/** The browser suite's files: every `tests/*_test.ts` not in {@link DENO_ONLY}, sorted. */
export function browserTestFiles(): string[] {
  return [...Deno.readDirSync(TESTS)]
    .filter((e) => e.isFile && e.name.endsWith("_test.ts") && !(e.name in DENO_ONLY))
    .map((e) => e.name)
    .sort();
}

/** The generated entry: the harness, then each test file behind a marker naming it. */
async function entrySource(files: string[], filter: string, dir: string): Promise<string> {
  const harness = new URL("harness.ts", HERE).href;
  const lines = [`import { runAll } from "${harness}";`];
  for (const [i, f] of files.entries()) {
    await Deno.writeTextFile(
      `${dir}/mark${i}.ts`,
      `import { setFile } from "${harness}";\nsetFile(${JSON.stringify(f)});\n`,
    );
    lines.push(`import "${dir}/mark${i}.ts";`, `import "${new URL(f, TESTS).href}";`);
  }
  return [
    ...lines,
    REPORT_PRELUDE,
    `await runAll(${JSON.stringify(filter)}, report);`,
    "await done();",
  ]
    .join("\n") + "\n";
}

type Message = TestReport | { planned: number; files: string[] } | {
  started: string;
  file: string;
};

const seconds = (ms: number) => ms < 1000 ? `${Math.round(ms)}ms` : `${(ms / 1000).toFixed(1)}s`;

/** Runs the suite; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const flags = parseArgs({
    args,
    options: {
      filter: { type: "string", default: "" },
      timeout: { type: "string", default: "1800" },
      "system-gpu": { type: "boolean", default: false },
    },
    allowPositionals: true,
  });
  const all = browserTestFiles();
  const files = flags.positionals.length
    ? flags.positionals.map((p) => p.slice(p.lastIndexOf("/") + 1))
    : all;
  for (const f of files) {
    if (f in DENO_ONLY) throw new Error(`${f} is Deno-only: ${DENO_ONLY[f]}`);
    if (!all.includes(f)) throw new Error(`${f} is not a test file in tests/`);
  }
  const started = performance.now();
  const dir = await Deno.makeTempDir({ prefix: "sltrain-browser-tests-" });
  try {
    let passed = 0, steps = 0, planned = -1, reported = 0;
    let running = "(loading the bundle)";
    const failures: TestReport[] = [];
    const onLine = (line: string) => {
      const m = JSON.parse(line) as Message;
      if ("planned" in m) {
        planned = m.planned;
        console.log(`running ${m.planned} tests from ${m.files.length} files in Chromium`);
      } else if ("started" in m) running = `${m.file} => ${m.started}`;
      else {
        reported++;
        const mark = m.result === "ok" ? "ok" : m.result === "ignored" ? "ignored" : "FAILED";
        console.log(`${m.file} => ${m.name} ... ${mark} (${seconds(m.ms)})`);
        if (m.result === "ok") passed++, steps += m.steps;
        if (m.result === "failed") failures.push(m);
      }
    };
    const { version, bundleBytes } = await runInChromium(
      await entrySource(files, flags.values.filter, dir),
      onLine,
      {
        adapter: flags.values["system-gpu"] ? "system" : "swiftshader",
        timeoutMs: Number(flags.values.timeout) * 1000,
        running: () => running,
      },
    );
    for (const f of failures) console.log(`\n${f.file} => ${f.name}\n${f.error}`);
    const failed = failures.length + Math.max(0, planned - reported);
    const mark = failed === 0 ? "ok" : "FAILED";
    console.log(
      `\n${mark} | ${passed} passed (${steps} steps) | ${failed} failed (${
        seconds(performance.now() - started)
      }; ${version}, bundle ${(bundleBytes / 1024).toFixed(0)} KiB)`,
    );
    console.log(
      `Deno-only test files (not run here): ${Object.keys(DENO_ONLY).length} — ` +
        Object.entries(DENO_ONLY).map(([f, why]) => `${f} (${why})`).join("; "),
    );
    return failed === 0 ? 0 : 1;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`browser tests: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
