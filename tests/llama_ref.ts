/**
 * A float64 CPU reference of the LLaMA forward and loss (models/llama.ts), written from the math
 * rather than from the GPU code: embedding, RMSNorm, rotate-half RoPE, causal multi-head attention,
 * SwiGLU, untied head, cross-entropy with an ignore index, and each block-linear method with W
 * formed densely (ReLoRA: frozen W plus s·B·A). Slow and simple on purpose; used for finite differences in tests/llama_test.ts.
 */
import type { LinearMethod } from "../models/method.ts";

/** Shapes and constants the reference needs (a subset of LlamaConfig). */
export interface RefConfig {
  vocabSize: number;
  hidden: number;
  intermediate: number;
  heads: number;
  layers: number;
  rmsNormEps: number;
  ropeBase: number;
}

/** Parameters by dotted path (`embed`, `layers.0.q.A`, ...), row-major float64. */
export type RefParams = Map<string, Float64Array>;

/**
 * A model for the reference: params by path, and buffers by linear path (`layers.0.q`): SLTrain
 * supports or ReLoRA frozen weights.
 */
export interface RefModel {
  config: RefConfig;
  method: LinearMethod;
  params: RefParams;
  buffers: Map<string, ArrayLike<number>>;
}

const LINEAR_SHAPES = (c: RefConfig): [string, number, number][] => [
  ["q", c.hidden, c.hidden],
  ["k", c.hidden, c.hidden],
  ["v", c.hidden, c.hidden],
  ["o", c.hidden, c.hidden],
  ["gate", c.intermediate, c.hidden],
  ["up", c.intermediate, c.hidden],
  ["down", c.hidden, c.intermediate],
];

function get(p: RefParams, path: string): Float64Array {
  const v = p.get(path);
  if (!v) throw new Error(`reference: missing parameter ${path}`);
  return v;
}

/** Dense W [out, in] of a block linear under the model's method. */
export function refWeight(m: RefModel, path: string, out: number, inF: number): Float64Array {
  const { method, params } = m;
  if (method.kind === "dense") return get(params, `${path}.w`);
  const s = method.alpha / method.rank;
  const r = method.rank;
  const A = get(params, `${path}.A`);
  const B = get(params, `${path}.B`);
  const W = new Float64Array(out * inF);
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inF; j++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B[i * r + k] * A[k * inF + j];
      W[i * inF + j] = s * acc;
    }
  }
  if (method.kind === "relora") {
    const W0 = m.buffers.get(path);
    if (!W0) throw new Error(`reference: missing frozen weight ${path}`);
    for (let k = 0; k < W.length; k++) W[k] += W0[k];
  }
  if (method.kind === "sltrain") {
    const V = get(params, `${path}.V`);
    const I = m.buffers.get(path);
    if (!I) throw new Error(`reference: missing support ${path}`);
    for (let k = 0; k < I.length; k++) W[I[k]] += V[k];
  }
  return W;
}

/** y [n, out] = x [n, in] · Wᵀ. */
function linear(
  x: Float64Array,
  n: number,
  W: Float64Array,
  out: number,
  inF: number,
): Float64Array {
  const y = new Float64Array(n * out);
  for (let t = 0; t < n; t++) {
    for (let o = 0; o < out; o++) {
      let acc = 0;
      for (let j = 0; j < inF; j++) acc += x[t * inF + j] * W[o * inF + j];
      y[t * out + o] = acc;
    }
  }
  return y;
}

function rmsNorm(
  x: Float64Array,
  n: number,
  d: number,
  w: Float64Array,
  eps: number,
): Float64Array {
  const y = new Float64Array(n * d);
  for (let t = 0; t < n; t++) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x[t * d + j] ** 2;
    const r = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) y[t * d + j] = x[t * d + j] * r * w[j];
  }
  return y;
}

/** RoPE in place on x [B, T, H, Dh] (the token-major layout), rotate-half, f32-rounded freqs. */
function rope(x: Float64Array, b: number, t: number, h: number, dh: number, base: number): void {
  const half = dh / 2;
  for (let bi = 0; bi < b; bi++) {
    for (let ti = 0; ti < t; ti++) {
      for (let hi = 0; hi < h; hi++) {
        const o = ((bi * t + ti) * h + hi) * dh;
        for (let i = 0; i < half; i++) {
          const a = ti * Math.fround(Math.pow(base, (-2 * i) / dh));
          const c = Math.cos(a), s = Math.sin(a);
          const x1 = x[o + i], x2 = x[o + half + i];
          x[o + i] = x1 * c - x2 * s;
          x[o + half + i] = x2 * c + x1 * s;
        }
      }
    }
  }
}

