/**
 * The same training in Deno (wgpu) and in Chromium (Dawn), from one seed: tiny full-rank and
 * SLTrain, N steps each, the per-step losses side by side (largest relative difference) and
 * tokens/s in each.
 *
 *   deno run -A bench/browser_vs_deno.ts [--steps 20] [--methods full,sltrain] [--swiftshader]
 * @module
 */
import { parseArgs } from "node:util";
import { initGpu } from "../cli/gpu.ts";
import { REPORT_PRELUDE, runInChromium } from "../tests/browser/page.ts";
import { type SameRun, sameRun } from "./browser_vs_deno_core.ts";

const { values: f } = parseArgs({
  options: {
    steps: { type: "string", default: "20" },
    methods: { type: "string", default: "full,sltrain" },
    swiftshader: { type: "boolean", default: true },
  },
});
const steps = Number(f.steps);
const methods = f.methods!.split(",");
const ROOT = new URL("../", import.meta.url);

const info = await initGpu();
const deno: Record<string, SameRun> = {};
for (const m of methods) deno[m] = await sameRun(m, steps);

const browser: Record<string, SameRun> = {};
const { version } = await runInChromium(
  `import { init } from "${new URL("mod.ts", ROOT).href}";
import { sameRun } from "${new URL("bench/browser_vs_deno_core.ts", ROOT).href}";
${REPORT_PRELUDE}
await init();
for (const m of ${
    JSON.stringify(methods)
  }) await report(JSON.stringify([m, await sameRun(m, ${steps})]));
await done();
`,
  (line) => {
    const [m, r] = JSON.parse(line) as [string, SameRun];
    browser[m] = r;
  },
  { adapter: f.swiftshader ? "swiftshader" : "system" },
);

console.log(`# tiny, ${steps} steps, one seed: Deno (${info.description}) vs ${version}\n`);
console.log(
  "| method | max relative loss difference | at step | Deno tokens/s | Chromium tokens/s |",
);
console.log("|---|---|---|---|---|");
for (const m of methods) {
  const [a, b] = [deno[m], browser[m]];
  let worst = 0, at = 0;
  a.losses.forEach((l, i) => {
    const d = Math.abs(l - b.losses[i]) / Math.abs(l);
    if (d > worst) [worst, at] = [d, i + 1];
  });
  console.log(
    `| ${m} | ${worst.toExponential(2)} | ${at} | ${a.tokensPerSec.toFixed(0)} | ${
      b.tokensPerSec.toFixed(0)
    } |`,
  );
}
console.log(`\nlosses (Deno / Chromium):`);
for (const m of methods) {
  console.log(
    `${m}: ${
      deno[m].losses.map((l, i) => `${l.toFixed(6)}/${browser[m].losses[i].toFixed(6)}`).join(" ")
    }`,
  );
}
