/**
 * The dashboard's figures, each measured in headless Chromium (tests/browser/chromium.ts):
 *
 * - `latency`: the delay from a log line being written to the page drawing it. (a) A run folder
 *   served by the dashboard server (as `deno task dashboard` serves it), a line appended every
 *   `--every` ms; (b) a tiny run with `train.ts --dashboard 0 --log-every 1`, each train record
 *   against its own time stamp (taken right before the line is written). Median, p90 and max of
 *   (time the page drew the step) − (time the line was written), in ms; one clock.
 * - `overhead`: tokens/s of the same tiny run without `--dashboard`, with it, and with it and a
 *   page connected for the whole run (Chromium draws on the same CPU), in a rotating order
 *   `--reps` times; tokens/s = training tokens / Σ stepSeconds of its log (evaluations and
 *   checkpoints excluded). Medians, and their ratios to the run without. Since tokens/s on a
 *   shared machine moves more than the effect, also what the dashboard itself uses: the CPU time
 *   of its worker thread as a share of the training process's (Linux /proc), and the time the
 *   page spends rendering as a share of the run's wall time.
 * - `screenshot OUT.png FOLDER...`: the page over those run folders, e.g. the docs' comparison.
 * - `gradnorm`: what the train records' gradient norm costs a step: full-rank `tiny` and `small`
 *   steps (4×64 tokens, forward, backward, AdamW, one read) with and without the optimizer hook
 *   that adds up the gradients' squares, alternated `--reps` times in one process; medians.
 *
 * Usage: `DENO_WEBGPU_BACKEND=vulkan deno run -A bench/dashboard.ts latency [--lines 40]
 *   [--every 250] [--steps 40]`, `... overhead [--reps 5] [--steps 60]`,
 *   `... screenshot docs/dashboard.png runs/compare-…`
 * @module
 */
import { parseArgs } from "node:util";
import { launchChromium, type Page } from "../tests/browser/chromium.ts";
import { startDashboard } from "../cli/dashboard_server.ts";
import { readLog } from "../cli/runlog.ts";
import { initGpu } from "../cli/gpu.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { withVocab } from "../models/config.ts";
import { loadConfig } from "../cli/load_config.ts";
import { initLlama, type LlamaParams, loss } from "../models/llama.ts";
import { addSumOfSquares, applyUpdates, type GradientTransformation } from "../optim/mod.ts";
import { buildOptimizer, linearMethod } from "../cli/run_config.ts";
import { toyRun } from "../tests/fixtures.ts";

const ROOT = new URL("../", import.meta.url).pathname;

const { values: opts, positionals } = parseArgs({
  args: Deno.args,
  options: {
    lines: { type: "string", default: "40" },
    every: { type: "string", default: "250" },
    steps: { type: "string" },
    reps: { type: "string", default: "5" },
    width: { type: "string", default: "1400" },
    height: { type: "string", default: "1150" },
  },
  allowPositionals: true,
});

function stats(ms: number[]): string {
  const s = ms.slice().sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  return `median ${q(0.5).toFixed(0)} ms, p90 ${q(0.9).toFixed(0)} ms, max ${
    s.at(-1)!.toFixed(0)
  } ms (n = ${s.length})`;
}

