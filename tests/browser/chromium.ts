/**
 * Headless Chromium driven over the DevTools protocol, for the browser test suite, the demo page's
 * check and the dashboard's test: launch, open a page, evaluate, watch the console, screenshot.
 * Deno-only (it starts a process); no npm dependency, only Deno's WebSocket.
 *
 * Chromium on a machine without a GPU gives WebGPU through Dawn on SwiftShader (a CPU adapter);
 * the flags below are what that needs (`../shared/reference/platform.md`), plus the ones that keep
 * a headless browser from reaching for the network.
 * @module
 */

/** Where Chromium is looked for when `CHROMIUM` is not set. */
const CANDIDATES = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** WebGPU through Vulkan: on the machine's GPU, or on SwiftShader (a CPU) when forced. */
const WEBGPU_FLAGS: readonly string[] = ["--enable-unsafe-webgpu", "--enable-features=Vulkan"];
const SWIFTSHADER_FLAGS: readonly string[] = [
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
];

/** The flags every launch uses: headless, no background traffic. */
export const CHROMIUM_FLAGS: readonly string[] = [
  "--headless=new",
  "--no-sandbox",
  "--no-first-run",
  "--no-default-browser-check",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--disable-extensions",
  "--mute-audio",
];

/** The Chromium executable: `$CHROMIUM`, else the first of the usual paths that exists, else null. */
export function findChromium(): string | null {
  const set = Deno.env.get("CHROMIUM");
  if (set) return set;
  for (const path of CANDIDATES) {
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch { /* not there */ }
  }
  return null;
}

/** What a page printed or threw, as the DevTools protocol reports it. */
export interface ConsoleLine {
  /** `log`, `error`, `warning`, … or `exception` for an uncaught error. */
  readonly type: string;
  /** The arguments joined by spaces (objects as their description). */
  readonly text: string;
}

/** A page (tab) of a launched Chromium. */
export interface Page {
  /** Loads `url` and waits for its `load` event. */
  goto(url: string): Promise<void>;
  /** Evaluates `expression` in the page (awaiting a promise) and returns its JSON value. */
  evaluate<T = unknown>(expression: string): Promise<T>;
  /** Polls `expression` every `intervalMs` until it is truthy; returns its value or throws after `timeoutMs`. */
  waitFor<T = unknown>(expression: string, timeoutMs: number, intervalMs?: number): Promise<T>;
  /** A PNG of the viewport. */
  screenshot(): Promise<Uint8Array>;
  /** Sets the viewport size (CSS pixels). */
  setViewport(width: number, height: number): Promise<void>;
  /** Sends a raw DevTools command to the page. */
  send<T = Record<string, unknown>>(method: string, params?: Record<string, unknown>): Promise<T>;
  /** Every console line and uncaught exception so far. */
  readonly console: readonly ConsoleLine[];
  /** Called for each console line as it arrives. */
  onConsole?: (line: ConsoleLine) => void;
}

/** A running headless Chromium with one page. */
export interface Browser {
  /** The page to drive. */
  readonly page: Page;
  /** The browser's version line, e.g. `Chrome/156.0.8078.129`. */
  readonly version: string;
  /** Closes the browser and removes its profile folder. */
  close(): Promise<void>;
}

/** Options for {@link launchChromium}. */
export interface LaunchOptions {
  /** Extra command-line flags. */
  args?: string[];
  /** WebGPU on (default) or off: `false` starts a browser whose pages have no `navigator.gpu`. */
  webgpu?: boolean;
  /**
   * Which adapter WebGPU gets: `swiftshader` (default: Dawn on the CPU, the same on every machine)
   * or `system` (the machine's GPU, as a user's Chrome would).
   */
  adapter?: "swiftshader" | "system";
  /** How long to wait for the browser to start, ms (default 30000). */
  startTimeoutMs?: number;
}

