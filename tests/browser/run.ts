/**
 * `deno task test:browser`: runs the test suite inside headless Chromium (WebGPU through Dawn,
 * WGSL through Tint — what Chrome on a real GPU uses), the same test files `deno test` runs,
 * except the Deno-only ones listed in {@link DENO_ONLY} with the reason.
 *
 * How: the chosen test files are bundled for the browser with `deno bundle` behind a small harness
 * (`harness.ts`: `Deno.test` registers, the page runs them in order and posts each result back),
 * with `node:assert/strict` mapped to a browser implementation (`assert.ts`); a local server on
 * 127.0.0.1 serves the page and receives the results; Chromium is driven over the DevTools
 * protocol (`chromium.ts`).
 *
 *   deno task test:browser                       every browser test
 *   deno task test:browser tests/matmul_test.ts  only these files
 *   deno task test:browser --filter bf16         only tests whose name contains "bf16"
 *
 * Prints one line per test and `ok | N passed | M failed (time)`; exits 1 on any failure.
 * @module
 */
import { parseArgs } from "node:util";
import { launchChromium } from "./chromium.ts";
import type { TestReport } from "./harness.ts";

/** Test files that need Deno (files, processes, the CLI), with the reason; all others run in Chromium. */
export const DENO_ONLY: Readonly<Record<string, string>> = {
  "browser_test.ts": "starts Chromium itself (this runner)",
  "checkpoint_test.ts": "checkpoint files on disk (rotation, atomic rename)",
  "cli_test.ts": "runs train.ts in subprocesses",
  "crash_test.ts": "kills train.ts subprocesses",
  "dashboard_browser_test.ts": "starts Chromium itself, and train.ts in a subprocess",
  "dashboard_test.ts": "run folders on disk, the dashboard's HTTP server",
  "data_test.ts": "corpora and token caches on disk",
  "estimate_test.ts": "reads config files from disk (loadConfig)",
  "fuzz_test.ts": "damaged files on disk, train.ts in subprocesses",
  "generate_test.ts": "sample.ts in subprocesses, checkpoints on disk",
  "gpu_errors_test.ts": "loses the device in a train.ts subprocess",
  "guard_test.ts": "run folders on disk",
  "hf_test.ts": "Hugging Face folders on disk, export.ts in subprocesses",
  "optimizer_run_test.ts": "run folders and checkpoints on disk",
  "prepare_cli_test.ts": "prepare.ts in subprocesses",
  "run_records_test.ts": "run folders on disk",
  "runlog_test.ts": "log files on disk",
  "safetensors_test.ts": "safetensors files on disk",
  "shards_test.ts": "token shards on disk",
  "soak_test.ts": "run folders on disk",
  "tokenizer_test.ts": "tokenizer files on disk",
  "train_plots_test.ts": "runs train.ts, in process and in a subprocess",
  "train_test.ts": "run folders on disk",
};

const HERE = new URL(".", import.meta.url);
const TESTS = new URL("../", HERE);
const ROOT = new URL("../../", HERE);

/** The browser suite's files: every `tests/*_test.ts` not in {@link DENO_ONLY}, sorted. */
export function browserTestFiles(): string[] {
  return [...Deno.readDirSync(TESTS)]
    .filter((e) => e.isFile && e.name.endsWith("_test.ts") && !(e.name in DENO_ONLY))
    .map((e) => e.name)
    .sort();
}

/** Bundles `files` (names in tests/) behind the harness into `dir`/bundle.js; returns its size. */
async function bundle(files: string[], dir: string): Promise<number> {
  const harness = new URL("harness.ts", HERE).href;
  const lines = [`import { runAll } from "${harness}";`];
  files.forEach((f, i) => {
    Deno.writeTextFileSync(
      `${dir}/mark${i}.ts`,
      `import { setFile } from "${harness}";\nsetFile(${JSON.stringify(f)});\n`,
    );
    lines.push(`import "./mark${i}.ts";`, `import "${new URL(f, TESTS).href}";`);
  });
  lines.push(`await runAll(new URL(location.href).searchParams.get("filter") ?? "");`);
  Deno.writeTextFileSync(`${dir}/entry.ts`, lines.join("\n") + "\n");
  const config = JSON.parse(Deno.readTextFileSync(new URL("deno.json", ROOT)));
  const imports = { ...config.imports, "node:assert/strict": new URL("assert.ts", HERE).href };
  Deno.writeTextFileSync(`${dir}/import_map.json`, JSON.stringify({ imports }));
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--import-map",
      `${dir}/import_map.json`,
      `${dir}/entry.ts`,
      "-o",
      `${dir}/bundle.js`,
    ],
    cwd: new URL(ROOT).pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`deno bundle failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  return Deno.statSync(`${dir}/bundle.js`).size;
}

type Message =
  | TestReport
  | { planned: number; files: string[] }
  | { started: string; file: string }
  | { done: true };

/** Serves the page and the bundle on 127.0.0.1 and hands every report to `onReport`. */
function serve(dir: string, onReport: (m: Message) => void): Deno.HttpServer<Deno.NetAddr> {
  const page = `<!doctype html><meta charset="utf-8"><title>sltrain browser tests</title>
