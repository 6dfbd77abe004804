/**
 * `deno task web`: builds the demo page into `web/demo/dist/` — `app.js` (the library and the page,
 * bundled for browsers by `deno bundle`), `index.html`, `style.css` and `sample.txt`: plain static
 * files any static host can serve — then serves that folder on 127.0.0.1.
 *
 *   deno task web                 build, then serve on http://127.0.0.1:8787/
 *   deno task web --port 9000     another port (0: any free one)
 *   deno task web --build-only    build only
 * @module
 */
import { parseArgs } from "node:util";

const DEMO = new URL("./demo/", import.meta.url);
/** Where the built page goes. */
export const DIST = new URL("./demo/dist/", import.meta.url);
const STATIC = ["index.html", "style.css", "sample.txt"];

/** Builds the page into {@link DIST}; returns the bundle's size in bytes. */
export async function buildDemo(): Promise<number> {
  await Deno.mkdir(DIST, { recursive: true });
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--minify",
      new URL("app.ts", DEMO).pathname,
      "-o",
      new URL("app.js", DIST).pathname,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`deno bundle failed:\n${new TextDecoder().decode(out.stderr)}`);
  for (const f of STATIC) await Deno.copyFile(new URL(f, DEMO), new URL(f, DIST));
  return (await Deno.stat(new URL("app.js", DIST))).size;
}

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  txt: "text/plain; charset=utf-8",
};

/**
 * Serves the files of `root` (a folder URL ending in /) on 127.0.0.1:`port`: `/` is index.html;
 * anything outside the folder, or not a plain file in it, is a 404.
 */
export function serveStatic(root: URL, port: number): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const name = path === "/" ? "index.html" : path.slice(1);
    if (req.method !== "GET" || !/^[\w.-]+$/.test(name) || name.startsWith(".")) {
      return new Response("not found", { status: 404 });
    }
    try {
      const body = await Deno.readFile(new URL(name, root));
      const type = TYPES[name.slice(name.lastIndexOf(".") + 1)] ?? "application/octet-stream";
      return new Response(body, { headers: { "content-type": type } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { port: { type: "string", default: "8787" }, "build-only": { type: "boolean" } },
  });
  const port = Number(values.port);
  if (!(Number.isInteger(port) && port >= 0 && port < 65536)) {
    console.error(`--port: expected a port number, got ${values.port}`);
    Deno.exit(2);
  }
  const bytes = await buildDemo();
  console.log(`built ${DIST.pathname} (app.js ${(bytes / 1024).toFixed(0)} KiB)`);
  if (!values["build-only"]) {
    let server;
    try {
      server = serveStatic(DIST, port);
    } catch (e) {
      if (e instanceof Deno.errors.AddrInUse) {
        console.error(`port ${port} is in use: choose another with --port N (0 picks a free one)`);
        Deno.exit(1);
      }
      throw e;
    }
    console.log(`serving http://127.0.0.1:${server.addr.port}/  (Ctrl-C stops)`);
  }
}
