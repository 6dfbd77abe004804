/**
 * The Hugging Face LLaMA folder format, both ways: tensor names, `config.json` (written from a
 * {@link LlamaConfig}, and read back with every option this library cannot compute named), and
 * weight files (`model.safetensors`, or shards listed in `model.safetensors.index.json`) read
 * tensor by tensor into f32 device tensors from F32, BF16 or F16. A folder is a {@link ModelFolder}:
 * a directory on Deno (`cli/hf_format.ts`), the files a user picked or dropped in a browser
 * ({@link filesFolder}).
 * @module
 */
import { fromBf16Bits } from "../core/bf16.ts";
import { Tensor, writeBytes } from "../core/tensor.ts";
import { type LlamaConfig, parseConfig } from "../models/config.ts";
import { ConfigError } from "../models/errors.ts";
import type { BlockLinearName } from "../models/method.ts";
import { blobSource, type ByteSource, bytesSource } from "./bytes.ts";
import { openSafetensors, type SafetensorsEntry, type SafetensorsReader } from "./safetensors.ts";

/** A folder that is not a Hugging Face LLaMA this library can load, or an option it cannot run. */
export class HfFormatError extends Error {
  /** Error class name. */
  override name = "HfFormatError";
}

/** Where each block linear lives inside `model.layers.N.` in Hugging Face's LlamaForCausalLM. */
export const HF_LINEARS: Readonly<Record<BlockLinearName, string>> = Object.freeze({
  q: "self_attn.q_proj",
  k: "self_attn.k_proj",
  v: "self_attn.v_proj",
  o: "self_attn.o_proj",
  gate: "mlp.gate_proj",
  up: "mlp.up_proj",
  down: "mlp.down_proj",
});

/** Hugging Face names of the tensors outside the block linears. */
export const HF_NAMES = {
  embed: "model.embed_tokens.weight",
  finalNorm: "model.norm.weight",
  lmHead: "lm_head.weight",
  attnNorm: (layer: number) => `model.layers.${layer}.input_layernorm.weight`,
  mlpNorm: (layer: number) => `model.layers.${layer}.post_attention_layernorm.weight`,
  /** Prefix of a block linear's tensors: `weight` (dense) or the SLTrain factors `B`, `A`, `V`, `I`. */
  linear: (layer: number, name: BlockLinearName) => `model.layers.${layer}.${HF_LINEARS[name]}`,
} as const;

/** `model_type` of an SLTrain-factor folder (`export.ts --format sltrain`). */
export const SLTRAIN_MODEL_TYPE = "sltrain_llama";

/** What the `sltrain` section of an SLTrain-factor folder's config.json holds. */
export interface SLTrainSection {
  /** Rank r of B [out, r] and A [r, in]. */
  rank: number;
  /** Density δ: each linear has ⌊δ·out·in⌋ sparse values. */
  delta: number;
  /** Scale numerator α: W = (α/r)·B·A ⊕_I V. */
  alpha: number;
  /** α/r, written out so readers need not recompute it. */
  scale: number;
  /** Seed the supports were drawn from (provenance; the supports themselves are stored). */
  seed: number;
  /** Layout of the support tensors `I`. */
  index: "row * in_features + col, u32, sorted ascending, unique";
}

/** Options of {@link hfConfigJson}. */
export interface HfConfigOptions {
  /** `torch_dtype` of the weights. */
  dtype: "f32" | "bf16";
  /** Context length to record when the config has none. */
  maxPositions: number;
  /** Begin-of-text id, when the tokenizer has one. */
  bos?: number;
  /** End-of-text id, when the tokenizer has one. */
  eos?: number;
  /** Present for an SLTrain-factor folder. */
  sltrain?: SLTrainSection;
}

/** A `config.json` of a Hugging Face `LlamaForCausalLM` (or an SLTrain-factor folder) for `config`. */
export function hfConfigJson(config: LlamaConfig, opts: HfConfigOptions): Record<string, unknown> {
  return {
    architectures: [opts.sltrain ? "SLTrainLlamaForCausalLM" : "LlamaForCausalLM"],
    model_type: opts.sltrain ? SLTRAIN_MODEL_TYPE : "llama",
    hidden_size: config.hidden,
    intermediate_size: config.intermediate,
    num_attention_heads: config.heads,
    num_hidden_layers: config.layers,
    num_key_value_heads: config.heads,
    head_dim: config.hidden / config.heads,
    vocab_size: config.vocabSize,
    rms_norm_eps: config.rmsNormEps,
    rope_theta: config.ropeBase,
    rope_scaling: null,
    max_position_embeddings: config.maxSeqLen ?? opts.maxPositions,
    initializer_range: config.initStd,
    hidden_act: "silu",
    attention_bias: false,
    attention_dropout: 0,
    mlp_bias: false,
    pretraining_tp: 1,
    tie_word_embeddings: false,
    torch_dtype: opts.dtype === "bf16" ? "bfloat16" : "float32",
    use_cache: true,
    ...(opts.bos === undefined ? {} : { bos_token_id: opts.bos }),
    ...(opts.eos === undefined ? {} : { eos_token_id: opts.eos }),
    ...(opts.sltrain ? { sltrain: opts.sltrain } : {}),
  };
}

