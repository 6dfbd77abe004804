/**
 * Loads a Hugging Face LLaMA folder (or an SLTrain-factor folder from `export.ts --format sltrain`)
 * as a model under any linear method, for continued pretraining (`train.ts --init`) and sampling
 * (`sample.ts --checkpoint`):
 * - dense (full, GaLore): the weights as they are;
 * - relora: the dense weight becomes ReLoRA's frozen W, the adapter starts at B = 0 (exact);
 * - lowrank: the best rank-r approximation of each weight (truncated SVD, balanced factors);
 * - sltrain: the same rank-r part plus the largest-magnitude entries of the residual as V on
 *   their positions (see `models/factorize.ts`); from a factor folder, its B, A, V, I exactly.
 * Weights stream from the files to the device tensor by tensor; what a failure allocated is freed.
 * The folder is any {@link ModelFolder}: a directory on Deno, files dropped into a page.
 * @module
 */
import { Rng } from "../core/rng.ts";
import { randomUniform, type Tensor, tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { factorize } from "../models/factorize.ts";
import type { LinearParams } from "../models/linear.ts";
import { linearScale } from "../models/linear.ts";
import type { LayerBuffers, LayerParams, LlamaModel, LlamaParams } from "../models/llama.ts";
import { denseWeight } from "../models/merge.ts";
import type { LlamaConfig } from "../models/config.ts";
import { countParams } from "../models/estimate.ts";
import {
  blockLinearShapes,
  type LinearMethod,
  sparseNnz,
  validateMethod,
} from "../models/method.ts";
import {
  HF_NAMES,
  type HfConfig,
  HfFormatError,
  type HfWeights,
  type ModelFolder,
  openHfWeights,
  readHfConfig,
} from "./hf_format.ts";

/** A model loaded from a Hugging Face folder. */
export interface HfLoaded {
  /** Config, method and buffers. */
  readonly model: LlamaModel;
  /** Weights. */
  readonly params: LlamaParams;
  /** The folder's validated config.json. */
  readonly hf: HfConfig;
  /** What the conversion did, e.g. how well factors approximate the dense weights. */
  readonly notes: readonly string[];
}

/** Options of {@link loadHf}. */
export interface LoadHfOptions {
  /** Seed of what the folder does not hold (ReLoRA's fresh adapter A). Default 0. */
  readonly seed?: number;
}

/** The method a factor folder's own section describes. */
function folderMethod(hf: HfConfig): LinearMethod {
  const s = hf.sltrain;
  return s
    ? { kind: "sltrain", rank: s.rank, delta: s.delta, alpha: s.alpha, seed: s.seed }
    : { kind: "dense" };
}

/** Every tensor a folder of `config` holds, with its shape and how it is read. */
function expectedTensors(
  config: LlamaConfig,
  stored: LinearMethod,
): Map<string, [number[], "f32" | "u32"]> {
  const { vocabSize: v, hidden: d } = config;
  const m = new Map<string, [number[], "f32" | "u32"]>([
    [HF_NAMES.embed, [[v, d], "f32"]],
    [HF_NAMES.finalNorm, [[d], "f32"]],
    [HF_NAMES.lmHead, [[v, d], "f32"]],
  ]);
  for (let i = 0; i < config.layers; i++) {
    m.set(HF_NAMES.attnNorm(i), [[d], "f32"]).set(HF_NAMES.mlpNorm(i), [[d], "f32"]);
    for (const { name, shape: [out, inF] } of blockLinearShapes(config)) {
      const prefix = HF_NAMES.linear(i, name);
      if (stored.kind !== "sltrain") {
        m.set(`${prefix}.weight`, [[out, inF], "f32"]);
        continue;
      }
      const nnz = sparseNnz(stored.delta, out, inF);
      m.set(`${prefix}.B`, [[out, stored.rank], "f32"]).set(`${prefix}.A`, [
        [stored.rank, inF],
        "f32",
      ]);
      m.set(`${prefix}.V`, [[nnz], "f32"]).set(`${prefix}.I`, [[nnz], "u32"]);
    }
  }
  return m;
}

/**
 * Refuses a config.json whose sizes the weight files cannot hold (at 2 bytes per value, the
 * narrowest dtype read), before anything is built from those sizes.
 */
function checkFitsFiles(
  dir: string,
  config: LlamaConfig,
  stored: LinearMethod,
  weights: HfWeights,
): void {
  const counts = countParams(config, stored);
  if (2 * counts.total > weights.dataBytes || config.layers > weights.names.length) {
    throw new HfFormatError(
      `${dir}/config.json describes ${counts.total} parameters in ${config.layers} layers ` +
        `(at least ${2 * counts.total} bytes), but the weight files hold ${weights.names.length} ` +
        `tensors of ${weights.dataBytes} bytes (config.json and the weights do not belong together)`,
    );
  }
}

/** Checks the folder's tensor names: nothing this library would silently ignore. */
function checkNames(dir: string, weights: HfWeights, expected: Set<string>): void {
  for (const name of weights.names) {
    if (expected.has(name) || /\.rotary_emb\.inv_freq$/.test(name)) continue;
    throw new HfFormatError(
      name.endsWith(".bias")
        ? `${dir}: tensor ${name} is a bias; LLaMA here has none (attention_bias/mlp_bias)`
        : `${dir}: unexpected tensor ${name} (not part of a LlamaForCausalLM)`,
    );
  }
}

/**
 * Loads the folder under `method` (default: dense for a plain folder, the folder's own SLTrain settings
 * for a factor folder). Throws {@link HfFormatError} for a folder that is not a LLaMA this library
 * can run, naming the file, field or tensor; a factor folder loads only as sltrain with its own
 * rank, alpha and density, or merged as dense.
 */
export async function loadHf(
  folder: ModelFolder,
  method?: LinearMethod,
  opts: LoadHfOptions = {},
): Promise<HfLoaded> {
  const dir = folder.name;
  const hf = await readHfConfig(folder);
  const { config } = hf;
  const stored = folderMethod(hf);
  const want = validateMethod(config, method ?? stored);
  if (stored.kind === "sltrain") checkFactorMethod(dir, stored, want);
  const weights = await openHfWeights(folder);
  const made: unknown[] = [];
  const own = <T>(t: T) => (made.push(t), t);
  try {
    checkFitsFiles(dir, config, stored, weights);
    const shapes = blockLinearShapes(config);
    const expected = expectedTensors(config, stored);
    checkNames(dir, weights, new Set(expected.keys()));
    // Every shape and dtype is checked before the first tensor is allocated.
    for (const [name, [shape, dtype]] of expected) weights.check(name, shape, dtype);
    const { vocabSize: v, hidden: d } = config;
    const read = async (name: string, shape: number[]) => own(await weights.readF32(name, shape));
    const embed = await read(HF_NAMES.embed, [v, d]);
    const rng = new Rng(opts.seed ?? 0);
    const errors: number[] = [];
    const layers: LayerParams[] = [];
    const layerBuffers: LayerBuffers[] = [];
    for (let i = 0; i < config.layers; i++) {
      const attnNorm = await read(HF_NAMES.attnNorm(i), [d]);
      const mlpNorm = await read(HF_NAMES.mlpNorm(i), [d]);
      const lin: Record<string, LinearParams> = {};
      const buf: Record<string, Tensor> = {};
      for (const { name, shape: [out, inF] } of shapes) {
        const prefix = HF_NAMES.linear(i, name);
        const seed = rng.nextU32();
        let p: LinearParams;
        let b: Tensor | undefined;
        if (stored.kind === "sltrain") {
          const r = stored.rank;
          const nnz = sparseNnz(stored.delta, out, inF);
          const f = {
            B: own(await weights.readF32(`${prefix}.B`, [out, r])),
            A: own(await weights.readF32(`${prefix}.A`, [r, inF])),
            V: own(await weights.readF32(`${prefix}.V`, [nnz])),
          };
          const I = own(await weights.readU32(`${prefix}.I`, [nnz]));
          if (want.kind === "sltrain") [p, b] = [f, I];
          else {
            p = { w: own(denseWeight(stored, f, I)) };
            tree.dispose([f, I]);
          }
        } else {
          [p, b] = await fromDense(
            await weights.readF32(`${prefix}.weight`, [out, inF]),
            want,
            seed,
            errors,
          );
          own([p, b]);
        }
        lin[name] = p;
        if (b) buf[name] = b;
      }
      layers.push({ attnNorm, mlpNorm, ...lin } as LayerParams);
      layerBuffers.push(buf);
    }
    const finalNorm = await read(HF_NAMES.finalNorm, [d]);
    const lmHead = await read(HF_NAMES.lmHead, [v, d]);
    const notes = errors.length === 0 ? [] : [
      `${want.kind} from dense weights: rank ${(want as { rank: number }).rank}` +
      (want.kind === "sltrain" ? ` + δ ${want.delta} sparse` : "") +
      ` approximation, relative Frobenius error median ${median(errors).toFixed(4)}, max ${
        Math.max(...errors).toFixed(4)
      }`,
    ];
    return {
      model: { config, method: want, buffers: { layers: layerBuffers } },
      params: { embed, layers, finalNorm, lmHead },
      hf,
      notes,
    };
  } catch (e) {
    tree.dispose(made);
    throw e;
  } finally {
    weights.close();
  }
}

function checkFactorMethod(
  dir: string,
  stored: LinearMethod & { kind: "sltrain" },
  want: LinearMethod,
): void {
  if (want.kind === "dense") return;
  if (
    want.kind !== "sltrain" || want.rank !== stored.rank || want.alpha !== stored.alpha ||
    want.delta !== stored.delta
  ) {
    throw new HfFormatError(
      `${dir} holds SLTrain factors (rank ${stored.rank}, alpha ${stored.alpha}, delta ${stored.delta}); ` +
        `load it as sltrain with exactly those settings, or as dense (full, galore); got ${
          JSON.stringify(want)
        }`,
    );
  }
}

/** One dense weight W (consumed) as the params (and buffer) of `method`. */
async function fromDense(
  W: Tensor,
  method: LinearMethod,
  seed: number,
  errors: number[],
): Promise<[LinearParams, Tensor | undefined]> {
  const [out, inF] = W.shape;
  if (method.kind === "dense") return [{ w: W }, undefined];
  if (method.kind === "relora") {
    const bound = 1 / Math.sqrt(inF);
    const A = randomUniform([method.rank, inF], -bound, bound, { seed });
    return [{ A, B: zeros([out, method.rank]) }, W];
  }
  let w: Float32Array;
  try {
    w = (await W.data()) as Float32Array;
  } finally {
    W.dispose();
  }
  const nnz = method.kind === "sltrain" ? sparseNnz(method.delta, out, inF) : 0;
  const f = factorize(w, out, inF, method.rank, linearScale(method), nnz);
  errors.push(f.relError);
  const B = tensor(f.B, [out, method.rank]);
  const A = tensor(f.A, [method.rank, inF]);
  if (method.kind === "lowrank") return [{ A, B }, undefined];
  return [{ A, B, V: tensor(f.V!, [nnz]) }, tensor(f.I!, [nnz], "u32")];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
