/**
 * Command-line flags of train.ts: definitions with defaults and help, parsing, and validation
 * into run settings. Every error names the flag and what is wrong.
 * @module
 */
import { parseArgs } from "node:util";
import { FlagError } from "./flag_error.ts";
import {
  type MethodName,
  METHODS,
  type OptimizerName,
  OPTIMIZERS,
  REFACTORABLE,
} from "./run_config.ts";
import type { Packing } from "../data/batches.ts";

/** A flag: value kind, default (shown in --help) and description. */
export interface FlagSpec {
  type: "string" | "boolean";
  default?: string;
  help: string;
  /** The methods the flag applies to (absent: all); given for any other, it is refused. */
  methods?: readonly MethodName[];
}

/** The dashboard's default port (train.ts --dashboard, dashboard.ts). */
export const DASHBOARD_PORT = 7070;

/** Methods with low-rank factors B·A (rank and scale α apply). */
const FACTORED: readonly MethodName[] = ["lowrank", "sltrain", "relora", "loro"];
/** Projected methods whose rank is `--rank` (apollo-mini's is 1). */
const PROJECTED_RANK: readonly MethodName[] = ["galore", "fira", "apollo", "golore"];

/** All flags, in --help order. */
export const FLAGS: Record<string, FlagSpec> = {
  model: {
    type: "string",
    default: "tiny",
    help: "preset (tiny, small, 60m, 130m, 350m, 1b, 7b) or a JSON config file",
  },
  init: {
    type: "string",
    help:
      "start from a Hugging Face LLaMA folder (its config.json replaces --model; sltrain/lowrank factorize its weights, relora freezes them)",
  },
  method: { type: "string", default: "sltrain", help: `training method: ${METHODS.join(", ")}` },
  rank: {
    type: "string",
    default: "hidden/4",
    help: "rank r of low-rank factors, ReLoRA adapters, GaLore, Fira and APOLLO (apollo-mini: 1)",
    methods: [...FACTORED, ...PROJECTED_RANK],
  },
  delta: {
    type: "string",
    default: "0.03",
    help: "SLTrain sparsity δ (fraction of each block weight)",
    methods: ["sltrain"],
  },
  alpha: {
    type: "string",
    default: "r/4",
    help: "low-rank scale numerator α (the factor product is scaled by α/r)",
    methods: FACTORED,
  },
  lr: {
    type: "string",
    default: "3e-3 (galore, fira, apollo, apollo-mini: 1e-2)",
    help: "peak learning rate",
  },
  warmup: {
    type: "string",
    default: "max(10% of steps, 60), at most half",
    help: "linear warmup steps",
  },
  steps: { type: "string", default: "300", help: "optimizer steps" },
  "min-lr-ratio": {
    type: "string",
    default: "0.1",
    help: "cosine floor as a fraction of the peak lr",
  },
  batch: { type: "string", default: "8", help: "sequences per micro-batch" },
  seq: { type: "string", default: "128", help: "tokens per sequence" },
  "grad-accum": { type: "string", default: "1", help: "micro-batches per optimizer step" },
  clip: { type: "string", default: "0", help: "global gradient-norm clip (0 = off)" },
  optimizer: {
    type: "string",
    default: "adamw",
    help: `optimizer: ${OPTIMIZERS.join(", ")} (8-bit block-quantized moments)`,
  },
  "weight-decay": { type: "string", default: "0", help: "decoupled weight decay" },
  dtype: {
    type: "string",
    default: "f32",
    help: "weight storage: f32, or bf16 (2-D weights and SLTrain's V; norm gains stay f32)",
  },
  recompute: {
    type: "boolean",
    help: "recompute each block's activations in backward (less memory, same gradients)",
  },
  "keep-weight": {
    type: "boolean",
    help: "sltrain: keep each built W from forward to backward (faster, out×in per layer)",
    methods: ["sltrain"],
  },
  "per-layer": {
    type: "boolean",
    help: "update each parameter during backward (no full gradient set resident)",
  },
  "galore-gap": {
    type: "string",
    default: "200",
    help: "GaLore, Fira and APOLLO projection refresh interval T",
    methods: ["galore", "fira", "apollo", "apollo-mini", "golore"],
  },
  "galore-scale": {
    type: "string",
    default: "0.25",
    help: "GaLore and Fira scale α",
    methods: ["galore", "fira", "golore"],
  },
  "galore-svd": {
    type: "string",
    default: "auto",
    help:
      "GaLore/Fira projector: auto (exact up to a 512 smaller side, randomized above), cpu64 (exact), gpu32, randomized",
    methods: ["galore", "fira", "golore"],
  },
  limiter: {
    type: "string",
    default: "1.01",
    help: "Fira and APOLLO norm-growth limiter γ (0 = off)",
    methods: ["fira", "apollo", "apollo-mini"],
  },
  "apollo-scale": {
    type: "string",
    default: "1 (apollo-mini: 128)",
    help: "APOLLO scale s: the update is multiplied by √s",
    methods: ["apollo", "apollo-mini"],
  },
  "apollo-granularity": {
    type: "string",
    default: "channel",
    help: "APOLLO scaling factors per channel or tensor (apollo-mini: always tensor)",
    methods: ["apollo"],
  },
  "refactor-every": {
    type: "string",
    default: "0",
    help: "sltrain, lowrank, loro: refactorize B,A and reset momentum every k steps (0 = never)",
    methods: REFACTORABLE,
  },
  "golore-rand-ratio": {
    type: "string",
    default: "0",
    help: "GoLore: fraction of the steps after which projectors are random (0 = from the start)",
    methods: ["golore"],
  },
  "loro-exact-every": {
    type: "string",
    default: "5",
    help: "LoRO: every k-th step is an exact Riemannian step (the rest r/d-scaled Adam)",
    methods: ["loro"],
  },
  "spam-threshold": {
    type: "string",
    default: "5000",
    help: "SPAM: clip gradient entries with g² > θ·v to sign(g)·√(θ·v) (0 = off)",
    methods: ["spam"],
  },
  "spam-warmup": {
    type: "string",
    default: "150",
    help: "SPAM: steps of the cosine ramp of the update after each momentum reset",
    methods: ["spam"],
  },
  "momentum-reset-every": {
    type: "string",
    default: "500",
    help: "SPAM, Stable-SPAM: reset Adam's moments every k steps",
    methods: ["spam", "stable-spam"],
  },
  "stable-spam-gammas": {
    type: "string",
    default: "0.85,0.999,0.999",
    help: "Stable-SPAM: γ1,γ2,γ3 decays of the gradient norm, squared norm and max magnitude",
    methods: ["stable-spam"],
  },
  "stable-spam-total": {
    type: "string",
    default: "steps",
    help: "Stable-SPAM: length T of the cosine schedule of β1 and γ1 (0 = constant)",
    methods: ["stable-spam"],
  },
  "stable-spam-eta": {
    type: "string",
    default: "0.5",
    help: "Stable-SPAM: floor η of that schedule",
    methods: ["stable-spam"],
  },
  "relora-every": {
    type: "string",
    default: "steps/4",
    help: "ReLoRA: merge adapters every k steps",
    methods: ["relora"],
  },
  "recovery-steps": {
    type: "string",
    default: "10",
    help: "LR ramp steps after a momentum reset or merge",
    methods: [...REFACTORABLE, "relora"],
  },
  "eval-every": {
    type: "string",
    default: "steps/5",
    help: "evaluate (and checkpoint) every k steps",
  },
  "eval-tokens": { type: "string", default: "16384", help: "validation tokens per evaluation" },
  "log-every": { type: "string", default: "10", help: "read the training loss back every k steps" },
  "on-nonfinite": {
    type: "string",
    default: "stop",
    help: "a step with a NaN/Inf loss or gradient: stop (keep the last good checkpoint) or skip " +
      "(its update is not applied)",
  },
  seed: {
    type: "string",
    default: "42",
    help: "seed of weights, sparse supports, batch order and APOLLO projections",
  },
  data: {
    type: "string",
    default: "Brown corpus",
    help:
      "training text: a .txt file, a folder of text files, .jsonl with a text field, or a prepare.ts shard folder",
  },
  "val-data": { type: "string", help: "validation text (default: a held-out part of --data)" },
  "val-fraction": { type: "string", default: "0.1", help: "held-out fraction of --data documents" },
  tokenizer: {
    type: "string",
    default: "bytes for tiny/small, llama otherwise; a shard folder's own",
    help: "bytes, llama, or a tokenizer.json (or a folder holding one)",
  },
  packing: {
    type: "string",
    default: "packed",
    help: "packed (contiguous windows) or none (one document per sequence)",
  },
  out: {
    type: "string",
    default: "runs/<method>-<time>",
    help: "output folder: log.jsonl, checkpoint, loss.svg, summary.json",
  },
  resume: {
    type: "boolean",
    help: "continue the run in --out from its checkpoint (from step 0 if it has none yet)",
  },
  keep: {
    type: "string",
    default: "1",
    help: "checkpoints to keep: the latest and the k-1 before it (checkpoint.step-N.safetensors)",
  },
  compare: { type: "string", help: "comma-separated methods to run on the same data and budget" },
  dashboard: {
    type: "string",
    help:
      `serve a live page of the run while it trains: --dashboard [PORT] (default ${DASHBOARD_PORT}; 0 = any free port), on 127.0.0.1 unless --dashboard-host`,
  },
  "dashboard-host": {
    type: "string",
    help:
      "address the dashboard listens on instead of 127.0.0.1 (0.0.0.0: every interface; anyone who reaches it sees the runs)",
  },
  fit: {
    type: "string",
    help:
      "plan instead of training: list the configurations with their predicted device peak and step cost against this budget (e.g. 24GB), mark what fits and suggest the fastest",
  },
  "max-device-bytes": {
    type: "string",
    help: "refuse to start when the predicted device peak is over this (e.g. 16GB)",
  },
  help: { type: "boolean", help: "show this help" },
};

