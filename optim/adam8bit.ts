/**
 * 8-bit Adam (bitsandbytes' block-wise `Adam8bit`, Dettmers et al. 2022): both moments stored as
 * one-byte codes of the dynamic maps (`ops/quant_maps.ts`: signed for m, unsigned for v) with one
 * f32 absmax per block of 256 elements, about 2.03 bytes per parameter instead of 8. Tensors under
 * 4096 elements keep f32 moments, as bitsandbytes does.
 *
 * One fused kernel per parameter and step, one workgroup per block: 64 invocations own 4 elements
 * each (one 32-bit word of codes), dequantize the old moments, run the AdamW arithmetic in f32 —
 * the update uses the new moments before they are quantized — then find the block's new absmax by
 * a workgroup reduction and requantize to the nearest code (found from the map's structure, checked
 * against its neighbours in the code book, which rides in the uniform and is kept in workgroup
 * memory).
 * @module
 */
import { defineKernel, kernelFamily, type StorageType } from "../core/define_kernel.ts";
import { gpuDevice } from "../core/device.ts";
import { donate, inPlaceWindow } from "../core/donate.ts";
import { assertDType } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { grid1d } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { forEachWindow, lcm } from "../core/windows.ts";
import { dynamicMap, MIN_8BIT_SIZE, QUANT_BLOCK } from "../ops/quant_maps.ts";
import {
  ADAM_SCALARS,
  ADAM_WGSL,
  type AdamOptions,
  type AdamScalars,
  adamTransforms,
  type AdamWOptions,
  type MomentsState,
  type MomentStore,
} from "./adam_core.ts";
import { F32_MOMENTS } from "./adam_f32.ts";
import { FLOAT_DTYPES } from "./elementwise_kernel.ts";
import type { GradientTransformation } from "./transform.ts";

/** A block-quantized moment: a code of the dynamic map per element and an absmax per block. */
export interface QuantizedMoment {
  /** One u8 code per element, flat `[n]` (ceil(n/4)·4 bytes). */
  codes: Tensor;
  /** max |x| of each block of 256 elements, f32 `[ceil(n/256)]`. */
  absmax: Tensor;
}

/** One moment of {@link scaleByAdam8bit}: quantized, or f32 for tensors under 4096 elements. */
export type Moment8bit = Tensor | QuantizedMoment;

/** State of {@link scaleByAdam8bit} and {@link adamw8bit}. */
export type Adam8bitState = MomentsState<Moment8bit>;

/** True when a moment is block-quantized (a tensor of at least 4096 elements). */
export function isQuantized(m: Moment8bit): m is QuantizedMoment {
  return !tree.isTensor(m);
}

const WG = 64;
const PER_INVOCATION = QUANT_BLOCK / WG;

// Signed map (m) in entries 0-255, unsigned (v) in 256-511: the code books ride in the uniform.
const MAPS = [...dynamicMap(true), ...dynamicMap(false)];

// Nearest codes without a search: the dynamic map's codes are evenly spaced within each decade,
// so the decade (from log10) and the position in it give a code within one of the nearest, and
// the nearest of it and its two neighbours is the nearest code (ties to the lower index, as
// ops/quant_maps.ts nearestCode). Decade i (0-6) holds k = 2^(i+e) codes
// 10^(i-6)·(0.1 + 0.9·(j + 1/2)/k), j < k, at sorted indices c + k + j: signed e = 0, c = 127 for
// the positive half (the negative half mirrored: index 254 − p); unsigned e = 1, c = −1. Faster
// than an 8-step binary search (bench/NOTES.md).
const QUANTIZE_WGSL = `fn code_guess(a: f32, e: u32, c: i32) -> i32 {
  let i = clamp(i32(floor(log2(max(a, 1e-30)) * 0.30103)) + 7, 0, 6);
  let k = 1 << (u32(i) + e);
  let t = (a * exp2(f32(6 - i) * 3.3219281) - 0.1) * (f32(k) / 0.9);
  return c + k + clamp(i32(floor(t)), 0, k);
}
${
  ["mapS", "mapU"].map((book) =>
    `fn nearest_${book}(x: f32, guess: i32) -> u32 {
  let c = u32(clamp(guess, 1, 254));
  var best = c - 1u;
  var d = abs(x - ${book}[best]);
  if (abs(x - ${book}[c]) < d) { best = c; d = abs(x - ${book}[c]); }
  if (abs(x - ${book}[c + 1u]) < d) { best = c + 1u; }
  return best;
}`
  ).join("\n")
}
fn nearest_signed(x: f32) -> u32 {
  let p = code_guess(abs(x), 0u, 127);
  return nearest_mapS(x, select(p, 254 - p, x < 0.0));
}
fn nearest_unsigned(x: f32) -> u32 { return nearest_mapU(x, code_guess(x, 1u, -1)); }`;

