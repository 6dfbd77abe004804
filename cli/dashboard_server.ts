/**
 * The dashboard's HTTP server: the page at `/`, the runs as server-sent events at `/api/stream`
 * (a snapshot, then each run's new records within one poll interval of being logged), the same
 * snapshot as JSON at `/api/snapshot`, and a few files of each run (`/runs/<id>/loss.svg`,
 * `summary.json`, `log.jsonl`, `dashboard.html`). Nothing else is served: no path from a request
 * is ever joined to a folder, so no request reaches a file outside the run folders (`../` is a
 * 404 like any unknown path), and a symbolic link is never followed. On a loopback address it
 * answers only requests addressed to localhost, so a web page elsewhere cannot read it through DNS
 * rebinding.
 * @module
 */
import type { RunDelta } from "../web/dashboard/model.ts";
import { dashboardHtml, pageAssets } from "./dashboard_page.ts";
import { RunStore } from "./dashboard_runs.ts";

/** Options of {@link startDashboard}. */
export interface DashboardOptions {
  /** Run folders, or folders holding them. */
  roots: readonly string[];
  /** TCP port; 0 picks a free one. */
  port: number;
  /** Address to listen on; default 127.0.0.1 (this machine only). */
  hostname?: string;
  /** Page title. */
  title?: string;
  /** How often the logs are looked at, ms; default 100. */
  pollMs?: number;
  /** How the user picks another port, for the error when this one is taken. */
  portHint?: string;
  /** Say so on the page when a root holds no run (default true; false while one is starting). */
  reportEmpty?: boolean;
}

/** A running dashboard server. */
export interface Dashboard {
  /** The page's address. */
  readonly url: string;
  /** The port it listens on. */
  readonly port: number;
  /** The runs it serves. */
  readonly store: RunStore;
  /** Stops polling, ends every stream and closes the server. */
  close(): Promise<void>;
}

/** The files of a run that are served, with their types. */
const RUN_FILES: Record<string, string> = {
  "loss.svg": "image/svg+xml",
  "summary.json": "application/json",
  "log.jsonl": "text/plain; charset=utf-8",
  "dashboard.html": "text/html; charset=utf-8",
};

const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

/** Lines to every connected page. */
class Streams {
  #clients = new Set<ReadableStreamDefaultController<Uint8Array>>();
  #enc = new TextEncoder();

  /** A new stream that starts with `first`. */
  open(first: string): ReadableStream<Uint8Array> {
    let me: ReadableStreamDefaultController<Uint8Array>;
    return new ReadableStream({
      start: (c) => {
        me = c;
        this.#clients.add(c);
        c.enqueue(this.#enc.encode(first));
      },
      cancel: () => void this.#clients.delete(me),
    });
  }

  send(text: string): void {
    const bytes = this.#enc.encode(text);
    for (const c of this.#clients) {
      try {
        c.enqueue(bytes);
      } catch {
        this.#clients.delete(c);
      }
    }
  }

  closeAll(): void {
    for (const c of this.#clients) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    this.#clients.clear();
  }
}

const sse = (event: string, data: unknown) => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;

/**
 * Starts serving the runs under `opts.roots`; resolves once it listens. A port already in use is
 * an error that names it and says how to choose another.
 */
export async function startDashboard(opts: DashboardOptions): Promise<Dashboard> {
  const hostname = opts.hostname ?? "127.0.0.1";
  const title = opts.title ?? "sltrain runs";
  const store = new RunStore(opts.roots, title, opts.reportEmpty ?? true);
  await store.scan();
  await store.poll();
  const assets = await pageAssets();
  const page = dashboardHtml(assets, title);
  const streams = new Streams();
  const loopback = LOOPBACK.has(hostname);

  const handler = async (req: Request): Promise<Response> => {
    const url = new URL(req.url);
    if (loopback && !LOOPBACK.has(url.hostname)) {
      return new Response("this dashboard answers only to localhost\n", { status: 403 });
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405 });
    }
    const path = url.pathname;
    if (path === "/") {
      return new Response(page, { headers: { "content-type": "text/html; charset=utf-8" } });
    }
    if (path === "/api/stream") {
      return new Response(streams.open(sse("snapshot", store.snapshot())), {
        headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
      });
    }
    if (path === "/api/snapshot") return Response.json(store.snapshot());
    const m = /^\/runs\/(\d+)\/([^/]+)$/.exec(path);
    const run = m ? store.run(m[1]) : undefined;
    if (m && run && RUN_FILES[m[2]]) {
      const file = `${run.dir}/${m[2]}`;
      try {
        // A symbolic link could point anywhere: only plain files are served.
        if ((await Deno.lstat(file)).isFile) {
          return new Response(await Deno.readFile(file), {
            headers: { "content-type": RUN_FILES[m[2]] },
          });
        }
      } catch { /* not written (yet) */ }
    }
    return new Response("not found\n", { status: 404 });
  };

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({ hostname, port: opts.port, onListen: () => {} }, handler);
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      throw new Error(
        `port ${opts.port} on ${hostname} is already in use (another dashboard or server?): ` +
          `choose another with ${opts.portHint ?? "a different port"}, or 0 for any free port`,
      );
    }
    throw e;
  }

  // Polls the logs (a stat each while they do not change), every 5th time the summaries too, and
  // every 10th time looks for new run folders.
  let notRuns = JSON.stringify(store.notRuns);
  let busy = false;
  let ticks = 0;
  const timer = setInterval(async () => {
    if (busy) return;
    busy = true;
    try {
      if (++ticks % 10 === 0) {
        await store.scan();
        const now = JSON.stringify(store.notRuns);
        if (now !== notRuns) {
          notRuns = now;
          streams.send(sse("snapshot", store.snapshot()));
        }
      }
      const deltas: RunDelta[] = await store.poll(ticks % 5 === 0);
      for (const d of deltas) streams.send(sse("run", d));
    } catch (e) {
      console.error(`dashboard: ${(e as Error).message}`);
    } finally {
      busy = false;
    }
  }, opts.pollMs ?? 100);

  const addr = server.addr;
  const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
  return {
    url: `http://${host}:${addr.port}/`,
    port: addr.port,
    store,
    async close() {
      clearInterval(timer);
      streams.closeAll();
      await server.shutdown();
    },
  };
}

/** A dashboard served from a worker thread, so that it answers while the main thread trains. */
export interface DashboardThread {
  /** The page's address. */
  readonly url: string;
  /** Closes the server and ends the worker. */
  close(): Promise<void>;
}

/**
 * {@link startDashboard} in a worker: the training loop keeps the main thread busy between its
 * GPU reads, and a server there would answer (and a page update) only at those reads. Rejects
 * with the server's error (a port in use, say).
 */
export function startDashboardThread(opts: DashboardOptions): Promise<DashboardThread> {
  const worker = new Worker(new URL("./dashboard_worker.ts", import.meta.url), { type: "module" });
  return new Promise((resolve, reject) => {
    worker.onerror = (e) => {
      e.preventDefault();
      worker.terminate();
      reject(new Error(`dashboard: ${e.message}`));
    };
    worker.onmessage = (e: MessageEvent<{ url?: string; error?: string }>) => {
      if (e.data.error !== undefined) {
        worker.terminate();
        reject(new Error(e.data.error));
        return;
      }
      const url = e.data.url!;
      resolve({
        url,
        close: () =>
          new Promise<void>((done) => {
            worker.onmessage = () => {
              worker.terminate();
              done();
            };
            worker.postMessage({ close: true });
          }),
      });
    };
    worker.postMessage({ start: opts });
  });
}
