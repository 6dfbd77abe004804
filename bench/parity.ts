/**
 * Step-for-step parity with the PyTorch reference: for each method, our trainer (`trainRun`, the
 * CLI's defaults) and `bench/torch_ref/train.py` start from the same weights (our `initLlama`,
 * dumped by bench/torch_dump.ts) and see the same micro-batches; prints both per-step training
 * losses, their relative difference, the final validation losses, and whether the losses agree
 * within 1e-4 relative over the first 10 steps and within 1% through the end.
 *
 * Usage (needs python3-torch and libopenblas0-pthread, see bench/torch_peer.ts):
 *   deno run -A bench/parity.ts [--methods full,sltrain,galore] [--steps 150] [--tight 10]
 *     [--dir DIR] [--torch-args "--dtype float64"] [-- more train.ts flags]
 *
 * DIR (default a temporary folder) keeps each method's dump, `torch.json` and `ours.json`.
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { parseFlags } from "../cli/flags.ts";
import { Progress } from "../cli/progress.ts";
import { trainRun } from "../cli/trainer.ts";
import { resolveRun, writeDump } from "./torch_dump.ts";
import { probeTorch, runPython, torchRefScript } from "./torch_peer.ts";

const dashdash = Deno.args.indexOf("--");
const own = dashdash < 0 ? Deno.args : Deno.args.slice(0, dashdash);
const extra = dashdash < 0 ? [] : Deno.args.slice(dashdash + 1);
const { values: f } = parseArgs({
  args: own,
  options: {
    methods: { type: "string", default: "full,sltrain,galore" },
    steps: { type: "string", default: "150" },
    tight: { type: "string", default: "10" },
    dir: { type: "string" },
    "torch-args": { type: "string", default: "" },
  },
});
const steps = Number(f.steps);
const tight = Math.min(Number(f.tight), steps);
const peer = await probeTorch();
if (!peer.ok) {
  console.error(`parity needs the PyTorch peer: ${peer.why}`);
  Deno.exit(1);
}
const dir = f.dir ?? await Deno.makeTempDir({ prefix: "sltrain-parity-" });
const info = await init();
console.log(`# parity with PyTorch ${peer.version}, ${steps} steps; ${info.description}\n`);

const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
const fmt = (x: number) => x.toFixed(6);
let failed = false;
for (const method of f.methods!.split(",").map((m) => m.trim())) {
  const flags = parseFlags([
    "--method",
    method,
    "--steps",
    String(steps),
    "--eval-every",
    "0",
    "--log-every",
    "1",
    ...extra,
  ]);
  const resolved = await resolveRun(flags);
  const { run } = resolved;
  const sub = `${dir}/${method}`;
  await writeDump(sub, resolved);
  const t0 = performance.now();
  const py = await runPython([
    torchRefScript("train.py"),
    sub,
    "--json",
    `${sub}/torch.json`,
    ...f["torch-args"]!.split(" ").filter((s) => s !== ""),
  ]);
  if (py.code !== 0) throw new Error(`train.py failed for ${method} (exit ${py.code})`);
  const torch = JSON.parse(await Deno.readTextFile(`${sub}/torch.json`));
  const torchSeconds = (performance.now() - t0) / 1000;
  const ours = await trainRun(run, resolved.data, {
    out: null,
    resume: false,
    progress: new Progress(method, steps),
    log: () => {},
    shouldStop: () => false,
  });
  await Deno.writeTextFile(`${sub}/ours.json`, JSON.stringify(ours.history));
  const a = ours.history.train.map(([, l]) => l);
  const b: number[] = torch.losses;
  const diffs = a.map((l, i) => rel(l, b[i]));
  const maxTight = Math.max(...diffs.slice(0, tight));
  const maxAll = Math.max(...diffs);
  const worst = diffs.indexOf(maxAll) + 1;
  console.log(
    `## ${method} (rank ${run.rank}, lr ${run.lr}, warmup ${run.warmup}, ${run.batch}×${run.seq})\n`,
  );
  console.log("| step | ours | PyTorch | rel. diff |");
  console.log("|---|---|---|---|");
  a.forEach((l, i) => {
    const s = i + 1;
    if (s <= tight || s % 10 === 0 || s === steps) {
      console.log(`| ${s} | ${fmt(l)} | ${fmt(b[i])} | ${diffs[i].toExponential(2)} |`);
    }
  });
  const [ov, tv] = [ours.history.val.at(-1)![1], torch.val.at(-1)[1]];
  const okTight = maxTight <= 1e-4;
  const okAll = maxAll <= 1e-2;
  failed ||= !(okTight && okAll);
  console.log(
    `\nmax rel. diff: steps 1-${tight} ${maxTight.toExponential(2)} (${
      okTight ? "ok" : "FAIL"
    } at 1e-4), steps 1-${steps} ${maxAll.toExponential(2)} at step ${worst} (${
      okAll ? "ok" : "FAIL"
    } at 1e-2)`,
  );
  console.log(
    `val loss after ${steps} steps: ours ${fmt(ov)}, PyTorch ${fmt(tv)} (rel. ${
      rel(ov, tv).toExponential(2)
    }); time ours ${ours.seconds.toFixed(0)} s, PyTorch ${torchSeconds.toFixed(0)} s\n`,
  );
}
console.log(`files: ${dir}`);
Deno.exit(failed ? 1 : 0);
