/**
 * Step-for-step parity with the PyTorch reference for every method and option
 * (bench/parity_cases.ts): our trainer (the CLI's defaults plus each case's flags, warmup 2) and
 * `bench/torch_ref` (written from the methods' definitions) start from the same weights (our
 * `initLlama`, dumped by bench/torch_dump.ts) and see the same micro-batches. Prints one row per
 * case: the largest relative loss difference over steps 1..tight (criterion 1e-4) and over all
 * steps (1e-2), and the largest per-tensor relative difference of the final weights; then the
 * cases the reference cannot replay yet.
 *
 * Usage (needs python3-torch and libopenblas0-pthread, see bench/torch_peer.ts):
 *   deno run -A bench/parity.ts [--cases full,galore+8bit,...] [--steps 150] [--tight 10]
 *     [--dir DIR] [-- more train.ts flags, e.g. --model small]
 *
 * DIR (default a temporary folder) keeps each case's dump, `torch.json`, `torch.safetensors` and
 * our run (`ours/`).
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { PARITY_CASES, PARITY_MISSING, runParity } from "./parity_cases.ts";
import { probeTorch } from "./torch_peer.ts";

const dashdash = Deno.args.indexOf("--");
const own = dashdash < 0 ? Deno.args : Deno.args.slice(0, dashdash);
const extra = dashdash < 0 ? [] : Deno.args.slice(dashdash + 1);
const { values: f } = parseArgs({
  args: own,
  options: {
    cases: { type: "string", default: Object.keys(PARITY_CASES).join(",") },
    steps: { type: "string", default: "150" },
    tight: { type: "string", default: "10" },
    dir: { type: "string" },
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
console.log(`flags: --warmup 2 ${extra.join(" ")}\n`);
const results = await runParity(f.cases!.split(",").map((c) => c.trim()), {
  steps,
  tight,
  dir,
  flags: extra,
});
const e = (x: number) => x.toExponential(2);
console.log(
  `| case | loss, steps 1-${tight} (≤ 1e-4) | loss, steps 1-${steps} (≤ 1e-2) | final weights | ok |`,
);
console.log("|---|---|---|---|---|");
let failed = false;
for (const r of results) {
  const ok = r.tight <= 1e-4 && r.all <= 1e-2;
  failed ||= !ok;
  console.log(
    `| ${r.name} | ${e(r.tight)} | ${e(r.all)} (step ${r.worst}) | ${
      e(r.weights)
    } (${r.worstTensor}) | ${ok ? "ok" : "FAIL"} |`,
  );
}
console.log("\nnot replayed by the reference yet:");
for (const [name, why] of Object.entries(PARITY_MISSING)) console.log(`- ${name}: ${why}`);
console.log(`\nfiles: ${dir}`);
Deno.exit(failed ? 1 : 0);
