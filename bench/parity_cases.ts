/**
 * The parity cases (every method and option, each a set of train.ts flags) and their runner: our
 * trainer and the PyTorch reference (`bench/torch_ref/replay_many.py`, one Python process for all
 * cases) start from the same weights and micro-batches; the result of a case is the largest
 * relative loss difference over the first `tight` steps and over all of them, and the largest
 * relative difference of the final weights (per tensor ‖ours − PyTorch‖∞ / ‖PyTorch‖∞). Used by
 * bench/parity.ts (the table) and tests/parity_test.ts (a tiny, fast version).
 * @module
 */
import { parseFlags } from "../cli/flags.ts";
import { loadCheckpoint } from "../cli/checkpoint.ts";
import { openSafetensors } from "../cli/safetensors.ts";
import { Progress } from "../cli/progress.ts";
import { trainRun } from "../cli/trainer.ts";
import { readAll } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { resolveRun, writeDump } from "./torch_dump.ts";
import { runPython, torchRefScript } from "./torch_peer.ts";

/**
 * Every case: a method, or a method with one option (`+` joins several). A short warmup makes the
 * first steps real updates; galore/golore refresh their projectors every 4 steps (a second refresh
 * within 10 steps); refactorization and momentum resets happen every 5.
 */
export const PARITY_CASES: Record<string, string[]> = {
  full: ["--method", "full"],
  "full+8bit": ["--method", "full", "--optimizer", "adamw8bit"],
  "full+bf16": ["--method", "full", "--dtype", "bf16"],
  "full+per-layer": ["--method", "full", "--per-layer"],
  "full+recompute": ["--method", "full", "--recompute"],
  "full+wd+clip": ["--method", "full", "--weight-decay", "0.1", "--clip", "0.5"],
  lowrank: ["--method", "lowrank"],
  relora: ["--method", "relora", "--relora-every", "100000"],
  "lowrank+refactor": ["--method", "lowrank", "--refactor-every", "5", "--recovery-steps", "3"],
  sltrain: ["--method", "sltrain"],
  "sltrain+8bit+wd": ["--method", "sltrain", "--optimizer", "adamw8bit", "--weight-decay", "0.1"],
  "sltrain+refactor": ["--method", "sltrain", "--refactor-every", "5", "--recovery-steps", "3"],
  galore: ["--method", "galore", "--galore-gap", "4", "--weight-decay", "0.1"],
  fira: ["--method", "fira", "--galore-gap", "4"],
  apollo: ["--method", "apollo", "--galore-gap", "4", "--weight-decay", "0.1"],
  "apollo-mini": ["--method", "apollo-mini", "--galore-gap", "4"],
  golore: ["--method", "golore", "--galore-gap", "4", "--golore-rand-ratio", "0.3"],
  loro: ["--method", "loro", "--loro-exact-every", "3", "--weight-decay", "0.1"],
  "loro+refactor": ["--method", "loro", "--refactor-every", "5", "--recovery-steps", "3"],
  spam: [
    "--method",
    "spam",
    "--momentum-reset-every",
    "5",
    "--spam-warmup",
    "3",
    "--spam-threshold",
    "20",
  ],
  "stable-spam": ["--method", "stable-spam", "--momentum-reset-every", "5", "--clip", "1"],
};

/** Cases the reference cannot replay yet, with the reason (reported, never silently skipped). */
export const PARITY_MISSING: Record<string, string> = {
  "relora+merge": "the reference does not replay ReLoRA merges (mergeRelora's re-init)",
  "galore+8bit": "the reference has no 8-bit projected Adam",
};

/** One case's comparison. */
export interface ParityResult {
  /** Case name. */
  name: string;
  /** Our per-step training losses. */
  ours: number[];
  /** PyTorch's. */
  torch: number[];
  /** Largest relative loss difference over steps 1..tight. */
  tight: number;
  /** Largest relative loss difference over all steps, and the step where it occurs. */
  all: number;
  /** Step (1-based) of `all`. */
  worst: number;
  /** Largest per-tensor relative difference of the final weights, and its tensor. */
  weights: number;
  /** Tensor of `weights`. */
  worstTensor: string;
}

