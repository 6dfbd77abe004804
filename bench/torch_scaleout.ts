/**
 * Measures the round trip of a run between this engine and PyTorch (`torch/`, issue 20) and prints
 * one table per check:
 *
 * 1. cross-engine resume: a `tiny` run trains 20 steps here with a checkpoint at step 10; PyTorch
 *    (one process) continues from it; its losses of steps 11–20 against ours (full-rank, SLTrain,
 *    SLTrain with 8-bit AdamW, SLTrain with bf16 weights);
 * 2. `torchrun --nproc_per_node 2` (gloo, CPU) against one process on the same global batch,
 *    steps 11–20 of the SLTrain run (and of the bf16 one);
 * 3. and back: the checkpoint PyTorch wrote at step 20 resumes in `train.ts --resume` to step 30;
 *    its losses against PyTorch's own continuation to step 30;
 * 4. the official SLTrain layout: `export.ts --format sltrain` → official → ours, byte for byte,
 *    and the official layout's forward in PyTorch against our logits;
 * 5. bad input: another method, a checkpoint whose tensors are not its run's dtype, another
 *    format version, a world size that does not divide the batch, shards of another tokenizer →
 *    exit 2 with a named error, nothing written.
 *
 * Every PyTorch process runs one thread: these are equalities, not timings, and on a shared
 * 2-core machine one thread per process is the fastest way to them.
 *
 * Usage (needs python3-torch and libopenblas0-pthread, see bench/torch_peer.ts, and `deno install`
 * in bench/ once, for the Brown corpus):
 *   deno run -A bench/torch_scaleout.ts [--dir DIR]
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { tensor } from "../core/tensor.ts";
import { loadBrown } from "../data/brown.ts";
import { forward } from "../models/llama.ts";
import { disposeLoaded, loadModel } from "../cli/generate.ts";
import { probeTorch, runPython } from "./torch_peer.ts";

const { values: f } = parseArgs({ args: Deno.args, options: { dir: { type: "string" } } });
const dir = f.dir ?? await Deno.makeTempDir({ prefix: "sltrain-scaleout-" });
await Deno.mkdir(dir, { recursive: true });
const peer = await probeTorch();
if (!peer.ok) throw new Error(`needs the PyTorch peer: ${peer.why}`);
const root = new URL("..", import.meta.url).pathname;
const PYENV = { PYTHONPATH: `${root}torch` };

async function deno(args: string[]): Promise<void> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (r.code !== 0) {
    throw new Error(
      `${args.join(" ")} failed:\n${new TextDecoder().decode(r.stderr).slice(-3000)}`,
    );
  }
}

async function py(args: string[]): Promise<{ code: number; stderr: string }> {
  return await runPython(args, { stderr: "piped", env: PYENV });
}

async function pyOk(args: string[]): Promise<void> {
  const r = await py(args);
  if (r.code !== 0) throw new Error(`python ${args.join(" ")} failed:\n${r.stderr.slice(-3000)}`);
}

/** `python -m sltrain_torch.train` continuing `run` into `out`. */
const cont = (run: string, out: string, ...extra: string[]) => [
  "-m",
  "sltrain_torch.train",
  "--run",
  run,
  "--data",
  shards,
  "--out",
  out,
  ...extra,
];

/** `python -m torch.distributed.run` with `n` processes. torch 1.13's torchrun on Python 3.11
 * cannot parse its own default "0" of --redirects and --tee: "9:0" says the same. */
const torchrun = (n: number) => [
  "-m",
  "torch.distributed.run",
  "--redirects",
  "9:0",
  "--tee",
  "9:0",
  "--nproc_per_node",
  String(n),
];

async function losses(run: string): Promise<Map<number, number>> {
  const text = await Deno.readTextFile(`${run}/log.jsonl`);
  const recs = text.trim().split("\n").map((l) => JSON.parse(l));
  return new Map(recs.filter((r) => r.kind === "train").map((r) => [r.step, r.loss]));
}

function maxRel(a: Map<number, number>, b: Map<number, number>, from: number, to: number) {
  let worst = 0;
  for (let s = from; s <= to; s++) {
    if (!a.has(s) || !b.has(s)) throw new Error(`step ${s} missing from a log`);
    worst = Math.max(worst, Math.abs(a.get(s)! - b.get(s)!) / Math.abs(b.get(s)!));
  }
  return worst;
}

const verdict = (x: number, tol: number) => `${x.toExponential(2)} (${x <= tol ? "ok" : "FAIL"})`;
let failed = false;
const check = (x: number, tol: number) => {
  failed ||= !(x <= tol);
  return verdict(x, tol);
};