// Blocks of 256 elements, one workgroup each (a 2-D grid past 65535 blocks); element k of a window
// is in block k / 256. x is the gradient, rewritten into the update; mc/vc the codes (four per
// word, element 4w + j in byte j of word w), ma/va the absmax per block.
const adam8bitKernel = kernelFamily((gType: "f32" | "bf16", pType: "f32" | "bf16" | null) => {
  const inputs: Record<string, StorageType> = pType ? { p: pType } : {};
  const decay = pType ? " + u.decay * load_p(k)" : "";
  const storeUpdate = gType === "bf16"
    ? `  if (first < u.count) { store_x_pair(2u * w, upd[0], upd[1]); }
  if (first + 2u < u.count) { store_x_pair(2u * w + 1u, upd[2], upd[3]); }`
    : `  for (var j = 0u; j < 4u; j++) { if (first + j < u.count) { store_x(first + j, upd[j]); } }`;
  return defineKernel({
    name: "adam8bit",
    inputs,
    outputs: { x: gType, mc: "u8", vc: "u8", ma: "f32", va: "f32" },
    uniforms: {
      ...Object.fromEntries(ADAM_SCALARS.map((name) => [name, "f32" as const])),
      count: "u32",
      blocks: "u32",
      maps: ["f32", 2 * 256],
    },
    grid: {
      workgroupSize: [WG],
      builtins: { lid: "local_invocation_id", wid: "workgroup_id", nwg: "num_workgroups" },
    },
    helpers: `var<workgroup> mapS: array<f32, 256>;
var<workgroup> mapU: array<f32, 256>;
var<workgroup> redM: array<f32, ${WG}>;
var<workgroup> redV: array<f32, ${WG}>;
${ADAM_WGSL}
${QUANTIZE_WGSL}`,
    body: `  let b = wid.x + wid.y * nwg.x;
  if (b >= u.blocks) { return; }
  let l = lid.x;
  for (var j = 0u; j < ${PER_INVOCATION}u; j++) {
    mapS[${PER_INVOCATION}u * l + j] = u_maps(${PER_INVOCATION}u * l + j);
    mapU[${PER_INVOCATION}u * l + j] = u_maps(256u + ${PER_INVOCATION}u * l + j);
  }
  let w = b * ${WG}u + l;
  let first = 4u * w;
  let oldM = ma[b];
  let oldV = va[b];
  var mw = 0u;
  var vw = 0u;
  if (first < u.count) { mw = mc[w]; vw = vc[w]; }
  workgroupBarrier();
  var mNew = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
  var vNew = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
  var upd = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
  var amM = 0.0;
  var amV = 0.0;
  for (var j = 0u; j < 4u; j++) {
    let k = first + j;
    if (k < u.count) {
      let m0 = mapS[(mw >> (8u * j)) & 255u] * oldM;
      let v0 = mapU[(vw >> (8u * j)) & 255u] * oldV;
      let mv = adam_moments(load_x(k), m0, v0);
      upd[j] = adam_direction(mv)${decay};
      mNew[j] = mv.x;
      vNew[j] = mv.y;
      amM = max(amM, abs(mv.x));
      amV = max(amV, mv.y);
    }
  }
${storeUpdate}
  redM[l] = amM;
  redV[l] = amV;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (l < s) {
      redM[l] = max(redM[l], redM[l + s]);
      redV[l] = max(redV[l], redV[l + s]);
    }
    workgroupBarrier();
  }
  let absM = redM[0];
  let absV = redV[0];
  let invM = select(0.0, 1.0 / absM, absM > 0.0);
  let invV = select(0.0, 1.0 / absV, absV > 0.0);
  var cm = 0u;
  var cv = 0u;
  for (var j = 0u; j < 4u; j++) {
    cm = cm | (nearest_signed(mNew[j] * invM) << (8u * j));
    cv = cv | (nearest_unsigned(vNew[j] * invV) << (8u * j));
  }
  if (first < u.count) {
    store_mc_word(w, cm);
    store_vc_word(w, cv);
  }
  if (l == 0u) {
    ma[b] = absM;
    va[b] = absV;
  }`,
  });
});

// Windows of moments start on whole blocks whose absmax windows start aligned too (an absmax of
// 4 bytes per 256 codes): element starts a multiple of this.
function windowMultiple(): number {
  return Math.max(QUANT_BLOCK, 64 * gpuDevice().limits.minStorageBufferOffsetAlignment);
}

function blocksOf(n: number): number {
  return Math.ceil(n / QUANT_BLOCK);
}

