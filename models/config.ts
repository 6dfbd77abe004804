/**
 * LLaMA model shapes: the reference presets (60M to 7B, as in the GaLore/SLTrain configs), two
 * CPU-trainable presets, and a loader for JSON configs in our field names or Hugging Face's.
 * @module
 */
import { ConfigError, show } from "./errors.ts";

/** Shape and numeric constants of a pre-norm, SwiGLU, RoPE, untied-head LLaMA decoder. */
export interface LlamaConfig {
  /** Rows of the embedding and of the (untied) lm_head. */
  readonly vocabSize: number;
  /** Model width (d_model). */
  readonly hidden: number;
  /** SwiGLU inner width (gate/up output, down input). */
  readonly intermediate: number;
  /** Attention heads; `hidden / heads` is the head dimension and must be even for RoPE. */
  readonly heads: number;
  /** Decoder blocks. */
  readonly layers: number;
  /** Longest sequence the config was written for; informational (RoPE needs no table size). */
  readonly maxSeqLen?: number;
  /** RMSNorm epsilon. */
  readonly rmsNormEps: number;
  /** RoPE frequency base (theta). */
  readonly ropeBase: number;
  /** Std of the N(0, σ) init of embeddings and dense linears. */
  readonly initStd: number;
}

/** Names of the built-in presets. */
export type PresetName = "tiny" | "small" | "60m" | "130m" | "350m" | "1b" | "7b";

const CONSTANTS = { rmsNormEps: 1e-6, ropeBase: 10000, initStd: 0.02 } as const;

function preset(
  hidden: number,
  intermediate: number,
  heads: number,
  layers: number,
  maxSeqLen: number,
): LlamaConfig {
  return Object.freeze({
    vocabSize: 32000,
    hidden,
    intermediate,
    heads,
    layers,
    maxSeqLen,
    ...CONSTANTS,
  });
}

/**
 * Built-in configs. `60m` to `7b` are the reference shapes (`configs/llama_*.json` of GaLore and
 * SLTrain, vocab 32000); `tiny` and `small` train on a CPU adapter and are meant to be used with
 * {@link withVocab} (e.g. 256 for bytes), since a 32000-row embedding would dwarf their blocks.
 */
export const PRESETS: Readonly<Record<PresetName, LlamaConfig>> = Object.freeze({
  tiny: preset(128, 352, 4, 4, 256),
  small: preset(256, 688, 4, 4, 256),
  "60m": preset(512, 1376, 8, 8, 1024),
  "130m": preset(768, 2048, 12, 12, 1024),
  "350m": preset(1024, 2736, 16, 24, 1024),
  "1b": preset(2048, 5461, 32, 24, 1024),
  "7b": preset(4096, 11008, 32, 32, 2048),
});

/** Head dimension, `hidden / heads`. */
export function headDim(config: LlamaConfig): number {
  return config.hidden / config.heads;
}

/** The same config with another vocabulary size (validated). */
export function withVocab(config: LlamaConfig, vocabSize: number): LlamaConfig {
  return validateConfig({ ...config, vocabSize });
}

function positiveInt(field: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
    throw new ConfigError(`config field ${field} must be a positive integer, got ${show(v)}`);
  }
  return v;
}

function positiveNumber(field: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(`config field ${field} must be a positive finite number, got ${show(v)}`);
  }
  return v;
}

/**
 * Checks every field and returns a frozen copy holding only the known fields. Throws
 * {@link ConfigError} naming the field: non-positive or non-integer sizes, `hidden` not divisible
 * by `heads`, or an odd head dimension (RoPE rotates pairs).
 */
export function validateConfig(config: LlamaConfig): LlamaConfig {
  return check(config as unknown as Record<string, unknown>, (f) => f);
}