/** A validated Hugging Face config: our model shapes and, for a factor folder, its SLTrain section. */
export interface HfConfig {
  /** Model shapes. */
  readonly config: LlamaConfig;
  /** The SLTrain factors' settings, for a folder written by `export.ts --format sltrain`. */
  readonly sltrain?: SLTrainSection;
  /** Begin-of-text id, when config.json names it. */
  readonly bos?: number;
  /** End-of-text id, when config.json names it. */
  readonly eos?: number;
}

/**
 * Checks a parsed config.json and returns our config. Throws {@link HfFormatError} naming the field
 * for anything this library would compute differently: an architecture other than
 * LlamaForCausalLM, rope_scaling, biases, grouped-query attention, tied embeddings, an activation
 * other than SiLU, a head_dim other than hidden/heads, and missing or invalid sizes.
 */
export function parseHfConfig(json: unknown, source: string): HfConfig {
  const bad = (why: string) => new HfFormatError(`${source}: ${why}`);
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw bad("not a JSON object");
  }
  const c = json as Record<string, unknown>;
  const sltrain = c.model_type === SLTRAIN_MODEL_TYPE;
  const arch = sltrain ? "SLTrainLlamaForCausalLM" : "LlamaForCausalLM";
  if (c.model_type !== "llama" && !sltrain) {
    throw bad(
      `model_type ${JSON.stringify(c.model_type ?? null)} is not "llama" (not a LLaMA model)`,
    );
  }
  const archs = c.architectures;
  if (archs !== undefined && !(Array.isArray(archs) && archs.length === 1 && archs[0] === arch)) {
    throw bad(`architectures ${JSON.stringify(archs)} is not ["${arch}"]`);
  }
  if (c.rope_scaling !== undefined && c.rope_scaling !== null) {
    throw bad(
      `rope_scaling ${JSON.stringify(c.rope_scaling)} is not supported (only plain RoPE)`,
    );
  }
  for (const f of ["attention_bias", "mlp_bias"]) {
    if (c[f] === true) throw bad(`${f} true is not supported (LLaMA here has no biases)`);
  }
  const heads = c.num_attention_heads;
  const hidden = c.hidden_size;
  if (
    c.head_dim !== undefined && c.head_dim !== null && typeof heads === "number" &&
    c.head_dim !== (hidden as number) / heads
  ) {
    throw bad(`head_dim ${JSON.stringify(c.head_dim)} is not hidden_size / num_attention_heads`);
  }
  if (c.partial_rotary_factor !== undefined && c.partial_rotary_factor !== 1) {
    throw bad(`partial_rotary_factor ${c.partial_rotary_factor} is not supported`);
  }
  let config: LlamaConfig;
  try {
    config = parseConfig(c, source);
  } catch (e) {
    if (e instanceof ConfigError) throw new HfFormatError(e.message);
    throw e;
  }
  const id = (v: unknown) => typeof v === "number" && Number.isInteger(v) ? v : undefined;
  return {
    config,
    ...(sltrain ? { sltrain: parseSLTrainSection(c.sltrain, source) } : {}),
    bos: id(c.bos_token_id),
    eos: id(c.eos_token_id),
  };
}

function parseSLTrainSection(s: unknown, source: string): SLTrainSection {
  const sec = s as Record<string, unknown> | null;
  const ok = (k: string, test: (v: number) => boolean) =>
    typeof sec?.[k] === "number" && test(sec[k] as number);
  if (
    !ok("rank", (v) => Number.isInteger(v) && v > 0) || !ok("delta", (v) => v > 0 && v < 1) ||
    !ok("alpha", Number.isFinite) || !ok("seed", Number.isSafeInteger)
  ) {
    throw new HfFormatError(
      `${source}: the "sltrain" section needs rank, delta, alpha and seed, got ${
        JSON.stringify(s ?? null)
      }`,
    );
  }
  return sec as unknown as SLTrainSection;
}

