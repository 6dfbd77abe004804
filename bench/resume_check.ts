/**
 * Resume at scale, as a user runs it: for each method, `train.ts` trains 4 steps uninterrupted
 * (checkpointing at step 2 and at the end); a second run with the same flags is killed with
 * SIGKILL as soon as its step-2 checkpoint exists and then `--resume`d to step 4. Its final
 * checkpoint must equal the uninterrupted run's byte for byte in every tensor (parameters,
 * optimizer state, data position). Prints one row per method with the times.
 *
 * Usage: `deno run -A bench/resume_check.ts [--model 350m] [--methods full,lowrank,sltrain,relora,galore]
 *   [--seq 64] [--dir DIR] [-- more train.ts flags, e.g. --dtype bf16 --optimizer adamw8bit]`
 * @module
 */
import { parseArgs } from "node:util";
import { openSafetensors } from "../cli/safetensors.ts";

const dashdash = Deno.args.indexOf("--");
const own = dashdash < 0 ? Deno.args : Deno.args.slice(0, dashdash);
const extra = dashdash < 0 ? [] : Deno.args.slice(dashdash + 1);
const { values: f } = parseArgs({
  args: own,
  options: {
    model: { type: "string", default: "350m" },
    methods: { type: "string", default: "full,lowrank,sltrain,relora,galore" },
    seq: { type: "string", default: "64" },
    dir: { type: "string" },
  },
});
const root = f.dir ?? await Deno.makeTempDir({ prefix: "sltrain-resume-" });
const train = new URL("../train.ts", import.meta.url).pathname;
const CKPT = "checkpoint.safetensors";

function trainArgs(method: string, out: string): string[] {
  return [
    "run",
    "-A",
    train,
    "--model",
    f.model!,
    "--method",
    method,
    "--batch",
    "1",
    "--seq",
    f.seq!,
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--eval-tokens",
    f.seq!,
    "--log-every",
    "1",
    "--out",
    out,
    ...extra,
  ];
}

async function run(args: string[]): Promise<number> {
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "null", stderr: "piped" })
    .output();
  if (out.code !== 0) {
    throw new Error(
      `train.ts exited ${out.code}: ${new TextDecoder().decode(out.stderr).slice(-600)}`,
    );
  }
  return (performance.now() - t0) / 1000;
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

// Starts the run and kills it with SIGKILL once its first checkpoint (step 2) is in place.
async function killedAfterFirstCheckpoint(args: string[], out: string): Promise<number> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), { args, stdout: "null", stderr: "null" }).spawn();
  let done = false;
  const status = child.status.then((s) => (done = true, s));
  while (!done && !(await exists(`${out}/${CKPT}`))) await new Promise((r) => setTimeout(r, 50));
  if (done) throw new Error(`the run ended (${(await status).code}) before it could be killed`);
  child.kill("SIGKILL");
  await status;
  return (performance.now() - t0) / 1000;
}

async function stepOf(path: string): Promise<string> {
  const r = await openSafetensors(path);
  try {
    return r.metadata.step ?? "?";
  } finally {
    r.close();
  }
}

// Every tensor of `a` and `b`, byte for byte, and the metadata (step, data position, history,
// settings); returns the number of tensors compared or throws naming what differs.
async function sameCheckpoints(a: string, b: string): Promise<number> {
  const [ra, rb] = [await openSafetensors(a), await openSafetensors(b)];
  try {
    const keys = new Set([...Object.keys(ra.metadata), ...Object.keys(rb.metadata)]);
    const differ = [...keys].filter((k) => ra.metadata[k] !== rb.metadata[k]);
    const names = [...ra.entries.keys()].sort();
    const namesB = [...rb.entries.keys()].sort();
    if (names.join("\n") !== namesB.join("\n")) throw new Error("the tensor names differ");
    for (const name of names) {
      const chunks: Uint8Array[] = [];
      await ra.read(name, (bytes) => void chunks.push(bytes.slice()));
      let i = 0;
      await rb.read(name, (bytes) => {
        const want = chunks[i++];
        if (!want || want.length !== bytes.length || want.some((v, j) => v !== bytes[j])) {
          throw new Error(`tensor ${name} differs`);
        }
      });
    }
    // The checksum metadata covers the others; name the first value that differs.
    const first = differ.filter((k) => !k.startsWith("sltrain."))
      .map((k) => `${k}: ${firstDifference(ra.metadata[k], rb.metadata[k])}`);
    if (first.length > 0) throw new Error(`tensors equal, metadata differs: ${first.join("; ")}`);
    return names.length;
  } finally {
    ra.close();
    rb.close();
  }
}

// Where two JSON strings first differ (a path and both values), or the raw strings.
function firstDifference(a?: string, b?: string): string {
  const walk = (x: unknown, y: unknown, path: string): string | null => {
    if (JSON.stringify(x) === JSON.stringify(y)) return null;
    if (typeof x !== "object" || typeof y !== "object" || x === null || y === null) {
      return `${path || "/"} ${JSON.stringify(x)} vs ${JSON.stringify(y)}`;
    }
    for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) {
      const d = walk(
        (x as Record<string, unknown>)[k],
        (y as Record<string, unknown>)[k],
        `${path}/${k}`,
      );
      if (d) return d;
    }
    return null;
  };
  try {
    return walk(JSON.parse(a ?? "null"), JSON.parse(b ?? "null"), "") ?? "?";
  } catch {
    return `${a} vs ${b}`;
  }
}

console.log(
  `# ${f.model}, 1×${f.seq} tokens per step, ${extra.join(" ") || "defaults"}; ${root}\n`,
);
console.log(
  "| method | equal to the uninterrupted run | uninterrupted 4 steps s | killed after step-2 checkpoint s | resumed 2 steps s |",
);
console.log("|---|---|---|---|---|");
let failed = false;
for (const method of f.methods!.split(",")) {
  const [a, b] = [`${root}/${method}-straight`, `${root}/${method}-resumed`];
  try {
    const tA = await run(trainArgs(method, a));
    const tKill = await killedAfterFirstCheckpoint(trainArgs(method, b), b);
    const killedAt = await stepOf(`${b}/${CKPT}`);
    const tRes = await run([...trainArgs(method, b), "--resume"]);
    const n = await sameCheckpoints(`${a}/${CKPT}`, `${b}/${CKPT}`);
    console.log(
      `| ${method} | all ${n} and the metadata (killed after step ${killedAt}) | ${
        tA.toFixed(0)
      } | ${tKill.toFixed(0)} | ${tRes.toFixed(0)} |`,
    );
  } catch (e) {
    failed = true;
    console.log(`| ${method} | FAILED: ${e instanceof Error ? e.message : e} | | | |`);
  } finally {
    for (const d of [a, b]) await Deno.remove(d, { recursive: true }).catch(() => {});
  }
}
if (failed) Deno.exit(1);