// `label` maps our field name to the name the user wrote, so messages quote their file.
function check(c: Record<string, unknown>, label: (f: keyof LlamaConfig) => string): LlamaConfig {
  const int = (f: keyof LlamaConfig) => positiveInt(label(f), c[f]);
  const num = (f: keyof LlamaConfig) => positiveNumber(label(f), c[f]);
  const out: LlamaConfig = {
    vocabSize: int("vocabSize"),
    hidden: int("hidden"),
    intermediate: int("intermediate"),
    heads: int("heads"),
    layers: int("layers"),
    ...(c.maxSeqLen === undefined ? {} : { maxSeqLen: int("maxSeqLen") }),
    rmsNormEps: num("rmsNormEps"),
    ropeBase: num("ropeBase"),
    initStd: num("initStd"),
  };
  const { hidden, heads } = out;
  if (hidden % heads !== 0) {
    const [h, n] = [label("hidden"), label("heads")];
    throw new ConfigError(`config field ${h} (${hidden}) must be divisible by ${n} (${heads})`);
  }
  if ((hidden / heads) % 2 !== 0) {
    throw new ConfigError(
      `config fields ${label("hidden")}/${label("heads")} give head dim ${hidden / heads}, ` +
        `which must be even for RoPE`,
    );
  }
  return Object.freeze(out);
}

// Our name -> the Hugging Face LlamaConfig name(s) that may carry it.
const HF_NAMES: Readonly<Record<keyof LlamaConfig, readonly string[]>> = {
  vocabSize: ["vocab_size"],
  hidden: ["hidden_size"],
  intermediate: ["intermediate_size"],
  heads: ["num_attention_heads"],
  layers: ["num_hidden_layers"],
  // The reference JSONs say max_sequence_length; stock HF configs say max_position_embeddings.
  maxSeqLen: ["max_sequence_length", "max_position_embeddings"],
  rmsNormEps: ["rms_norm_eps"],
  ropeBase: ["rope_theta"],
  initStd: ["initializer_range"],
};

/**
 * Builds a config from parsed JSON in our field names, Hugging Face LLaMA names, or a mix (the
 * same field under both names must agree). Missing `rmsNormEps`, `ropeBase`, `initStd` take the
 * reference values (1e-6, 10000, 0.02). Unknown keys are ignored, since HF configs carry many
 * (token ids, dtype, architectures); keys describing an architecture we do not build (non-SiLU
 * activation, grouped-query attention, tied embeddings) are refused. `source` goes into messages.
 */
export function parseConfig(json: unknown, source = "config"): LlamaConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(`${source}: expected a JSON object, got ${show(json)}`);
  }
  const obj = json as Record<string, unknown>;
  const fields: Record<string, unknown> = { ...CONSTANTS };
  const names: Partial<Record<keyof LlamaConfig, string>> = {};
  for (const [key, aliases] of Object.entries(HF_NAMES)) {
    const ours = key as keyof LlamaConfig;
    const present = (n: string) => Object.hasOwn(obj, n) && obj[n] !== null;
    // Aliases are in priority order; only our name against the chosen alias must agree.
    const hf = aliases.find(present);
    if (present(ours) && hf !== undefined && obj[ours] !== obj[hf]) {
      throw new ConfigError(
        `${source}: field ${ours} (${show(obj[ours])}) and ${hf} (${show(obj[hf])}) disagree`,
      );
    }
    const name = present(ours) ? ours : hf;
    if (name !== undefined) {
      fields[ours] = obj[name];
      names[ours] = name;
    }
  }
  if ("hidden_act" in obj && obj.hidden_act !== "silu") {
    throw new ConfigError(
      `${source}: field hidden_act must be "silu", got ${show(obj.hidden_act)}`,
    );
  }
  const kv = obj.num_key_value_heads;
  if (kv !== undefined && kv !== null && kv !== fields.heads) {
    throw new ConfigError(
      `${source}: field num_key_value_heads (${show(kv)}) must equal the head count ` +
        `(${show(fields.heads)}); grouped-query attention is not supported`,
    );
  }
  if (obj.tie_word_embeddings === true) {
    throw new ConfigError(
      `${source}: field tie_word_embeddings must be false; lm_head is always untied`,
    );
  }
  try {
    // A missing field is reported under its HF name when the file otherwise uses HF names.
    const hfStyle = Object.values(names).some((n) => n.includes("_"));
    return check(fields, (f) => names[f] ?? (hfStyle ? HF_NAMES[f][0] : f));
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(`${source}: ${e.message}`);
    throw e;
  }
}
