/**
 * Runs a module of this repository in headless Chromium and hands back what it reports: the
 * module is bundled for the browser with `deno bundle` (the repo's import map, with
 * `node:assert/strict` mapped to `assert.ts`), served from 127.0.0.1 with a page that loads it, and
 * every `report(line)` it makes (a POST to `/line`) reaches `onLine`. The browser suite, the GPU
 * check and the Deno-vs-Chromium comparison all run this way.
 * @module
 */
import { launchChromium, type LaunchOptions } from "./chromium.ts";

const HERE = new URL(".", import.meta.url);
const ROOT = new URL("../../", HERE);

/**
 * The line of code that defines `report` in a generated entry: `await report(text)` posts one line
 * back; `await done()` ends the run.
 */
export const REPORT_PRELUDE =
  `const report = (line: string) => fetch("/line", { method: "POST", body: line });
const done = () => report("\\u0004");`;

/** Options of {@link runInChromium}. */
export interface PageRunOptions extends LaunchOptions {
  /** Gives up after this many ms, naming `running()` (default 30 minutes). */
  timeoutMs?: number;
  /** What the page is doing, for the timeout's message. */
  running?: () => string;
}

/**
 * Bundles `entrySource` (TypeScript that imports by absolute file URL and ends with `await done()`;
 * see {@link REPORT_PRELUDE}) and runs it in Chromium; resolves once it is done. An uncaught
 * exception in the page or the timeout rejects, naming it.
 */
export async function runInChromium(
  entrySource: string,
  onLine: (line: string) => void,
  opts: PageRunOptions = {},
): Promise<{ version: string; bundleBytes: number }> {
  const dir = await Deno.makeTempDir({ prefix: "sltrain-page-" });
  let server: Deno.HttpServer<Deno.NetAddr> | undefined;
  let browser: Awaited<ReturnType<typeof launchChromium>> | undefined;
  try {
    await Deno.writeTextFile(`${dir}/entry.ts`, entrySource);
    const bundleBytes = await bundleForBrowser(`${dir}/entry.ts`, `${dir}/bundle.js`, dir);
    let finish!: () => void;
    let abort!: (e: Error) => void;
    const finished = new Promise<void>((res, rej) => ([finish, abort] = [res, rej]));
    server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
      const path = new URL(req.url).pathname;
      if (req.method === "POST" && path === "/line") {
        const line = await req.text();
        if (line === "\u0004") finish();
        else onLine(line);
        return new Response("ok");
      }
      if (req.method === "POST" && path === "/load-failed") {
        abort(
          new Error(
            `the test bundle did not load in the page: ${await req
              .text()} (does a file it imports need Deno or Node, e.g. node:util? list it in DENO_ONLY)`,
          ),
        );
        return new Response("ok");
      }
      if (path === "/bundle.js") {
        return new Response(await Deno.readFile(`${dir}/bundle.js`), {
          headers: { "content-type": "text/javascript" },
        });
      }
      if (path === "/") {
        return new Response(
          // Imported, not loaded by src: a bundle that fails to load (an unresolvable import) is
          // reported instead of leaving the page waiting until the timeout.
          `<!doctype html><meta charset="utf-8"><script type="module">import("/bundle.js").catch((e) => fetch("/load-failed", { method: "POST", body: String(e) }));</script>`,
          { headers: { "content-type": "text/html" } },
        );
      }
      return new Response("not found", { status: 404 });
    });
    browser = await launchChromium(opts);
    browser.page.onConsole = (line) => {
      const where = opts.running ? ` while running ${opts.running()}` : "";
      if (line.type === "exception") abort(new Error(`uncaught in the page${where}: ${line.text}`));
      else if (line.type === "error") console.error(`  [page error] ${line.text}`);
    };
    const limit = opts.timeoutMs ?? 30 * 60_000;
    const timer = setTimeout(() => {
      const where = opts.running ? `; running ${opts.running()}` : "";
      abort(new Error(`not done after ${limit / 1000} s${where}`));
    }, limit);
    try {
      await browser.page.goto(`http://127.0.0.1:${server.addr.port}/`);
      await finished;
    } finally {
      clearTimeout(timer);
    }
    return { version: browser.version, bundleBytes };
  } finally {
    await browser?.close();
    await server?.shutdown();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Bundles `entry` for browsers into `out` with the repository's imports (and the browser
 * `node:assert/strict`); the import map goes to `scratch`. Returns the bundle's size.
 */
export async function bundleForBrowser(
  entry: string,
  out: string,
  scratch: string,
): Promise<number> {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const imports = { ...config.imports, "node:assert/strict": new URL("assert.ts", HERE).href };
  await Deno.writeTextFile(`${scratch}/import_map.json`, JSON.stringify({ imports }));
  const o = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--import-map",
      `${scratch}/import_map.json`,
      entry,
      "-o",
      out,
    ],
    cwd: ROOT.pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!o.success) throw new Error(`deno bundle failed:\n${new TextDecoder().decode(o.stderr)}`);
  return (await Deno.stat(out)).size;
}