<script type="module" src="/bundle.js"></script>`;
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (req.method === "POST" && path === "/report") {
      onReport(await req.json());
      return new Response("ok");
    }
    if (path === "/") return new Response(page, { headers: { "content-type": "text/html" } });
    if (path === "/bundle.js") {
      return new Response(await Deno.readFile(`${dir}/bundle.js`), {
        headers: { "content-type": "text/javascript" },
      });
    }
    return new Response("not found", { status: 404 });
  });
}

const seconds = (ms: number) => ms < 1000 ? `${Math.round(ms)}ms` : `${(ms / 1000).toFixed(1)}s`;

/** Runs the suite; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const flags = parseArgs({
    args,
    options: {
      filter: { type: "string", default: "" },
      timeout: { type: "string", default: "1800" },
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
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  let browser: Awaited<ReturnType<typeof launchChromium>> | undefined;
  try {
    const size = await bundle(files, dir);
    let passed = 0, steps = 0;
    const failures: TestReport[] = [];
    let planned = -1, reported = 0, running = "(loading the bundle)";
    let finish!: () => void;
    let abort!: (e: Error) => void;
    const done = new Promise<void>((res, rej) => ([finish, abort] = [res, rej]));
    server = serve(dir, (m) => {
      if ("planned" in m) {
        planned = m.planned;
        console.log(`running ${m.planned} tests from ${m.files.length} files in Chromium`);
      } else if ("started" in m) running = `${m.file} => ${m.started}`;
      else if ("done" in m) finish();
      else {
        reported++;
        const mark = m.result === "ok" ? "ok" : m.result === "ignored" ? "ignored" : "FAILED";
        console.log(`${m.file} => ${m.name} ... ${mark} (${seconds(m.ms)})`);
        if (m.result === "ok") passed++, steps += m.steps;
        if (m.result === "failed") failures.push(m);
      }
    });
    browser = await launchChromium();
    const url = `http://127.0.0.1:${server.addr.port}/?filter=${
      encodeURIComponent(flags.values.filter)
    }`;
    console.log(`${browser.version}; bundle ${(size / 1024).toFixed(0)} KiB; ${url}`);
    browser.page.onConsole = (line) => {
      if (line.type === "exception") {
        abort(new Error(`uncaught in the page while running ${running}: ${line.text}`));
      } else if (line.type === "error" || line.type === "warning") {
        console.log(`  [page ${line.type}] ${line.text}`);
      }
    };
    const limit = Number(flags.values.timeout) * 1000;
    const timer = setTimeout(
      () => abort(new Error(`not done after ${flags.values.timeout} s; running ${running}`)),
      limit,
    );
    try {
      await browser.page.goto(url);
      await done;
    } finally {
      clearTimeout(timer);
    }
    for (const f of failures) console.log(`\n${f.file} => ${f.name}\n${f.error}`);
    const failed = failures.length + Math.max(0, planned - reported);
    const mark = failed === 0 ? "ok" : "FAILED";
    console.log(
      `\n${mark} | ${passed} passed (${steps} steps) | ${failed} failed (${
        seconds(performance.now() - started)
      })`,
    );
    console.log(
      `Deno-only test files (not run here): ${Object.keys(DENO_ONLY).length} — ` +
        Object.entries(DENO_ONLY).map(([f, why]) => `${f} (${why})`).join("; "),
    );
    return failed === 0 ? 0 : 1;
  } finally {
    await browser?.close();
    await server?.shutdown();
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