/**
 * Refuses, by name, every flag given in `flags` that applies to none of `methods` (the run's
 * method, or the methods of a --compare): a flag that would be silently ignored is an error.
 */
export function refuseInapplicable(
  flags: RawFlags,
  methods: readonly MethodName[],
  specs: Record<string, FlagSpec> = FLAGS,
): void {
  for (const [name, spec] of Object.entries(specs)) {
    if (flags[name] === undefined || !spec.methods) continue;
    if (!methods.some((m) => spec.methods!.includes(m))) {
      throw new FlagError(
        `--${name}: applies to ${spec.methods.join(", ")} only, not ${methods.join(", ")}`,
      );
    }
  }
}

/** Renders a --help text: intro lines, one line per flag with its default, then footer lines. */
export function renderHelp(
  intro: readonly string[],
  specs: Record<string, FlagSpec>,
  footer: readonly string[] = [],
): string {
  const lines = [...intro, ""];
  const width = 4 + Math.max(...Object.keys(specs).map((n) => n.length + 4));
  for (const [name, f] of Object.entries(specs)) {
    const left = `  --${name}${f.type === "string" ? " X" : ""}`;
    lines.push(`${left.padEnd(width)}${f.help}${f.default ? ` [default: ${f.default}]` : ""}`);
  }
  if (footer.length > 0) lines.push("", ...footer);
  return lines.join("\n");
}

