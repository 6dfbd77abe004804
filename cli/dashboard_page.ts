/**
 * The dashboard page as one HTML document: the built script and stylesheet
 * (`web/dashboard/dist/`, see `web/dashboard/build.ts`) inlined, so the page needs no other
 * request; with data embedded, the standalone `dashboard.html` a run folder keeps, which opens
 * from disk with no server.
 * @module
 */
import type { Snapshot } from "../web/dashboard/model.ts";
import { RunStore } from "./dashboard_runs.ts";
import { writeTextAtomic } from "./write_atomic.ts";

/** The page's built script and stylesheet. */
export interface PageAssets {
  js: string;
  css: string;
}

const DIST = new URL("../web/dashboard/dist/", import.meta.url);

let cached: Promise<PageAssets> | null = null;

/** Reads the built assets once per process; throws naming the missing file and the fix. */
export function pageAssets(): Promise<PageAssets> {
  cached ??= (async () => {
    const read = (name: string) =>
      Deno.readTextFile(new URL(name, DIST)).catch((e) => {
        throw new Error(
          `the dashboard page's ${new URL(name, DIST).pathname} cannot be read (${e.message}): ` +
            "run `deno task build:dashboard`",
        );
      });
    return { js: await read("dashboard.js"), css: await read("dashboard.css") };
  })();
  cached.catch(() => cached = null);
  return cached;
}

const escapeHtml = (s: string) => s.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * The page: live (it connects to its server's `api/stream`) or, with `data`, standalone.
 * Text that could close its script or style element early is escaped.
 */
export function dashboardHtml(
  assets: PageAssets,
  title: string,
  data?: Snapshot & { savedAt: string; source: string },
): string {
  const json = data === undefined
    ? ""
    : `<script id="sltrain-data" type="application/json">${
      JSON.stringify(data).replace(/</g, "\\u003c")
    }</script>\n`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${assets.css.replace(/<\/style/gi, "<\\/style")}</style>
</head>
<body>
${json}<script type="module">${assets.js.replace(/<\/script/gi, "<\\/script")}</script>
</body>
</html>
`;
}

/**
 * Writes `path`, a standalone dashboard of the runs at or under `dirs` as their files stand now,
 * atomically (a browser reloading it never sees half a page).
 */
export async function writeStandaloneDashboard(
  path: string,
  dirs: readonly string[],
  title: string,
): Promise<void> {
  const store = new RunStore(dirs, title);
  await store.scan();
  await store.poll();
  const html = dashboardHtml(await pageAssets(), title, {
    ...store.snapshot(),
    savedAt: new Date().toISOString(),
    source: dirs.join(" "),
  });
  await writeTextAtomic(path, html);
}
