/**
 * Cross-checks export.ts against PyTorch: trains `tiny` for a few steps with each of full, sltrain,
 * lowrank and relora (train.ts, as a user would), exports each (export.ts: f32 hf, bf16 hf, and
 * sltrain factors), writes our logits on a fixed batch, and runs bench/hf_llama_check.py (a
 * re-implementation of transformers' LLaMA forward) on every folder. Also reloads each export here
 * (the `--init` path) and compares logits. Not part of the test suite (needs python3-torch).
 *
 *   deno run -A bench/hf_export_check.ts [--steps 5] [--keep DIR]
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { tensor } from "../core/tensor.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { forward, type LlamaModel, type LlamaParams } from "../models/llama.ts";
import { disposeLoaded, loadModel } from "../cli/generate.ts";
import { loadHf } from "../cli/hf_import.ts";
import { disposeModel } from "../models/llama.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: { steps: { type: "string", default: "5" }, keep: { type: "string" } },
});
const dir = flags.keep ?? await Deno.makeTempDir({ prefix: "sltrain-hfcheck-" });
await Deno.mkdir(dir, { recursive: true });
await init();

async function run(cmd: string, args: string[]): Promise<string> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (r.code !== 0 && cmd === Deno.execPath()) throw new Error(`${args.join(" ")} failed:\n${out}`);
  return out.trim();
}

const text = "The jury said the election was conducted fairly. It rained in Atlanta on Friday, " +
  "and the grand jury commended the city for the manner in which it ran the primary. ";
const ids = byteTokenizer().encode(text.repeat(2)).slice(0, 128);
const tokens = [ids.slice(0, 64), ids.slice(64, 128)];

async function writeLogits(
  name: string,
  m: { model: LlamaModel; params: LlamaParams },
): Promise<{ file: string; values: Float32Array }> {
  const t = tensor(Int32Array.from(tokens.flat()), [2, 64], "i32");
  const l = forward(m.model, m.params, t);
  const values = (await l.data()) as Float32Array;
  l.dispose();
  t.dispose();
  await Deno.writeFile(`${dir}/${name}.bin`, new Uint8Array(values.buffer));
  const file = `${dir}/${name}.json`;
  await Deno.writeTextFile(file, JSON.stringify({ tokens, logits: `${name}.bin` }));
  return { file, values };
}

function relDiff(a: Float32Array, b: Float32Array): number {
  let d = 0, s = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    s = Math.max(s, Math.abs(b[i]));
  }
  return d / s;
}

const py = "/usr/bin/python3";
const check = "bench/hf_llama_check.py";
const lines: string[] = [];
for (const method of ["full", "sltrain", "lowrank", "relora"]) {
  const runDir = `${dir}/run_${method}`;
  await run(Deno.execPath(), [
    "run",
    "-A",
    "train.ts",
    "--model",
    "tiny",
    "--method",
    method,
    "--steps",
    flags.steps!,
    "--batch",
    "4",
    "--seq",
    "64",
    "--eval-every",
    "0",
    "--eval-tokens",
    "512",
    ...(method === "relora" ? ["--relora-every", "2"] : []),
    "--out",
    runDir,
  ]);
  const exports = [
    ["hf", "f32"],
    ["hf", "bf16"],
    ...(method === "sltrain" ? [["sltrain", "f32"]] : []),
  ];
  const loaded = await loadModel(runDir);
  const ours = await writeLogits(`ours_${method}`, loaded);
  disposeLoaded(loaded);
  for (const [format, dtype] of exports) {
    const out = `${dir}/${method}_${format}_${dtype}`;
    await run(Deno.execPath(), [
      "run",
      "-A",
      "export.ts",
      "--checkpoint",
      runDir,
      "--out",
      out,
      "--format",
      format,
      "--dtype",
      dtype,
    ]);
    // Reloaded here (the --init / sample.ts path): as the folder's own method.
    const back = await loadHf(out);
    const again = await writeLogits(`back_${method}_${format}_${dtype}`, back);
    disposeModel({ params: back.params, buffers: back.model.buffers });
    const roundTrip = relDiff(again.values, ours.values);
    // f32 exports must match our checkpoint; bf16 ones are compared on the same rounded weights.
    const ref = dtype === "f32" ? ours.file : again.file;
    const torch = await run(py, [check, out, ref]);
    lines.push(
      `${method.padEnd(8)} ${format.padEnd(8)} ${dtype.padEnd(5)} reload-vs-checkpoint rel ${
        roundTrip.toExponential(2)
      } | ${torch.split("\n").at(-1)}`,
    );
    console.log(lines.at(-1));
  }
}
console.log(`\n${lines.join("\n")}\n(folders in ${dir})`);