// Data: the first 120 Brown documents, tokenized into shards by prepare.ts.
const corpus = `${dir}/corpus.jsonl`;
const docs = (await loadBrown()).slice(0, 120);
await Deno.writeTextFile(corpus, docs.map((d) => JSON.stringify({ text: d.text })).join("\n"));
const shards = `${dir}/shards`;
await deno(["prepare.ts", "--data", corpus, "--out", shards, "--shard-tokens", "100000"]);

const FLAGS = ["--data", shards, "--eval-every", "10", "--log-every", "1", "--batch", "4"];
FLAGS.push("--seq", "64", "--keep", "2", "--warmup", "10");
const cases: [string, string[]][] = [
  ["full", ["--method", "full"]],
  ["sltrain", ["--method", "sltrain"]],
  ["sltrain-8bit", ["--method", "sltrain", "--optimizer", "adamw8bit"]],
  ["sltrain-bf16", ["--method", "sltrain", "--dtype", "bf16"]],
];

console.log(`# PyTorch ${peer.version} and this engine: continuing a run both ways\n`);
console.log("## 1. cross-engine resume: ours steps 1-20, PyTorch (1 process) 11-20 from step 10\n");
console.log("| run | max rel. diff, steps 11-20 (tol 1e-4) | val loss at 20: ours / PyTorch |");
console.log("|---|---|---|");
for (const [name, flags] of cases) {
  const ours = `${dir}/${name}`;
  const theirs = `${dir}/${name}-torch`;
  await deno(["train.ts", ...flags, ...FLAGS, "--steps", "20", "--out", ours]);
  const from = `${ours}/checkpoint.step-10.safetensors`;
  await pyOk(cont(from, theirs, "--threads", "1", "--keep", "2"));
  const val = async (run: string) => {
    const text = await Deno.readTextFile(`${run}/log.jsonl`);
    const evals = text.trim().split("\n").map((l) => JSON.parse(l)).filter((r) =>
      r.kind === "eval"
    );
    return evals.at(-1).valLoss.toFixed(6);
  };
  console.log(
    `| ${name} | ${
      check(maxRel(await losses(theirs), await losses(ours), 11, 20), 1e-4)
    } | ${await val(
      ours,
    )} / ${await val(theirs)} |`,
  );
}

console.log("\n## 2. torchrun --nproc_per_node 2 (gloo, CPU) against 1 process, steps 11-20\n");
console.log("| run | max rel. diff | tolerance |");
console.log("|---|---|---|");
// bf16: each process rounds its gradient to bf16 before the f32 average, one rounding more than
// one process makes, hence the looser bound.
for (const [name, tol] of [["sltrain", 1e-5], ["sltrain-bf16", 1e-4]] as const) {
  const two = `${dir}/${name}-torchrun2`;
  await pyOk([
    ...torchrun(2),
    ...cont(`${dir}/${name}/checkpoint.step-10.safetensors`, two, "--threads", "1"),
  ]);
  const d = maxRel(await losses(two), await losses(`${dir}/${name}-torch`), 11, 20);
  console.log(`| ${name} | ${check(d, tol)} | ${tol} |`);
}

console.log("\n## 3. and back: train.ts --resume from PyTorch's step-20 checkpoint, steps 21-30\n");
console.log("| run | max rel. diff, ours vs PyTorch's own continuation (tol 1e-4) |");
console.log("|---|---|");
for (const [name, flags] of cases) {
  const theirs = `${dir}/${name}-torch`;
  const back = `${dir}/${name}-back`;
  await Deno.mkdir(back);
  await Deno.copyFile(`${theirs}/checkpoint.safetensors`, `${back}/checkpoint.safetensors`);
  await Deno.copyFile(`${theirs}/log.jsonl`, `${back}/log.jsonl`);
  await deno(["train.ts", ...flags, ...FLAGS, "--steps", "30", "--out", back, "--resume"]);
  await pyOk(cont(theirs, theirs, "--steps", "30", "--threads", "1"));
  console.log(
    `| ${name} | ${check(maxRel(await losses(back), await losses(theirs), 21, 30), 1e-4)} |`,
  );
}