const median = (v: number[]) => {
  const s = v.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Each render of the page: when, and the last step it drew per run. */
const renders = (page: Page) =>
  page.evaluate<{ at: number; steps: Record<string, number> }[]>(
    "globalThis.sltrainDashboard.renders",
  );

/** For each (step, written at), the time the page first drew it, minus the time it was written. */
function delays(
  log: { at: number; steps: Record<string, number> }[],
  written: [number, number][],
): number[] {
  return written.flatMap(([step, at]) => {
    const r = log.find((r) => Math.max(0, ...Object.values(r.steps)) >= step);
    return r ? [r.at - at] : [];
  });
}

/** train.ts as a child, with its stderr kept and its dashboard URL (if any) awaited. */
function train(args: string[]): { child: Deno.ChildProcess; url: Promise<string | null> } {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}train.ts`, ...args],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const url = (async () => {
    let text = "";
    let found: string | null = null;
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      found ??= /dashboard: (http:\/\/\S+\/)/.exec(text)?.[1] ?? null;
      if (found) break;
    }
    return found;
  })();
  return { child, url };
}

const tinyRun = (out: string, steps: number, logEvery: number) => [
  ...["--steps", String(steps), "--batch", "4", "--seq", "64", "--log-every", String(logEvery)],
  ...["--eval-every", "0", "--eval-tokens", "256", "--out", out],
];

async function latency(): Promise<void> {
  const lines = Number(opts.lines), every = Number(opts.every);
  const browser = await launchChromium();
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-bench-dash-" });
  try {
    // (a) Lines appended to a log the server follows.
    await Deno.mkdir(`${tmp}/a`);
    const d = await startDashboard({ roots: [`${tmp}/a`], port: 0, reportEmpty: false });
    await browser.page.goto(d.url);
    await browser.page.waitFor("globalThis.sltrainDashboard?.status === 'live'", 30_000);
    const written: [number, number][] = [];
    for (let step = 1; step <= lines; step++) {
      const rec = { kind: "train", step, loss: 5 / step, time: new Date().toISOString() };
      written.push([step, Date.now()]);
      await Deno.writeTextFile(`${tmp}/a/log.jsonl`, JSON.stringify(rec) + "\n", { append: true });
      await new Promise((r) => setTimeout(r, every));
    }
    await new Promise((r) => setTimeout(r, 1000));
    console.log(
      `dashboard server (poll 100 ms), a line every ${every} ms: ${
        stats(delays(await renders(browser.page), written))
      }`,
    );
    await d.close();

    // (b) A tiny run with --dashboard: each train record against its own time stamp.
    const steps = Number(opts.steps ?? 40);
    const { child, url } = train([...tinyRun(`${tmp}/b`, steps, 1), "--dashboard", "0"]);
    const page = await url;
    if (!page) throw new Error("train.ts printed no dashboard address");
    await browser.page.goto(page);
    const status = await child.status;
    if (!status.success) throw new Error(`train.ts failed (exit ${status.code})`);
    const { records } = await readLog(`${tmp}/b/log.jsonl`);
    const stamped = records.filter((r) => r.kind === "train" && typeof r.time === "string").map((
      r,
    ) => [r.step, Date.parse(r.time as string)] as [number, number]);
    // Steps logged before the page connected arrive with its first snapshot: left out.
    const log = await renders(browser.page);
    const connected = log[0]?.at ?? Infinity;
    console.log(
      `train.ts --dashboard (worker, poll 100 ms), tiny, --log-every 1: ${
        stats(delays(log, stamped.filter(([, at]) => at > connected)))
      }`,
    );
  } finally {
    await browser.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

/** Training tokens per second of a finished run's log (evaluations and checkpoints excluded). */
async function tokensPerSec(dir: string): Promise<number> {
  const train = (await readLog(`${dir}/log.jsonl`)).records.filter((r) => r.kind === "train");
  const seconds = train.reduce((s, r) => s + (r.stepSeconds as number), 0);
  return (train.at(-1)!.trainTokens as number) / seconds;
}

/** The conditions `overhead` compares. */
const CONDITIONS = ["without", "--dashboard", "--dashboard + page"] as const;

/**
 * CPU seconds of each thread of a running process so far, by thread id (Linux /proc; a thread
 * that has ended keeps its last reading in `into`).
 */
function readThreads(pid: number, into: Map<string, { name: string; seconds: number }>): void {
  try {
    for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        const stat = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/stat`);
        const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        into.set(t.name, { name, seconds: (Number(f[11]) + Number(f[12])) / 100 });
      } catch { /* the thread ended */ }
    }
  } catch { /* the process ended */ }
}