/** Starts headless Chromium with WebGPU and opens one blank page; throws naming what is missing. */
export async function launchChromium(options: LaunchOptions = {}): Promise<Browser> {
  const exe = findChromium();
  if (!exe) {
    throw new Error(
      "Chromium not found: install it (Debian: `apt-get install -y chromium`) or set CHROMIUM " +
        "to its path",
    );
  }
  const profile = await Deno.makeTempDir({ prefix: "sltrain-chromium-" });
  const child = new Deno.Command(exe, {
    args: [
      ...CHROMIUM_FLAGS,
      ...(options.webgpu === false
        ? ["--disable-features=WebGPU"]
        : [...WEBGPU_FLAGS, ...(options.adapter === "system" ? [] : SWIFTSHADER_FLAGS)]),
      ...(options.args ?? []),
      `--user-data-dir=${profile}`,
      "--remote-debugging-port=0",
      "about:blank",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const cleanup = async () => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
    await child.status.catch(() => {});
    await Deno.remove(profile, { recursive: true }).catch(() => {});
  };
  try {
    const endpoint = await devtoolsEndpoint(child, options.startTimeoutMs ?? 30_000);
    const http = endpoint.replace(/^ws:\/\/([^/]+)\/.*$/, "http://$1");
    const version = (await (await fetch(`${http}/json/version`)).json()).Browser as string;
    const targets = await (await fetch(`${http}/json/list`)).json() as {
      type: string;
      webSocketDebuggerUrl: string;
    }[];
    const target = targets.find((t) => t.type === "page");
    if (!target) throw new Error("Chromium started without a page target");
    const page = await connectPage(target.webSocketDebuggerUrl);
    return {
      page,
      version,
      async close() {
        page.close();
        await cleanup();
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** Reads Chromium's stderr until it prints its DevTools address (the rest is drained and dropped). */
async function devtoolsEndpoint(child: Deno.ChildProcess, timeoutMs: number): Promise<string> {
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  const timer = setTimeout(() => reader.cancel("timeout").catch(() => {}), timeoutMs);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) {
        throw new Error(
          `Chromium did not report its DevTools address (exited, or not within ${timeoutMs} ms): ` +
            seen.slice(-500),
        );
      }
      seen += value;
      const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) {
        // Keep draining so Chromium never blocks on a full pipe.
        (async () => {
          while (!(await reader.read().catch(() => ({ done: true }))).done) { /* drop */ }
        })();
        return m[1];
      }
    }
  } finally {
    clearTimeout(timer);
  }
}

interface Pending {
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
  method: string;
}

async function connectPage(url: string): Promise<Page & { close(): void }> {
  const ws = new WebSocket(url);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`cannot connect to Chromium's page at ${url}`));
  });
  let nextId = 1;
  const pending = new Map<number, Pending>();
  const waiters = new Map<string, (params: Record<string, unknown>) => void>();
  const lines: ConsoleLine[] = [];
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data as string);
    if (msg.id !== undefined) {
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
      else p.resolve(msg.result ?? {});
      return;
    }
    if (msg.method === "Runtime.consoleAPICalled") {
      const args = msg.params.args as { value?: unknown; description?: string }[];
      const text = args.map((a) => a.value !== undefined ? String(a.value) : a.description ?? "")
        .join(" ");
      record({ type: msg.params.type, text });
    } else if (msg.method === "Runtime.exceptionThrown") {
      const d = msg.params.exceptionDetails;
      record({ type: "exception", text: d.exception?.description ?? d.text });
    }
    waiters.get(msg.method)?.(msg.params);
  };
  ws.onclose = () => {
    for (const p of pending.values()) p.reject(new Error(`${p.method}: Chromium went away`));
    pending.clear();
  };
  const page: Page & { close(): void } = {
    console: lines,
    send<T>(method: string, params: Record<string, unknown> = {}): Promise<T> {
      const id = nextId++;
      ws.send(JSON.stringify({ id, method, params }));
      return new Promise((resolve, reject) =>
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject, method })
      );
    },
    async goto(target: string) {
      const loaded = new Promise<void>((resolve) =>
        waiters.set("Page.loadEventFired", () => resolve())
      );
      const r = await page.send<{ errorText?: string }>("Page.navigate", { url: target });
      if (r.errorText) throw new Error(`cannot open ${target}: ${r.errorText}`);
      await loaded;
      waiters.delete("Page.loadEventFired");
    },
    async evaluate<T>(expression: string): Promise<T> {
      const r = await page.send<{
        result: { value?: T };
        exceptionDetails?: { exception?: { description?: string }; text: string };
      }>("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
      if (r.exceptionDetails) {
        const d = r.exceptionDetails;
        throw new Error(`in the page: ${d.exception?.description ?? d.text}`);
      }
      return r.result.value as T;
    },
    async waitFor<T>(expression: string, timeoutMs: number, intervalMs = 100): Promise<T> {
      const until = Date.now() + timeoutMs;
      while (true) {
        const v = await page.evaluate<T>(expression);
        if (v) return v;
        if (Date.now() > until) {
          throw new Error(`timed out after ${timeoutMs} ms waiting for \`${expression}\``);
        }
        await new Promise((r) => setTimeout(r, intervalMs));
      }
    },
    async screenshot() {
      const r = await page.send<{ data: string }>("Page.captureScreenshot", { format: "png" });
      return Uint8Array.from(atob(r.data), (c) => c.charCodeAt(0));
    },
    async setViewport(width: number, height: number) {
      await page.send("Emulation.setDeviceMetricsOverride", {
        width,
        height,
        deviceScaleFactor: 1,
        mobile: false,
      });
    },
    close() {
      ws.close();
    },
  };
  function record(line: ConsoleLine) {
    lines.push(line);
    page.onConsole?.(line);
  }
  await page.send("Page.enable");
  await page.send("Runtime.enable");
  return page;
}
