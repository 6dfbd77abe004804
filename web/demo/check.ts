/**
 * Drives the demo page in headless Chromium the way a user would: builds and serves it, uses the
 * sample, trains N steps, samples text, downloads the checkpoint, and tries the bad inputs (empty
 * text, a file over the budget, a binary file, a non-UTF-8 file, a browser without WebGPU). Returns
 * what it saw; `tests/web_demo_test.ts` asserts on it, and run directly it also saves a screenshot
 * and the page's state:
 *
 *   deno run -A web/demo/check.ts --steps 40 --out docs/   # docs/demo.png, docs/demo.json
 * @module
 */
import { parseArgs } from "node:util";
import { launchChromium, type Page } from "../../tests/browser/chromium.ts";
import { buildDemo, DIST, serveStatic } from "../build.ts";

/** What the check saw. */
export interface DemoCheck {
  /** The adapter line the page shows. */
  adapter: string;
  /** Training loss of every step. */
  losses: number[];
  /** Validation (step, loss) pairs. */
  val: [number, number][];
  /** Tokens per second at the end. */
  tokensPerSec: number;
  /** Device memory at the end (live, peak, estimate). */
  memory: { live: number; peak: number; estimate: number };
  /** The generated sample (prompt included). */
  sample: string;
  /** Bytes of the downloaded checkpoint, and its first bytes' header JSON metadata. */
  checkpoint: { bytes: number; metadata: Record<string, string>; file: Uint8Array };
  /** The message each bad input produced on the page. */
  badInputs: Record<string, string>;
  /** The page's message on a browser without WebGPU. */
  noWebGpu: string;
  /** Errors that reached the window (should be 0) and uncaught exceptions seen over DevTools. */
  uncaught: number;
  /** A PNG of the page after training. */
  screenshot: Uint8Array;
  /** Seconds of training, as the page saw it. */
  seconds: number;
}

interface PageState {
  phase: string;
  adapter: string;
  losses: number[];
  val: [number, number][];
  tokensPerSec: number;
  memory: DemoCheck["memory"];
  sample: string;
  message: string;
  uncaught: number;
}

const read = (page: Page) => page.evaluate<PageState>("JSON.parse(JSON.stringify(window.demo))");

/** Sets a file input to a File made in the page from `bytes` (given as base64), firing `change`. */
async function dropFile(page: Page, name: string, make: string): Promise<void> {
  await page.evaluate(`(() => {
    const input = document.getElementById("file");
    const dt = new DataTransfer();
    dt.items.add(new File([${make}], ${JSON.stringify(name)}));
    input.files = dt.files;
    input.dispatchEvent(new Event("change"));
  })()`);
}

async function messageAfter(page: Page, act: () => Promise<void>): Promise<string> {
  await page.evaluate(`window.demo.message = ""`);
  await act();
  return await page.waitFor<string>("window.demo.message", 30_000);
}