/** The files of a model folder: a directory on disk, or files picked or dropped in a page. */
export interface ModelFolder {
  /** A name for messages (a path, or the folder's name). */
  readonly name: string;
  /** File `file` of the folder as a byte source, or null when the folder has no such file. */
  open(file: string): Promise<ByteSource | null>;
}

/** A {@link ModelFolder} over in-memory files or `File`s/Blobs (by name), e.g. from a drop. */
export function filesFolder(
  files: ReadonlyMap<string, Uint8Array | Blob> | Record<string, Uint8Array | Blob>,
  name = "folder",
): ModelFolder {
  const map = files instanceof Map ? files : new Map(Object.entries(files));
  return {
    name,
    open(file) {
      const f = map.get(file);
      if (f === undefined) return Promise.resolve(null);
      const where = `${name}/${file}`;
      return Promise.resolve(
        f instanceof Uint8Array ? bytesSource(f, where) : blobSource(f, where),
      );
    },
  };
}

/** The largest JSON file of a model folder read whole: far above any real config or index. */
export const MAX_JSON_BYTES = 64 * 1024 * 1024;

/**
 * The text of `file` in `folder` (UTF-8), or null when there is no such file. A file over
 * `maxBytes` is refused before anything is allocated for it.
 */
export async function readText(
  folder: ModelFolder,
  file: string,
  maxBytes = MAX_JSON_BYTES,
): Promise<string | null> {
  const src = await folder.open(file);
  if (!src) return null;
  try {
    if (src.size > maxBytes) {
      throw new HfFormatError(
        `${folder.name}/${file}: ${src.size} bytes, more than the ${maxBytes} such a file can ` +
          "plausibly need (not the file it should be?)",
      );
    }
    const bytes = new Uint8Array(src.size);
    await src.read(0, bytes);
    return new TextDecoder().decode(bytes);
  } finally {
    src.close();
  }
}

// An unreadable file counts as absent; one refused for its size is reported.
function keepFormatErrors(e: unknown): null {
  if (e instanceof HfFormatError) throw e;
  return null;
}

/** Reads and validates the folder's `config.json`; errors say when it is not an HF model at all. */
export async function readHfConfig(folder: ModelFolder): Promise<HfConfig> {
  const file = `${folder.name}/config.json`;
  const text = await readText(folder, "config.json").catch(keepFormatErrors);
  if (text === null) {
    throw new HfFormatError(`${folder.name} is not a Hugging Face model folder (no config.json)`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new HfFormatError(`${file} is not valid JSON (${(e as Error).message})`);
  }
  return parseHfConfig(json, file);
}

/** The weight files of a Hugging Face folder, opened: each tensor name to its file. */
export interface HfWeights {
  /** Every tensor name in the folder's weight files. */
  readonly names: readonly string[];
  /** A tensor's header entry (dtype, shape), or undefined when the folder has no such tensor. */
  entry(name: string): SafetensorsEntry | undefined;
  /**
   * Reads tensor `name` into a new f32 device tensor (F32 as is, BF16 and F16 widened exactly),
   * chunk by chunk. Throws {@link HfFormatError} naming the tensor for a missing tensor, another
   * shape, or another dtype.
   */
  readF32(name: string, shape: readonly number[]): Promise<Tensor>;
  /** Reads a U32 tensor (an SLTrain support) into a new u32 device tensor. */
  readU32(name: string, shape: readonly number[]): Promise<Tensor>;
  /**
   * Checks without reading that tensor `name` exists with `shape` and a dtype `readF32` (`f32`) or
   * `readU32` (`u32`) takes; throws as they would.
   */
  check(name: string, shape: readonly number[], dtype: "f32" | "u32"): void;
  /** Bytes of tensor data in all the weight files. */
  readonly dataBytes: number;
  /** Closes every file. */
  close(): void;
}

const INDEX = "model.safetensors.index.json";

/**
 * Opens `dir/model.safetensors`, or the shards `dir/model.safetensors.index.json` lists (its
 * `weight_map`, tensor name -> file). Every file's header is validated before anything is read;
 * a folder with only PyTorch `.bin` weights is refused with a message saying so.
 */
export async function openHfWeights(folder: ModelFolder): Promise<HfWeights> {
  const dir = folder.name;
  const readers = new Map<string, SafetensorsReader>();
  const owner = new Map<string, SafetensorsReader>();
  const close = () => readers.forEach((r) => r.close());
  try {
    const files = await weightFiles(folder);
    for (const [file, names] of files) {
      let r: SafetensorsReader;
      try {
        const src = await folder.open(file);
        if (!src) throw new Error(`${dir}/${file} does not exist`);
        r = await openSafetensors(src, `${dir}/${file}`);
      } catch (e) {
        throw new HfFormatError((e as Error).message);
      }
      readers.set(file, r);
      for (const name of names ?? r.entries.keys()) {
        if (!r.entries.has(name)) {
          throw new HfFormatError(
            `${dir}/${INDEX} puts ${name} in ${file}, which does not hold it`,
          );
        }
        owner.set(name, r);
      }
    }
  } catch (e) {
    close();
    throw e;
  }
  const dtypesOf = (dtype: "f32" | "u32") => dtype === "u32" ? ["U32"] : ["F32", "BF16", "F16"];
  const get = (name: string, shape: readonly number[], dtypes: readonly string[]) => {
    const r = owner.get(name);
    const e = r?.entries.get(name);
    if (!r || !e) throw new HfFormatError(`${dir}: tensor ${name} is missing`);
    if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i])) {
      throw new HfFormatError(
        `${dir}: tensor ${name} has shape [${e.shape}], config.json implies [${shape}]`,
      );
    }
    if (!dtypes.includes(e.dtype)) {
      throw new HfFormatError(
        `${dir}: tensor ${name} is ${e.dtype}; supported: ${dtypes.join(", ")}`,
      );
    }
    return { r, e };
  };
  const read = async (
    name: string,
    shape: readonly number[],
    dtype: "f32" | "u32",
    widen: (e: SafetensorsEntry, bytes: Uint8Array) => Uint8Array,
  ) => {
    const { r, e } = get(name, shape, dtypesOf(dtype));
    const t = Tensor.empty(shape, dtype);
    try {
      const grow = e.dtype === "F32" || e.dtype === "U32" ? 1 : 2;
      await r.read(name, (bytes, off) => writeBytes(t, widen(e, bytes), off * grow));
    } catch (err) {
      t.dispose();
      throw err;
    }
    return t;
  };
  return {
    names: [...owner.keys()],
    entry: (name) => owner.get(name)?.entries.get(name),
    readF32: (name, shape) => read(name, shape, "f32", (e, b) => toF32Bytes(e.dtype, b)),
    readU32: (name, shape) => read(name, shape, "u32", (_, b) => b),
    check: (name, shape, dtype) => void get(name, shape, dtypesOf(dtype)),
    dataBytes: [...readers.values()].reduce(
      (n, r) => n + [...r.entries.values()].reduce((m, e) => m + e.end - e.start, 0),
      0,
    ),
    close,
  };
}