console.log("\n## 4. official SLTrain layout\n");
const exp = `${dir}/export`;
await deno(["export.ts", "--checkpoint", `${dir}/sltrain`, "--out", exp, "--format", "sltrain"]);
await pyOk(["-m", "sltrain_torch.convert", "to-official", exp, `${dir}/official`]);
await pyOk(["-m", "sltrain_torch.convert", "from-official", `${dir}/official`, `${dir}/export2`]);
const [a, b] = [
  await Deno.readFile(`${exp}/model.safetensors`),
  await Deno.readFile(`${dir}/export2/model.safetensors`),
];
const same = a.length === b.length && a.every((x, i) => x === b[i]);
failed ||= !same;
console.log(`ours -> official -> ours: model.safetensors ${same ? "byte-identical" : "DIFFERS"}`);
await init();
const loaded = await loadModel(`${dir}/sltrain`);
const text = "The jury said the election was conducted fairly. It rained in Atlanta on Friday. ";
const ids = Array.from(new TextEncoder().encode(text.repeat(3))).slice(0, 128);
const tokens = tensor(Int32Array.from(ids), [2, 64], "i32");
const logits = forward(loaded.model, loaded.params, tokens);
await Deno.writeFile(
  `${dir}/logits.bin`,
  new Uint8Array(((await logits.data()) as Float32Array).buffer),
);
logits.dispose();
tokens.dispose();
disposeLoaded(loaded);
const cmp = await runPython([
  "-c",
  `import sys, json, numpy as np, torch
from sltrain_torch.official import load_official
m = load_official(sys.argv[1])
ids = torch.tensor(json.loads(sys.argv[2])).view(2, 64)
ours = torch.from_numpy(np.fromfile(sys.argv[3], dtype="<f4")).view(2, 64, -1)
with torch.no_grad():
    theirs = m.logits(ids)
print(json.dumps([float((theirs - ours).abs().max()), float(ours.abs().max())]))`,
  `${dir}/official`,
  JSON.stringify(ids),
  `${dir}/logits.bin`,
], { env: PYENV });
const [absDiff, scale] = JSON.parse(cmp.stdout);
console.log(
  `official layout's forward (PyTorch) vs our logits: max abs diff ${absDiff.toExponential(2)}, ` +
    `relative to max |logit| ${check(absDiff / scale, 1e-5)} (tol 1e-5)`,
);

console.log("\n## 5. bad input: named errors before any step, nothing written\n");
console.log("| input | exit | error | nothing written |");
console.log("|---|---|---|---|");
const galore = `${dir}/galore`;
await deno(["train.ts", "--method", "galore", ...FLAGS, "--steps", "2", "--out", galore]);
const wrongDtype = `${dir}/wrong-dtype`;
const wrongVersion = `${dir}/wrong-version`;
for (const [folder, edit] of [[wrongDtype, "dtype"], [wrongVersion, "version"]]) {
  await Deno.mkdir(folder);
  await pyOk([
    "-c",
    `import json, sys
from sltrain_torch import safetensors as st
src, dst, edit = sys.argv[1:]
with st.SafetensorsFile(src) as f:
    tensors = [(n, e[0], e[3], f.raw(n)) for n, e in f.entries.items()]
    md = {k: v for k, v in f.metadata.items() if not k.startswith("sltrain.")}
if edit == "dtype":  # f32 tensors under a run that says bf16
    meta = json.loads(md["meta"]); meta["run"]["dtype"] = "bf16"; md["meta"] = json.dumps(meta)
else:
    md["format"] = "sltrain-checkpoint-v99"  # a version from the future
st.write(dst, tensors, md, checksums=True)`,
    `${dir}/sltrain/checkpoint.step-10.safetensors`,
    `${folder}/checkpoint.safetensors`,
    edit,
  ]);
}
const llamaShards = `${dir}/shards-llama`;
await deno([
  "prepare.ts",
  "--data",
  corpus,
  "--tokenizer",
  "llama",
  "--out",
  llamaShards,
]);
const step10 = `${dir}/sltrain/checkpoint.step-10.safetensors`;
const bad: [string, string, string[], number, string][] = [
  ["run of another method (galore)", galore, [], 1, "UnsupportedRunError"],
  ["tensors not of the run's dtype", wrongDtype, [], 1, "UnsupportedRunError"],
  ["another checkpoint version", wrongVersion, [], 1, "FormatError"],
  ["shards of another tokenizer (llama)", step10, ["--data", llamaShards], 1, "DataMismatchError"],
  ["3 processes for a batch of 4", step10, [], 3, "WorldSizeError"],
];
for (const [what, run, extra, procs, want] of bad) {
  const out = `${dir}/refused-${what.replace(/\W+/g, "-")}`;
  const ckpt = run.endsWith(".safetensors") ? run : `${run}/checkpoint.safetensors`;
  const before = String(await Deno.readFile(ckpt));
  const args = cont(run, out, ...extra);
  const r = await py(procs > 1 ? [...torchrun(procs), ...args] : args);
  const error = r.stderr.replaceAll(`${dir}/`, "").match(/sltrain_torch\.train: (\w+): ([^\n]*)/);
  const untouched = !(await Deno.stat(out).catch(() => null)) &&
    String(await Deno.readFile(ckpt)) === before;
  failed ||= r.code === 0 || error?.[1] !== want || !untouched;
  console.log(
    `| ${what} | ${r.code} | ${error ? `${error[1]}: ${error[2]}` : "NONE"} | ${
      untouched ? "yes" : "NO"
    } |`,
  );
}
console.log(`\nfiles: ${dir}`);
Deno.exit(failed ? 1 : 0);