/** The help text of train.ts. */
export function helpText(): string {
  return renderHelp(
    [
      "Pretrain a LLaMA-style model on WebGPU with SLTrain or a baseline.",
      "",
      "usage: deno run -A train.ts [flags]",
    ],
    FLAGS,
    [
      "examples:",
      "  deno run -A train.ts",
      "  deno run -A train.ts --compare full,lowrank,sltrain,galore --steps 200",
      "  deno run -A train.ts --compare full,galore,fira,apollo,apollo-mini --model small",
    ],
  );
}

export { FlagError };

/** Parsed raw flag values (strings and booleans, as given). */
export type RawFlags = Record<string, string | boolean | undefined>;

/** Parses argv against `specs`; throws FlagError for unknown flags, missing values or positionals. */
export function parseFlagsWith(specs: Record<string, FlagSpec>, argv: string[]): RawFlags {
  const { flags, args } = parseFlagsAndArgs(specs, argv);
  if (args.length > 0) {
    throw new FlagError(`unexpected argument "${args[0]}" (flags start with --)`);
  }
  return flags;
}

/**
 * Parses argv against `specs` into flags and positional arguments; throws FlagError for unknown
 * flags and missing values.
 */
export function parseFlagsAndArgs(
  specs: Record<string, FlagSpec>,
  argv: string[],
): { flags: RawFlags; args: string[] } {
  const options = Object.fromEntries(Object.entries(specs).map(([k, f]) => [k, { type: f.type }]));
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options,
      strict: true,
      allowPositionals: true,
    });
    return { flags: values as RawFlags, args: positionals };
  } catch (e) {
    const msg = (e as Error).message;
    // node:util's "argument is ambiguous" case: a value that starts with a dash.
    const dash = /^Option '(--[\w-]+)' argument is ambiguous/.exec(msg);
    if (dash) {
      throw new FlagError(
        `${dash[1]}: a value starting with "-" must be written ${dash[1]}=VALUE (or it is missing)`,
      );
    }
    throw new FlagError(
      `${msg.replace(/\. To specify a positional argument.*$/s, "")}; see --help`,
    );
  }
}