/** Weight files of a folder: file -> the tensor names the index assigns it (null: all it holds). */
async function weightFiles(folder: ModelFolder): Promise<Map<string, string[] | null>> {
  const dir = folder.name;
  const has = async (f: string) => {
    const src = await folder.open(f).catch(() => null);
    src?.close();
    return src !== null;
  };
  const index = await readText(folder, INDEX).catch(keepFormatErrors);
  if (index !== null) {
    let map: unknown;
    try {
      map = JSON.parse(index).weight_map;
    } catch (e) {
      throw new HfFormatError(`${dir}/${INDEX} is not valid JSON (${(e as Error).message})`);
    }
    if (typeof map !== "object" || map === null || Array.isArray(map)) {
      throw new HfFormatError(`${dir}/${INDEX} has no "weight_map" object`);
    }
    const files = new Map<string, string[]>();
    for (const [name, file] of Object.entries(map)) {
      if (typeof file !== "string" || file.includes("/") || !file.endsWith(".safetensors")) {
        throw new HfFormatError(`${dir}/${INDEX}: ${name} maps to ${JSON.stringify(file)}`);
      }
      if (!files.has(file)) files.set(file, []);
      files.get(file)!.push(name);
    }
    return files;
  }
  if (await has("model.safetensors")) return new Map([["model.safetensors", null]]);
  const bin = await has("pytorch_model.bin") || await has("pytorch_model.bin.index.json");
  throw new HfFormatError(
    bin
      ? `${dir} holds PyTorch .bin weights only; convert them to safetensors first`
      : `${dir} has no model.safetensors (nor ${INDEX})`,
  );
}

/** Little-endian F32 bytes for F32, BF16 or F16 bytes (whole elements). */
export function toF32Bytes(dtype: string, bytes: Uint8Array): Uint8Array {
  if (dtype === "F32") return bytes;
  const n = bytes.byteLength >> 1;
  const half = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const h = half.getUint16(2 * i, true);
    out[i] = dtype === "BF16" ? fromBf16Bits(h) : f16ToNumber(h);
  }
  return new Uint8Array(out.buffer);
}

/** The value of IEEE binary16 bits (exact: every f16 is an f32). */
export function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