/** Runs the whole check with `steps` training steps of `batch` sequences. */
export async function checkDemo(steps: number, batch = 8): Promise<DemoCheck> {
  await buildDemo();
  const server = serveStatic(DIST, 0);
  const url = `http://127.0.0.1:${server.addr.port}/`;
  const browser = await launchChromium();
  const noGpu = await launchChromium({ webgpu: false });
  try {
    const page = browser.page;
    await page.setViewport(900, 1250);
    // Downloads land in a folder of our own (the checkpoint is read back below).
    const downloads = await Deno.makeTempDir({ prefix: "sltrain-demo-dl-" });
    await page.send("Browser.setDownloadBehavior", { behavior: "allow", downloadPath: downloads });
    await page.goto(url);
    await page.waitFor(`window.demo.phase !== "starting"`, 60_000);
    const badInputs: Record<string, string> = {};
    badInputs["empty text"] = await messageAfter(
      page,
      () =>
        page.evaluate(
          `document.getElementById("text").value = ""; document.getElementById("train").click()`,
        ),
    );
    badInputs["a file over the budget (40 MB)"] = await messageAfter(
      page,
      () => dropFile(page, "huge.txt", "new Uint8Array(40 * 1024 * 1024).fill(97)"),
    );
    badInputs["a binary file"] = await messageAfter(
      page,
      () => dropFile(page, "model.bin", "new Uint8Array([0x50, 0x4b, 3, 4, 0, 0, 7, 9])"),
    );
    badInputs["a non-UTF-8 file"] = await messageAfter(
      page,
      () => dropFile(page, "latin1.txt", "new Uint8Array([0x63, 0x61, 0x66, 0xe9, 0x20, 0xe0])"),
    );
    badInputs["text too short for one window"] = await messageAfter(
      page,
      () =>
        page.evaluate(
          `document.getElementById("text").value = "Hi."; document.getElementById("train").click()`,
        ),
    );
    badInputs["steps 0"] = await messageAfter(
      page,
      () =>
        page.evaluate(`document.getElementById("text").value = "x".repeat(5000);
        document.getElementById("steps").value = "0"; document.getElementById("train").click()`),
    );

    await messageAfter(page, () => page.evaluate(`document.getElementById("use-sample").click()`));
    await page.evaluate(`document.getElementById("steps").value = "${steps}";
      document.getElementById("batch").value = "${batch}"`);
    const t0 = performance.now();
    await page.evaluate(`document.getElementById("train").click()`);
    await page.waitFor(
      `window.demo.phase === "done" || window.demo.phase === "stopped"`,
      1_800_000,
      500,
    );
    const seconds = (performance.now() - t0) / 1000;
    await page.evaluate(`document.getElementById("sample").click()`);
    await page.waitFor(`window.demo.sample.length > 40`, 120_000);
    await page.evaluate(`document.getElementById("download").click()`);
    const file = await waitForFile(`${downloads}/checkpoint.safetensors`, 60_000);
    const state = await read(page);
    const screenshot = await page.screenshot();

    await noGpu.page.goto(url);
    const noWebGpu = await noGpu.page.waitFor<string>(
      `window.demo.phase === "unavailable" && window.demo.message`,
      30_000,
    );
    const exceptions = [...page.console, ...noGpu.page.console].filter((l) =>
      l.type === "exception"
    );
    await Deno.remove(downloads, { recursive: true });
    return {
      adapter: state.adapter,
      losses: state.losses,
      val: state.val,
      tokensPerSec: state.tokensPerSec,
      memory: state.memory,
      sample: state.sample,
      checkpoint: { bytes: file.byteLength, metadata: headerMetadata(file), file },
      badInputs,
      noWebGpu,
      uncaught: state.uncaught + exceptions.length,
      screenshot,
      seconds,
    };
  } finally {
    await browser.close();
    await noGpu.close();
    await server.shutdown();
  }
}

async function waitForFile(path: string, timeoutMs: number): Promise<Uint8Array> {
  const until = Date.now() + timeoutMs;
  while (true) {
    try {
      const bytes = await Deno.readFile(path);
      if (bytes.byteLength > 8) return bytes;
    } catch { /* not there yet */ }
    if (Date.now() > until) throw new Error(`no download at ${path} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function headerMetadata(bytes: Uint8Array): Record<string, string> {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))).__metadata__;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      steps: { type: "string", default: "40" },
      batch: { type: "string", default: "8" },
      out: { type: "string" },
    },
  });
  const r = await checkDemo(Number(values.steps), Number(values.batch));
  const { screenshot, checkpoint, ...rest } = r;
  const summary = {
    ...rest,
    checkpoint: { bytes: checkpoint.bytes, step: checkpoint.metadata.step },
  };
  console.log(JSON.stringify(summary, null, 2));
  if (values.out) {
    await Deno.mkdir(values.out, { recursive: true });
    await Deno.writeFile(`${values.out}/demo.png`, screenshot);
    await Deno.writeTextFile(`${values.out}/demo.json`, JSON.stringify(summary, null, 2) + "\n");
    console.log(`wrote ${values.out}/demo.png and demo.json`);
  }
}