/** Parses train.ts's argv; a bare `--dashboard` (no PORT after it) means its default port. */
export function parseFlags(argv: string[]): RawFlags {
  const args = argv.map((a, i) =>
    a === "--dashboard" && (i + 1 === argv.length || argv[i + 1].startsWith("-"))
      ? "--dashboard="
      : a
  );
  return parseFlagsWith(FLAGS, args);
}

/**
 * A port flag's value: `fallback` when absent or given bare (empty), else an integer in
 * [0, 65535] (0 = any free port).
 */
export function portFlag(flags: RawFlags, name: string, fallback = DASHBOARD_PORT): number {
  const raw = flags[name];
  if (raw === undefined || raw === "") return fallback;
  return num(flags, name, fallback, (v) => natInt(v) && v <= 65535, "a port in 0..65535");
}

/**
 * Runs a CLI's main: exit code from main, or 2 for a FlagError and 1 for any other error, printed
 * as one `error: ...` message (with its stack only when SLTRAIN_DEBUG is set).
 */
export async function runCli(main: (argv: string[]) => Promise<number>): Promise<never> {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    console.error(`error: ${err.message || err.name}`);
    if (Deno.env.get("SLTRAIN_DEBUG")) console.error(err.stack, "\ncaused by:", err.cause);
    Deno.exit(e instanceof FlagError ? 2 : 1);
  }
}

/** A number flag: must parse and satisfy `ok`. */
export function num(
  flags: RawFlags,
  name: string,
  fallback: number,
  ok: (v: number) => boolean,
  what: string,
): number {
  const raw = flags[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(v) || !ok(v)) {
    throw new FlagError(`--${name} ${raw}: must be ${what}`);
  }
  return v;
}

/** A flag whose value is one of `choices` (the first is the default). */
export function oneOf<T extends string>(flags: RawFlags, name: string, choices: readonly T[]): T {
  const raw = flags[name];
  if (raw === undefined) return choices[0];
  if (!(choices as readonly unknown[]).includes(raw)) {
    throw new FlagError(`--${name} ${raw}: expected ${choices.join(" or ")}`);
  }
  return raw as T;
}

/** Positive integer check. */
export const posInt = (v: number): boolean => Number.isInteger(v) && v > 0;
/** Non-negative integer check. */
export const natInt = (v: number): boolean => Number.isInteger(v) && v >= 0;

/** Checks an `--optimizer` value against {@link OPTIMIZERS}. */
export function optimizerName(s: string): OptimizerName {
  if (!(OPTIMIZERS as readonly string[]).includes(s)) {
    throw new FlagError(
      `--optimizer ${s}: unknown optimizer (expected one of ${OPTIMIZERS.join(", ")})`,
    );
  }
  return s as OptimizerName;
}

/** The --packing flag: `packed` (default) or `none`. */
export function packingFlag(flags: RawFlags): Packing {
  const packing = String(flags.packing ?? "packed");
  if (packing !== "packed" && packing !== "none") {
    throw new FlagError(`--packing ${packing}: expected packed or none`);
  }
  return packing;
}

/** Validates a method name. */
export function methodName(s: string, flag = "method"): MethodName {
  if (!(METHODS as readonly string[]).includes(s)) {
    throw new FlagError(`--${flag} ${s}: unknown method (expected one of ${METHODS.join(", ")})`);
  }
  return s as MethodName;
}