function checkMoment(name: string, q: QuantizedMoment, g: Tensor): void {
  assertDType("adam8bit", ["u8"], [`${name}.codes`, q.codes]);
  assertDType("adam8bit", ["f32"], [`${name}.absmax`, q.absmax]);
  if (q.codes.size !== g.size || q.absmax.size !== blocksOf(g.size)) {
    throw new ShapeError(
      `adam8bit: ${name} has codes ${fmtShape(q.codes.shape)} and absmax ` +
        `${fmtShape(q.absmax.shape)} for a gradient ${fmtShape(g.shape)} (want [${g.size}] and ` +
        `[${blocksOf(g.size)}])`,
    );
  }
}

/**
 * One 8-bit Adam step on one parameter, all in place (consumes g and both moments): g becomes the
 * update, in its own dtype; windows of whole aligned blocks for tensors past one binding.
 */
function adam8bitStep(
  g: Tensor,
  m: QuantizedMoment,
  v: QuantizedMoment,
  p: Tensor | undefined,
  s: AdamScalars,
): { u: Tensor; m: QuantizedMoment; v: QuantizedMoment } {
  assertDType("adam8bit", FLOAT_DTYPES, ["g", g], ...(p ? [["p", p] as const] : []));
  checkMoment("m", m, g);
  checkMoment("v", v, g);
  if (p && p.size !== g.size) {
    throw new ShapeError(`adam8bit: p ${fmtShape(p.shape)} and g ${fmtShape(g.shape)} differ`);
  }
  const kernel = adam8bitKernel(
    g.dtype as "f32" | "bf16",
    p ? p.dtype as "f32" | "bf16" : null,
  );
  const u = donate(g);
  const next = {
    m: { codes: donate(m.codes), absmax: donate(m.absmax) },
    v: { codes: donate(v.codes), absmax: donate(v.absmax) },
  };
  const same = [u, next.m.codes, next.v.codes, ...(p ? [p] : [])];
  forEachWindow(same, ([x, mc, vc, pv], start, count) => {
    const blocks = blocksOf(count);
    const ma = next.m.absmax.rows(start / QUANT_BLOCK, blocks);
    const va = next.v.absmax.rows(start / QUANT_BLOCK, blocks);
    try {
      kernel(
        { x, mc, vc, ma, va, ...(pv ? { p: pv } : {}) },
        { ...s, count, blocks, maps: MAPS },
        grid1d(blocks, 1),
      );
    } finally {
      ma.dispose();
      va.dispose();
    }
  }, windowMultiple());
  return { u, ...next };
}

/**
 * 8-bit moments: block-quantized for tensors of at least 4096 elements, f32 (the ordinary Adam
 * kernel) below.
 */
const MOMENTS_8BIT: MomentStore<Moment8bit> = {
  init(p) {
    if (p.size < MIN_8BIT_SIZE) return F32_MOMENTS.init(p);
    const quantized = () => ({ codes: zeros([p.size], "u8"), absmax: zeros([blocksOf(p.size)]) });
    return { m: quantized(), v: quantized() };
  },
  step(g, m, v, p, s) {
    if (isQuantized(m) && isQuantized(v)) return adam8bitStep(g, m, v, p, s);
    if (!isQuantized(m) && !isQuantized(v)) return F32_MOMENTS.step(g, m, v, p, s);
    throw new TypeError("adam8bit: one moment is quantized and the other is not");
  },
  // Rows on whole quantization blocks: each block's absmax and codes are then the same bits.
  windows: {
    rowMultiple: (m, rowElems) =>
      isQuantized(m)
        ? lcm(windowMultiple(), rowElems) / rowElems
        : F32_MOMENTS.windows!.rowMultiple(m, rowElems),
    window: (m, start, count) =>
      isQuantized(m)
        ? {
          codes: inPlaceWindow(m.codes, start, count),
          absmax: inPlaceWindow(m.absmax, start / QUANT_BLOCK, blocksOf(count)),
        }
        : F32_MOMENTS.windows!.window(m, start, count),
  },
};

const ADAM_8BIT = adamTransforms(MOMENTS_8BIT, ["scaleByAdam8bit", "adamw8bit"]);

/**
 * `scaleByAdam` with 8-bit block-quantized moments (tensors under 4096 elements keep f32
 * moments): same update arithmetic in f32, the moments stored as codes of bitsandbytes' dynamic
 * maps with an absmax per 256 elements. Needs no params, so it runs inside `galore` (GaLore8bit:
 * the moments quantized in the projected shape).
 */
export function scaleByAdam8bit(opts: AdamOptions = {}): GradientTransformation<Adam8bitState> {
  return ADAM_8BIT.direction(opts);
}

/**
 * `adamw` with 8-bit block-quantized moments (bitsandbytes' `AdamW8bit`): one fused kernel
 * per parameter dequantizes, updates in f32 and requantizes; the update uses the new moments
 * before quantization. Needs `params` when weightDecay > 0.
 */
export function adamw8bit(opts: AdamWOptions): GradientTransformation<Adam8bitState> {
  return ADAM_8BIT.fused(opts);
}
