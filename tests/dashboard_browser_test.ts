/**
 * The dashboard in a real browser (headless Chromium): a tiny run started with `--dashboard 0`
 * shows its points while it trains, and more as it goes; the page asks nothing of any server but
 * its own; the standalone `dashboard.html` the run leaves opens from disk with every point; a log
 * with torn and malformed lines shows the rest and says what it skipped, next to a folder that
 * is not a run. Screenshots go to out/screenshots/.
 */
import assert from "node:assert/strict";
import { launchChromium, type Page } from "./browser/chromium.ts";
import { startDashboard } from "../cli/dashboard_server.ts";
import { readLog } from "../cli/runlog.ts";

const SHOTS = new URL("../out/screenshots/", import.meta.url);
const ROOT = new URL("../", import.meta.url).pathname;

async function screenshot(page: Page, name: string): Promise<void> {
  await Deno.mkdir(SHOTS, { recursive: true });
  await Deno.writeFile(new URL(name, SHOTS), await page.screenshot());
}

const plotted = (page: Page) =>
  page.evaluate<Record<string, number>>("globalThis.sltrainDashboard.plotted");

/** The last step the page has drawn (of its only run). */
const LAST_STEP =
  "Math.max(0, ...Object.values(globalThis.sltrainDashboard.renders.at(-1)?.steps ?? {}))";

/** Reads the child's stderr until `re` matches; the rest keeps being read (and kept). */
function watchStderr(
  child: Deno.ChildProcess,
): { text: () => string; match: (re: RegExp) => Promise<RegExpExecArray> } {
  let text = "";
  const waiters: (() => void)[] = [];
  (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      waiters.splice(0).forEach((w) => w());
    }
    waiters.splice(0).forEach((w) => w());
  })();
  let ended = false;
  child.status.then(() => ended = true);
  return {
    text: () => text,
    async match(re) {
      while (true) {
        const m = re.exec(text);
        if (m) return m;
        if (ended) throw new Error(`train.ts ended without printing ${re}:\n${text}`);
        await new Promise<void>((r) => waiters.push(r));
      }
    },
  };
}

Deno.test("dashboard in Chromium: a run with --dashboard shows its points while it trains, then its standalone page shows them all", async () => {
  const out = await Deno.makeTempDir({ prefix: "sltrain-dash-run-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${ROOT}train.ts`,
      ...["--steps", "30", "--batch", "2", "--seq", "32", "--log-every", "1"],
      ...["--eval-every", "10", "--eval-tokens", "128", "--out", `${out}/run`, "--dashboard", "0"],
    ],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = watchStderr(child);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const browser = await launchChromium();
  try {
    const url = (await stderr.match(/dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/))[1];
    const page = browser.page;
    await page.setViewport(1280, 900);
    await page.goto(url);
    await page.waitFor("globalThis.sltrainDashboard?.plotted?.loss > 0", 120_000);
    const first = await plotted(page);
    const firstStep = await page.evaluate<number>(LAST_STEP);
    assert.ok(!exited && firstStep < 30, "the first points showed while the run was training");
    await page.waitFor(`${LAST_STEP} >= ${firstStep + 8}`, 120_000);
    const later = await plotted(page);
    assert.ok(later.loss >= first.loss + 16, `more points: ${first.loss}, then ${later.loss}`);
    for (const k of ["lr", "tokens", "grad", "memory"]) assert.ok(later[k] > 0, `${k} is plotted`);
    assert.equal(await page.evaluate("globalThis.sltrainDashboard.status"), "live");
    await screenshot(page, "dashboard-live.png");
    const resources = await page.evaluate<string[]>(
      "performance.getEntriesByType('resource').map((e) => e.name)",
    );
    for (const r of resources) assert.ok(r.startsWith(url), `the page requested ${r}`);

    assert.equal((await status).code, 0, stderr.text());
    // The run's own page, from disk: every train record (smoothed and raw) and every evaluation.
    const { records } = await readLog(`${out}/run/log.jsonl`);
    const train = records.filter((r) => r.kind === "train").length;
    const evals = records.filter((r) => r.kind === "eval").length;
    await page.goto(`file://${out}/run/dashboard.html`);
    await page.waitFor("globalThis.sltrainDashboard?.plotted?.loss > 0", 30_000);
    assert.equal((await plotted(page)).loss, 2 * train + evals);
    assert.match(await page.evaluate<string>("globalThis.sltrainDashboard.status"), /^saved /);
  } finally {
    await browser.close();
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
    await status;
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("dashboard in Chromium: torn and malformed lines are skipped and counted; a folder that is not a run is named", async () => {
  const root = await Deno.makeTempDir({ prefix: "sltrain-dash-bad-" });
  const rec = (step: number) => JSON.stringify({ kind: "train", step, loss: 4 - step / 10 }) + "\n";
  await Deno.mkdir(`${root}/run`);
  await Deno.mkdir(`${root}/notes`);
  await Deno.writeTextFile(
    `${root}/run/log.jsonl`,
    rec(1) + '{"kind":"train","st\n' + rec(2) + "garbage\n" + rec(3) +
      '{"kind":"train","step":4,"lo',
  );
  const d = await startDashboard({ roots: [`${root}/run`, `${root}/notes`], port: 0 });
  const browser = await launchChromium();
  try {
    const page = browser.page;
    await page.setViewport(1280, 700);
    await page.goto(d.url);
    await page.waitFor("globalThis.sltrainDashboard?.plotted?.loss > 0", 30_000);
    // Three good records, each raw and smoothed.
    assert.equal((await plotted(page)).loss, 6);
    const notices = await page.evaluate<string[]>("globalThis.sltrainDashboard.notices");
    assert.ok(
      notices.some((n) => n.includes("skipped 2 malformed lines and a torn last line")),
      notices.join("\n"),
    );
    assert.ok(notices.some((n) => /notes is not a run folder/.test(n)), notices.join("\n"));
    const text = await page.evaluate<string>("document.body.innerText");
    assert.match(text, /skipped 2 malformed lines and a torn last line/);
    await screenshot(page, "dashboard-bad-input.png");
  } finally {
    await browser.close();
    await d.close();
    await Deno.remove(root, { recursive: true });
  }
});