async function overhead(): Promise<void> {
  const reps = Number(opts.reps), steps = Number(opts.steps ?? 60);
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-bench-dash-" });
  const tps = new Map<string, number[]>(CONDITIONS.map((c) => [c, []]));
  const workerShare: number[] = [], pageShare: number[] = [];
  const browser = await launchChromium();
  try {
    for (let i = 0; i < reps; i++) {
      // Each repetition in another order, so that drift on a shared machine hits all alike.
      const order = CONDITIONS.map((_, k) => CONDITIONS[(k + i) % CONDITIONS.length]);
      for (const c of order) {
        const out = `${tmp}/${i}-${CONDITIONS.indexOf(c)}`;
        const dash = c === "without" ? [] : ["--dashboard", "0"];
        const { child, url } = train([...tinyRun(out, steps, 5), ...dash]);
        const threads = new Map<string, { name: string; seconds: number }>();
        let running = true;
        const sampling = (async () => {
          while (running) {
            readThreads(child.pid, threads);
            await new Promise((r) => setTimeout(r, 100));
          }
        })();
        const t0 = performance.now();
        const page = await url;
        if (c === "--dashboard + page") {
          if (!page) throw new Error("train.ts printed no dashboard address");
          await browser.page.goto(page);
        }
        const status = await child.status;
        running = false;
        await sampling;
        const wall = (performance.now() - t0) / 1000;
        if (!status.success) throw new Error(`train.ts failed (exit ${status.code})`);
        const v = await tokensPerSec(out);
        tps.get(c)!.push(v);
        // The dashboard's thread is the process's only worker ("worker-1").
        const cpu = [...threads.values()];
        const total = cpu.reduce((s, t) => s + t.seconds, 0);
        const worker = cpu.filter((t) => t.name.startsWith("worker-")).reduce(
          (s, t) => s + t.seconds,
          0,
        );
        let note = `process CPU ${total.toFixed(1)} s`;
        if (c !== "without") {
          workerShare.push(worker / total);
          note += `, dashboard thread ${worker.toFixed(2)} s (${
            (100 * worker / total).toFixed(2)
          }%)`;
        }
        if (c === "--dashboard + page") {
          const ms = await browser.page.evaluate<number>("globalThis.sltrainDashboard.renderMs");
          pageShare.push(ms / 1000 / wall);
          note += `, page renders ${(ms / 1000).toFixed(2)} s of ${wall.toFixed(0)} s`;
        }
        console.log(`rep ${i + 1}: ${c}: ${v.toFixed(0)} tok/s; ${note}`);
        await browser.page.goto("about:blank");
      }
    }
    const base = median(tps.get("without")!);
    console.log(`tiny, batch 4 × seq 64, ${steps} steps, --log-every 5, medians of ${reps}:`);
    for (const [c, v] of tps) {
      console.log(`  ${c}: ${median(v).toFixed(0)} tok/s (${(median(v) / base).toFixed(3)}×)`);
    }
    console.log(
      `  the dashboard thread's share of the training process's CPU time: ${
        (100 * median(workerShare)).toFixed(2)
      }%; the page's renders: ${(100 * median(pageShare)).toFixed(2)}% of the wall time`,
    );
  } finally {
    await browser.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

async function screenshot(out: string, folders: string[]): Promise<void> {
  const d = await startDashboard({ roots: folders, port: 0 });
  const browser = await launchChromium();
  try {
    await browser.page.setViewport(Number(opts.width), Number(opts.height));
    await browser.page.goto(d.url);
    await browser.page.waitFor("globalThis.sltrainDashboard?.plotted?.loss > 0", 30_000);
    await new Promise((r) => setTimeout(r, 500));
    await Deno.writeFile(out, await browser.page.screenshot());
    console.log(`${out}: ${d.store.runs.length} runs`);
  } finally {
    await browser.close();
    await d.close();
  }
}

async function gradnorm(): Promise<void> {
  await initGpu();
  const reps = Number(opts.reps);
  for (const name of ["tiny", "small"]) {
    const model = withVocab(await loadConfig(name), 256);
    const run = { ...toyRun({ method: "full", model, batch: 4, seq: 64, steps: 1000 }) };
    const m = initLlama(model, linearMethod(run), 1);
    let params: LlamaParams = m.params;
    let acc = zeros([1]);
    const plain = buildOptimizer(run, params);
    const hooked = buildOptimizer(run, params, 0, {
      onGradients: (g) => addSumOfSquares(g, acc),
    });
    let state = plain.init(params);
    const ids = Int32Array.from({ length: 4 * 64 }, (_, i) => (i * 7919) % 256);
    const step = async (opt: GradientTransformation) => {
      const inputs = tensor(ids, [4, 64], "i32");
      const t0 = performance.now();
      const { value, grads } = valueAndGrad((p: LlamaParams) =>
        loss(m, p, { inputs, targets: inputs })
      )(params);
      const r = await opt.update(grads, state, params);
      state = r.state;
      params = applyUpdates(params, r.updates);
      await readAll([value, acc]);
      tree.dispose([value, inputs]);
      return performance.now() - t0;
    };
    await step(plain);
    await step(hooked);
    const times = { plain: [] as number[], hooked: [] as number[] };
    for (let i = 0; i < reps; i++) {
      // Alternating order: drift on a shared machine hits both alike.
      for (const k of i % 2 ? ["hooked", "plain"] as const : ["plain", "hooked"] as const) {
        acc.dispose();
        acc = zeros([1]);
        times[k].push(await step(k === "plain" ? plain : hooked));
      }
    }
    const [a, b] = [median(times.plain), median(times.hooked)];
    console.log(
      `${name}, full, 4×64 tokens: step ${a.toFixed(1)} ms, with the gradient norm ` +
        `${b.toFixed(1)} ms (${(b / a).toFixed(3)}×), median of ${reps}`,
    );
    tree.dispose([params, m.buffers, state, acc]);
  }
}

const [what, ...rest] = positionals;
if (what === "latency") await latency();
else if (what === "gradnorm") await gradnorm();
else if (what === "overhead") await overhead();
else if (what === "screenshot" && rest.length >= 2) await screenshot(rest[0], rest.slice(1));
else {
  console.error(
    "usage: bench/dashboard.ts latency | overhead | gradnorm | screenshot OUT.png FOLDER...",
  );
  Deno.exit(2);
}
