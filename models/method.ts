/**
 * How the seven linears of each decoder block are parameterized: dense, low-rank (s·B·A), SLTrain
 * (s·B·A plus a fixed random sparse support), or ReLoRA (a frozen dense W plus a trainable s·B·A
 * adapter merged into W periodically). Embeddings, lm_head and norms always stay dense.
 * @module
 */
import type { LlamaConfig } from "./config.ts";
import { ConfigError, show } from "./errors.ts";

/**
 * Parameterization of the block linears. `alpha` sets the low-rank scale s = alpha / rank; `delta`
 * is the sparse density (nnz = ⌊delta·out·in⌋ per linear); `seed` fixes the sparse supports.
 * `relora` keeps W frozen (a model buffer) and trains only its adapter B·A.
 */
export type LinearMethod =
  | { readonly kind: "dense" }
  | { readonly kind: "lowrank"; readonly rank: number; readonly alpha: number }
  | { readonly kind: "relora"; readonly rank: number; readonly alpha: number }
  | {
    readonly kind: "sltrain";
    readonly rank: number;
    readonly delta: number;
    readonly alpha: number;
    readonly seed: number;
    /**
     * Not part of the parameterization: keep each W built in forward until backward instead of
     * building it again (faster; out × in per layer held in between; same gradients).
     */
    readonly keepWeight?: boolean;
  };

/**
 * The seven linears of every decoder block, in the order the reference model registers them: the
 * one list everything that walks a block's linears uses (init, paths, merges, refactorization).
 */
export const BLOCK_LINEARS: readonly BlockLinearName[] = Object.freeze([
  "q",
  "k",
  "v",
  "o",
  "gate",
  "up",
  "down",
]);

/** Names of the block linears (see {@link BLOCK_LINEARS}). */
export type BlockLinearName = "q" | "k" | "v" | "o" | "gate" | "up" | "down";

/** One block linear: its name and weight shape `[out, in]` (y = x·Wᵀ). */
export interface BlockLinearShape {
  /** Which projection. */
  readonly name: BlockLinearName;
  /** `[out, in]`. */
  readonly shape: readonly [number, number];
}

/** The seven linears of one decoder block (every block has the same ones). */
export function blockLinearShapes(config: LlamaConfig): readonly BlockLinearShape[] {
  const h = config.hidden;
  const f = config.intermediate;
  const shapes: Record<BlockLinearName, [number, number]> = {
    q: [h, h],
    k: [h, h],
    v: [h, h],
    o: [h, h],
    gate: [f, h],
    up: [f, h],
    down: [h, f],
  };
  return BLOCK_LINEARS.map((name) => ({ name, shape: shapes[name] }));
}

/**
 * Sparse entries of one `[out, in]` SLTrain linear. Computed as the reference does,
 * `int(delta * (in*out))`, so counts match its float rounding exactly.
 */
export function sparseNnz(delta: number, out: number, inF: number): number {
  return Math.floor(delta * (out * inF));
}

/**
 * Checks a rank against every block linear: a factorization needs `1 <= rank < min(out, in)`
 * (at `min(out, in)` it stores more than the dense matrix), or `<= min` when `allowFull`. `what`
 * names the option in messages.
 */
export function checkRank(
  config: LlamaConfig,
  rank: unknown,
  what: string,
  allowFull = false,
): number {
  if (typeof rank !== "number" || !Number.isSafeInteger(rank) || rank < 1) {
    throw new ConfigError(`${what}.rank must be a positive integer, got ${show(rank)}`);
  }
  for (const { name, shape: [out, inF] } of blockLinearShapes(config)) {
    const m = Math.min(out, inF);
    if (allowFull ? rank > m : rank >= m) {
      throw new ConfigError(
        `${what}.rank ${rank} must be ${allowFull ? "<=" : "<"} min(out, in) = ${m} of the ` +
          `${name} linear [${out}, ${inF}]`,
      );
    }
  }
  return rank;
}

/** The method kinds, for messages and CLI choices. */
export const METHOD_KINDS: readonly LinearMethod["kind"][] = Object.freeze([
  "dense",
  "lowrank",
  "sltrain",
  "relora",
]);

/** Throws {@link ConfigError} unless `kind` is one of {@link METHOD_KINDS}. */
export function checkKind(kind: unknown): LinearMethod["kind"] {
  if (!METHOD_KINDS.includes(kind as LinearMethod["kind"])) {
    throw new ConfigError(
      `method.kind must be one of ${METHOD_KINDS.map((k) => `"${k}"`).join(", ")}, got ${
        show(kind)
      }`,
    );
  }
  return kind as LinearMethod["kind"];
}

/**
 * Validates a method against a config and returns it. Throws {@link ConfigError} for a rank that
 * is not below `min(out, in)` of some block linear (the message names that linear's shape), a
 * delta outside (0, 1), a non-finite alpha, a non-integer seed, or an unknown kind.
 */
export function validateMethod(config: LlamaConfig, method: LinearMethod): LinearMethod {
  const kind = checkKind((method as { kind?: unknown }).kind);
  if (kind === "dense") return method;
  const m = method as Exclude<LinearMethod, { kind: "dense" }>;
  checkRank(config, m.rank, kind);
  if (typeof m.alpha !== "number" || !Number.isFinite(m.alpha)) {
    throw new ConfigError(`${kind}.alpha must be a finite number, got ${show(m.alpha)}`);
  }
  if (m.kind === "sltrain") {
    if (typeof m.delta !== "number" || !(m.delta > 0 && m.delta < 1)) {
      throw new ConfigError(`sltrain.delta must be in (0, 1), got ${show(m.delta)}`);
    }
    if (typeof m.seed !== "number" || !Number.isSafeInteger(m.seed)) {
      throw new ConfigError(`sltrain.seed must be a safe integer, got ${show(m.seed)}`);
    }
  }
  return method;
}
