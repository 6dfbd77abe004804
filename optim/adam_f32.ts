/**
 * The f32 moment store of Adam and AdamW: one in-place kernel per parameter (g becomes the update,
 * m and v their new moments; g and p may be bf16), and a multi-tensor kernel that steps up to 8
 * f32 parameters per dispatch with the same arithmetic, so the whole step takes about n / 8
 * dispatches for n parameters (on a software adapter each dispatch costs tens of microseconds
 * before any work, and a model has many small parameters: norm gains, low-rank factors).
 * @module
 */
import { defineKernel, kernelFamily, type StorageType } from "../core/define_kernel.ts";
import { donate, inPlaceWindow } from "../core/donate.ts";
import { assertDType } from "../core/dtype.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import { maxWindowBytes, rowAlignment } from "../core/windows.ts";
import { ADAM_SCALARS, ADAM_WGSL, type AdamScalars, type MomentStore } from "./adam_core.ts";
import {
  dispatchInGroups,
  elementwiseInPlace,
  FLOAT_DTYPES,
  multiTensorBody,
} from "./elementwise_kernel.ts";

// One kernel for both: g turns into the update in place, m and v are updated in place, and with
// `decay` the parameter p adds decay·p. Every per-step scalar rides in the uniform, so one compiled
// pipeline serves every step and every parameter (per dtype of g and p).
const ADAM_ELEM = (decay: boolean) =>
  `  let mv = adam_moments(load_x(k), load_mt(k), load_vt(k));
  store_mt(k, mv.x);
  store_vt(k, mv.y);
  return adam_direction(mv)${decay ? " + u.decay * load_p(k)" : ""};`;
const ADAM = elementwiseInPlace({
  name: "adam",
  updates: ["mt", "vt"],
  uniforms: ADAM_SCALARS,
  helpers: ADAM_WGSL,
  elem: ADAM_ELEM(false),
});
const ADAMW = elementwiseInPlace({
  name: "adamw",
  reads: ["p"],
  updates: ["mt", "vt"],
  uniforms: ADAM_SCALARS,
  helpers: ADAM_WGSL,
  elem: ADAM_ELEM(true),
});

/**
 * One Adam step on one parameter, all in place: g becomes stepSize·m/(√v·invSqrtBc2 + eps) +
 * decay·p (p only when `p` is given), m and v their new moments. Consumes g, m, v; g and p may be
 * bf16 (the update then takes g's dtype), m and v are f32.
 */
function adamStep(
  g: Tensor,
  m: Tensor,
  v: Tensor,
  p: Tensor | undefined,
  s: AdamScalars,
): { u: Tensor; m: Tensor; v: Tensor } {
  assertDType("adam", FLOAT_DTYPES, ["g", g], ...(p ? [["p", p] as const] : []));
  assertDType("adam", ["f32"], ["m", m], ["v", v]);
  // (The moments bind as mt, vt: a binding named v would shadow store_x's parameter v.)
  const moments = { mt: donate(m), vt: donate(v) };
  const u = p ? ADAMW(g, { p, ...moments }, { ...s }) : ADAM(g, moments, { ...s });
  return { u, m: moments.mt, v: moments.vt };
}

// Adam over k parameters laid end to end in one flat grid (see `multiTensorBody`).
const multiAdamKernel = kernelFamily((k: number, decay: boolean) => {
  const inputs: Record<string, StorageType> = {};
  const outputs: Record<string, StorageType> = {};
  for (let j = 0; j < k; j++) {
    if (decay) inputs[`p${j}`] = "f32";
    Object.assign(outputs, { [`g${j}`]: "f32", [`mt${j}`]: "f32", [`vt${j}`]: "f32" });
  }
  return defineKernel({
    name: `adam_multi${k}`,
    inputs,
    outputs,
    // ADAM_SCALARS, and the running element counts.
    uniforms: {
      b1: "f32",
      b2: "f32",
      eps: "f32",
      stepSize: "f32",
      invSqrtBc2: "f32",
      decay: "f32",
      ends: ["u32", k] as const,
    },
    grid: "flat",
    helpers: ADAM_WGSL,
    body: multiTensorBody(
      k,
      (j) =>
        `      let mv = adam_moments(load_g${j}(e), load_mt${j}(e), load_vt${j}(e));
      store_mt${j}(e, mv.x);
      store_vt${j}(e, mv.y);
      store_g${j}(e, adam_direction(mv)${decay ? ` + u.decay * load_p${j}(e)` : ""});`,
    ),
  });
});

/**
 * Steps the parameters that are all f32 and within one binding, in groups of up to 8 per
 * dispatch, in place like the single-tensor kernel: consumes their g, m, v and returns the updates
 * and new moments by index (the others are left to `adamStep`).
 */
function multiAdamStep(
  g: readonly Tensor[],
  m: readonly Tensor[],
  v: readonly Tensor[],
  p: readonly (Tensor | undefined)[] | undefined,
  s: AdamScalars,
): Map<number, { u: Tensor; m: Tensor; v: Tensor }> {
  const out = new Map<number, { u: Tensor; m: Tensor; v: Tensor }>();
  if (!multiTensor) return out;
  const decay = p !== undefined;
  const idx = g.map((_, i) => i).filter((i) =>
    g[i].dtype === "f32" && (!decay || p[i]?.dtype === "f32") && g[i].bytes <= maxWindowBytes()
  );
  dispatchInGroups(idx.length, decay ? 4 : 3, 8, (n, j, bindings) => {
    const i = idx[n];
    const r = { u: donate(g[i]), m: donate(m[i]), v: donate(v[i]) };
    out.set(i, r);
    Object.assign(bindings, { [`g${j}`]: r.u, [`mt${j}`]: r.m, [`vt${j}`]: r.v });
    if (decay) bindings[`p${j}`] = p[i]!;
    return r.u.size;
  }, (k, bindings, uniforms) => multiAdamKernel(k, decay)(bindings, { ...s, ...uniforms }));
  return out;
}

let multiTensor = true;

/**
 * Allows (default) or forbids the multi-tensor kernel (every parameter then takes its own
 * dispatch; the results are the same bits); returns the previous setting. Meant for tests and
 * benchmarks.
 */
export function setMultiTensorAdam(enabled: boolean): boolean {
  const prev = multiTensor;
  multiTensor = enabled;
  return prev;
}

/** f32 moments, updated in place by the kernels above (the 8-bit variant's small tensors too). */
export const F32_MOMENTS: MomentStore<Tensor> = {
  init: (p) => ({ m: zeros(p.shape), v: zeros(p.shape) }),
  step: adamStep,
  stepMany: multiAdamStep,
  windows: {
    rowMultiple: (_m, rowElems) => rowAlignment(4 * rowElems),
    window: inPlaceWindow,
  },
};
