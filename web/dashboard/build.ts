/**
 * Builds the dashboard page's assets into `web/dashboard/dist/` (committed, so a fresh clone
 * serves the page without a build step): `dashboard.js`, the page and uPlot bundled by
 * `deno bundle`, and `dashboard.css`, uPlot's stylesheet and ours. `deno task build:dashboard`
 * runs it after any change under web/dashboard/; a test fails while the committed files are stale.
 * @module
 */

const here = new URL(".", import.meta.url);
const dist = new URL("dist/", here);

/** The two assets as built from the sources now. */
export async function buildAssets(): Promise<{ js: string; css: string }> {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-dashboard-" });
  try {
    const out = `${tmp}/dashboard.js`;
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "browser",
        "--minify",
        "-o",
        out,
        new URL("main.ts", here).pathname,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!r.success) {
      throw new Error(`deno bundle failed: ${new TextDecoder().decode(r.stderr)}`);
    }
    const uplotCss = await Deno.readTextFile(
      new URL("../../node_modules/uplot/dist/uPlot.min.css", here),
    );
    const ours = await Deno.readTextFile(new URL("style.css", here));
    return { js: await Deno.readTextFile(out), css: `${uplotCss}\n${ours}` };
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) {
  const { js, css } = await buildAssets();
  await Deno.mkdir(dist, { recursive: true });
  await Deno.writeTextFile(new URL("dashboard.js", dist), js);
  await Deno.writeTextFile(new URL("dashboard.css", dist), css);
  console.log(`web/dashboard/dist: dashboard.js ${js.length} B, dashboard.css ${css.length} B`);
}