/** Causal attention on [B, T, H, Dh] token-major q, k, v -> [B, T, H·Dh]. */
function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  b: number,
  t: number,
  h: number,
  dh: number,
): Float64Array {
  const out = new Float64Array(b * t * h * dh);
  const at = (bi: number, ti: number, hi: number) => ((bi * t + ti) * h + hi) * dh;
  const p = new Float64Array(t);
  for (let bi = 0; bi < b; bi++) {
    for (let hi = 0; hi < h; hi++) {
      for (let i = 0; i < t; i++) {
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let c = 0; c < dh; c++) s += q[at(bi, i, hi) + c] * k[at(bi, j, hi) + c];
          p[j] = s / Math.sqrt(dh);
          m = Math.max(m, p[j]);
        }
        let z = 0;
        for (let j = 0; j <= i; j++) z += p[j] = Math.exp(p[j] - m);
        for (let j = 0; j <= i; j++) {
          for (let c = 0; c < dh; c++) out[at(bi, i, hi) + c] += (p[j] / z) * v[at(bi, j, hi) + c];
        }
      }
    }
  }
  return out;
}

/** Logits [B·T·V] (row-major [B, T, V]) for `tokens` [B·T]. */
export function refLogits(
  m: RefModel,
  tokens: ArrayLike<number>,
  b: number,
  t: number,
): Float64Array {
  const c = m.config;
  const { hidden: d, heads: h, rmsNormEps: eps } = c;
  const dh = d / h;
  const n = b * t;
  const embed = get(m.params, "embed");
  let x = new Float64Array(n * d);
  for (let i = 0; i < n; i++) x.set(embed.subarray(tokens[i] * d, (tokens[i] + 1) * d), i * d);
  for (let l = 0; l < c.layers; l++) {
    const pre = `layers.${l}`;
    const W = new Map(
      LINEAR_SHAPES(c).map(([name, out, inF]) => [
        name,
        (y: Float64Array) => linear(y, n, refWeight(m, `${pre}.${name}`, out, inF), out, inF),
      ]),
    );
    const lin = (name: string, y: Float64Array) => W.get(name)!(y);
    const n1 = rmsNorm(x, n, d, get(m.params, `${pre}.attnNorm`), eps);
    const q = lin("q", n1), k = lin("k", n1), v = lin("v", n1);
    rope(q, b, t, h, dh, c.ropeBase);
    rope(k, b, t, h, dh, c.ropeBase);
    const o = lin("o", attention(q, k, v, b, t, h, dh));
    const x1 = x.map((xi, i) => xi + o[i]);
    const n2 = rmsNorm(x1, n, d, get(m.params, `${pre}.mlpNorm`), eps);
    const g = lin("gate", n2), u = lin("up", n2);
    const act = g.map((gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]);
    const down = lin("down", act);
    x = x1.map((xi, i) => xi + down[i]);
  }
  const xf = rmsNorm(x, n, d, get(m.params, "finalNorm"), eps);
  return linear(xf, n, get(m.params, "lmHead"), c.vocabSize, d);
}

/** Mean cross-entropy over targets other than `ignoreIndex` (0 if all are ignored). */
export function refLoss(
  m: RefModel,
  tokens: ArrayLike<number>,
  targets: ArrayLike<number>,
  b: number,
  t: number,
  ignoreIndex = -100,
): number {
  const vocab = m.config.vocabSize;
  const logits = refLogits(m, tokens, b, t);
  let sum = 0, count = 0;
  for (let i = 0; i < b * t; i++) {
    if (targets[i] === ignoreIndex) continue;
    const row = logits.subarray(i * vocab, (i + 1) * vocab);
    const mx = Math.max(...row);
    let z = 0;
    for (const v of row) z += Math.exp(v - mx);
    sum += mx + Math.log(z) - row[targets[i]];
    count++;
  }
  return count === 0 ? 0 : sum / count;
}