/** Options of {@link runParity}. */
export interface ParityOptions {
  /** Steps per case. */
  steps: number;
  /** The tight window (steps 1..tight). */
  tight: number;
  /** Folder for dumps, results and checkpoints. */
  dir: string;
  /** More train.ts flags for every case (e.g. `--model FILE --batch 2 --seq 16`). */
  flags?: string[];
  /** Progress lines of our trainer (default none). */
  quiet?: boolean;
}

const rel = (a: number, b: number) => Math.abs(a - b) / Math.max(Math.abs(b), 1e-30);

async function safetensorsF32(path: string): Promise<Map<string, Float32Array>> {
  const f = await openSafetensors(path);
  const out = new Map<string, Float32Array>();
  try {
    for (const [name, e] of f.entries) {
      const bytes = new Uint8Array(e.end - e.start);
      await f.read(name, (chunk, off) => bytes.set(chunk, off));
      out.set(name, new Float32Array(bytes.buffer));
    }
  } finally {
    f.close();
  }
  return out;
}

/**
 * Runs `names` (keys of {@link PARITY_CASES}) both ways and returns their results, in order. All
 * dumps are written first, so that PyTorch replays every case in one process.
 */
export async function runParity(names: string[], opts: ParityOptions): Promise<ParityResult[]> {
  const common = [
    "--steps",
    String(opts.steps),
    "--warmup",
    "2",
    "--eval-every",
    "0",
    "--log-every",
    "1",
    ...(opts.flags ?? []),
  ];
  const resolved = [];
  for (const name of names) {
    const flags = PARITY_CASES[name];
    if (!flags) throw new Error(`parity: unknown case ${name}`);
    const r = await resolveRun(parseFlags([...common, ...flags]));
    await writeDump(`${opts.dir}/${name}`, r);
    resolved.push(r);
  }
  const py = await runPython([
    torchRefScript("replay_many.py"),
    ...names.map((n) => `${opts.dir}/${n}`),
  ]);
  if (py.code !== 0) throw new Error(`replay_many.py failed (exit ${py.code})`);
  const results: ParityResult[] = [];
  for (const [i, name] of names.entries()) {
    const sub = `${opts.dir}/${name}`;
    const { run, data } = resolved[i];
    await Deno.mkdir(`${sub}/ours`, { recursive: true });
    const ours = await trainRun(run, data, {
      out: `${sub}/ours`,
      resume: false,
      progress: new Progress(name, opts.quiet ? 1e9 : opts.steps),
      log: () => {},
      shouldStop: () => false,
    });
    const torch = JSON.parse(await Deno.readTextFile(`${sub}/torch.json`));
    const a = ours.history.train.map(([, l]) => l);
    const b: number[] = torch.losses;
    const diffs = a.map((l, k) => (k < b.length ? rel(l, b[k]) : Infinity));
    const ck = await loadCheckpoint(`${sub}/ours/checkpoint.safetensors`, { optState: false });
    const theirs = await safetensorsF32(`${sub}/torch.safetensors`);
    const paths = tree.paths(ck.params);
    const mine = await readAll(tree.flatten(ck.params));
    let weights = 0, worstTensor = "";
    paths.forEach((p, k) => {
      const t = theirs.get(p);
      if (!t) throw new Error(`parity ${name}: PyTorch has no weight ${p}`);
      let num = 0, den = 0;
      for (let j = 0; j < t.length; j++) {
        num = Math.max(num, Math.abs(mine[k][j] - t[j]));
        den = Math.max(den, Math.abs(t[j]));
      }
      const d = num / Math.max(den, 1e-30);
      if (d > weights) [weights, worstTensor] = [d, p];
    });
    tree.dispose(ck);
    const all = Math.max(...diffs);
    results.push({
      name,
      ours: a,
      torch: b,
      tight: Math.max(...diffs.slice(0, opts.tight)),
      all,
      worst: diffs.indexOf(all) + 1,
      weights,
      worstTensor,
    });
  }
  return results;
}
