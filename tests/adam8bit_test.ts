/**
 * 8-bit Adam: the fused device kernel against a float64 CPU reference of the same algorithm
 * (dequantize, AdamW, requantize to the nearest code; f32 and bf16 gradients and parameters;
 * tensors past one storage binding), the quantization error per block bounded by the code book's
 * spacing, 8-bit Adam tracking f32 Adam on random least-squares problems, GaLore8bit's moments in
 * the projected shape, per-layer updates, and the state's bytes. Tolerances are stated per
 * assertion.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { fromBf16Bits, toBf16Bits } from "../core/bf16.ts";
import { memoryStats } from "../core/memory.ts";
import { valueAndGrad } from "../core/tape.ts";
import { randomNormal, readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { cast, matmul, mean, mul, sub } from "../ops/mod.ts";
import { dynamicMap, nearestCode, QUANT_BLOCK } from "../ops/quant_maps.ts";
import {
  type Adam8bitState,
  adamw,
  adamw8bit,
  applyUpdates,
  chain,
  galore,
  type GaLoreState,
  type GradientTransformation,
  isQuantized,
  perLayer,
  type QuantizedMoment,
  scaleByAdam8bit,
  scaleByLearningRate,
} from "../optim/mod.ts";
import { backward, randomArr, setup, withBindingWindow } from "./util.ts";

await setup();

const MAP_S = dynamicMap(true);
const MAP_U = dynamicMap(false);
const [B1, B2, EPS] = [0.9, 0.999, 1e-8];
const bf16 = (x: number) => fromBf16Bits(toBf16Bits(x));

/** Inputs of one 8-bit step on one tensor, as f32-representable numbers. */
interface Case {
  g: Float64Array;
  p: Float64Array;
  codesM: Uint8Array;
  codesV: Uint8Array;
  absM: Float32Array;
  absV: Float32Array;
}

/**
 * Float64 reference of one fused 8-bit AdamW step (bias correction at step t). The scalars are
 * those the kernel receives, rounded to f32 as the uniform holds them (1 − β2 in f32 is 1.3e-5
 * off, far above the arithmetic's rounding).
 */
function reference(c: Case, t: number, lr: number, wd: number) {
  const n = c.g.length;
  const f = Math.fround;
  const [b1, b2] = [f(B1), f(B2)];
  const [c1, c2] = [f(1 - b1), f(1 - b2)];
  const stepSize = f(-lr / (1 - B1 ** t));
  const invSqrtBc2 = f(1 / Math.sqrt(1 - B2 ** t));
  const [eps, decay] = [f(EPS), f(-lr * wd)];
  const m = new Float64Array(n), v = new Float64Array(n), u = new Float64Array(n);
  // Magnitude of the terms each f32 result is made of: the scale of its rounding error.
  const mScale = new Float64Array(n), uScale = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const b = Math.floor(i / QUANT_BLOCK);
    const m0 = MAP_S[c.codesM[i]] * c.absM[b], v0 = MAP_U[c.codesV[i]] * c.absV[b];
    m[i] = b1 * m0 + c1 * c.g[i];
    v[i] = b2 * v0 + c2 * c.g[i] ** 2;
    mScale[i] = Math.abs(b1 * m0) + Math.abs(c1 * c.g[i]);
    const den = Math.sqrt(v[i]) * invSqrtBc2 + eps;
    u[i] = stepSize * m[i] / den + decay * c.p[i];
    uScale[i] = Math.abs(stepSize) * mScale[i] / den + Math.abs(decay * c.p[i]);
  }
  const blocks = Math.ceil(n / QUANT_BLOCK);
  const absM = new Float64Array(blocks), absV = new Float64Array(blocks);
  for (let i = 0; i < n; i++) {
    const b = Math.floor(i / QUANT_BLOCK);
    absM[b] = Math.max(absM[b], Math.abs(m[i]));
    absV[b] = Math.max(absV[b], v[i]);
  }
  return { m, v, u, mScale, uScale, absM, absV };
}

/** Half the distance from code c to its farther neighbour: the most a nearest code can be off. */
function halfGap(map: Float32Array, c: number): number {
  const lo = c > 0 ? map[c] - map[c - 1] : 0;
  const hi = c < 255 ? map[c + 1] - map[c] : 0;
  return Math.max(lo, hi) / 2;
}

/**
 * The device's codes against the reference: the nearest code to the reference value, or a
 * neighbour when the value lies within `tol` of the midpoint between them (f32 vs f64 rounding at
 * a tie); and, whatever the code, the dequantized value within half a code gap of the value.
 */
function checkCodes(
  what: string,
  map: Float32Array,
  got: Uint8Array,
  gotAbs: Float32Array,
  want: Float64Array,
  wantAbs: Float64Array,
  scale: Float64Array,
) {
  for (let i = 0; i < want.length; i++) {
    const b = Math.floor(i / QUANT_BLOCK);
    const a = wantAbs[b];
    const x = a > 0 ? want[i] / a : 0;
    const tol = a > 0 ? 1e-6 * scale[i] / a + 1e-6 : 0;
    const c = got[i], ref = nearestCode(map, x);
    if (c !== ref) {
      const mid = (map[c] + map[ref]) / 2;
      assert.ok(
        Math.abs(c - ref) === 1 && Math.abs(x - mid) <= tol,
        `${what}[${i}]: code ${c} (${map[c]}), nearest to ${x} is ${ref} (${map[ref]})`,
      );
    }
    const err = Math.abs(map[c] * gotAbs[b] - want[i]);
    assert.ok(
      err <= halfGap(map, c) * a + tol * a + 1e-6 * a,
      `${what}[${i}]: quantization error ${err} over half a code gap (absmax ${a})`,
    );
  }
}

async function checkStep(
  c: Case,
  gDtype: "f32" | "bf16",
  pDtype: "f32" | "bf16",
  t: number,
  lr: number,
  wd: number,
  shape: number[] = [c.g.length],
) {
  const n = c.g.length;
  const q = (codes: Uint8Array, abs: Float32Array): QuantizedMoment => ({
    codes: tensor(codes, [n], "u8"),
    absmax: tensor(abs),
  });
  const state: Adam8bitState = {
    count: t - 1,
    m: [q(c.codesM, c.absM)],
    v: [q(c.codesV, c.absV)],
  };
  const p = tensor(Float32Array.from(c.p), shape, pDtype);
  const opt = adamw8bit({ lr, weightDecay: wd });
  const r = await opt.update([tensor(Float32Array.from(c.g), shape, gDtype)], state, [p]);
  const [u] = r.updates as Tensor[];
  const m = r.state.m[0] as QuantizedMoment, v = r.state.v[0] as QuantizedMoment;
  const [gu, mc, ma, vc, va] = await readAll([u, m.codes, m.absmax, v.codes, v.absmax]);
  const out = { u: Float64Array.from(gu), absM: Float64Array.from(ma) };
  const want = reference(c, t, lr, wd);
  assert.equal(u.dtype, gDtype, "the update takes the gradient's dtype");
  for (let i = 0; i < n; i++) {
    // f32 arithmetic: a few ulps of the terms; a bf16 update is then rounded (2^-8 relative).
    const tol = 1e-6 * want.uScale[i] + (gDtype === "bf16" ? 2 ** -8 * Math.abs(want.u[i]) : 0);
    assert.ok(Math.abs(gu[i] - want.u[i]) <= tol, `update[${i}]: ${gu[i]} vs ${want.u[i]}`);
  }
  const maxScale = Math.max(...want.mScale);
  want.absM.forEach((a, b) => assert.ok(Math.abs(ma[b] - a) <= 1e-6 * maxScale, `absmax m ${b}`));
  want.absV.forEach((a, b) => assert.ok(Math.abs(va[b] - a) <= 1e-6 * a, `absmax v ${b}`));
  checkCodes("m", MAP_S, mc as Uint8Array, ma as Float32Array, want.m, want.absM, want.mScale);
  const vScale = want.v.map((x) => x);
  checkCodes("v", MAP_U, vc as Uint8Array, va as Float32Array, want.v, want.absV, vScale);
  tree.dispose([u, r.state, p]);
  return out;
}

/** Random inputs of n elements: old moments as random codes and absmax, values bf16 if asked. */
function randomCase(n: number, seed: number, round: (x: number) => number): Case {
  const g = randomArr([n], seed, -1, 1).data.map(round);
  const p = randomArr([n], seed + 1, -1, 1).data.map(round);
  const byte = (s: number) => Uint8Array.from(randomArr([n], s, 0, 256).data, Math.floor);
  const abs = (s: number) => Float32Array.from(randomArr([Math.ceil(n / 256)], s, 0, 0.5).data);
  return {
    g,
    p,
    codesM: byte(seed + 2),
    codesV: byte(seed + 3),
    absM: abs(seed + 4),
    absV: abs(5),
  };
}

Deno.test("adamw8bit's kernel matches a float64 reference of dequantize → AdamW → requantize (f32 and bf16 gradients and parameters)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 4096, max: 9000 }),
      fc.integer({ min: 1, max: 1e6 }),
      fc.constantFrom<["f32" | "bf16", "f32" | "bf16"]>(
        ["f32", "f32"],
        ["bf16", "bf16"],
        ["bf16", "f32"],
      ),
      fc.integer({ min: 1, max: 50 }),
      async (n, seed, [gd, pd], t) => {
        const c = randomCase(n, seed, gd === "bf16" ? bf16 : (x) => x);
        if (pd === "bf16") c.p = c.p.map(bf16);
        await checkStep(c, gd, pd, t, 0.01, 0.1);
      },
    ),
    { numRuns: 6, seed: 7 },
  );
});

Deno.test("adamw8bit from zero state: the first step is Adam's ±lr, and an all-zero block stays zero", async () => {
  const n = 4096 + 300;
  const c = randomCase(n, 3, (x) => x);
  c.codesM.fill(0);
  c.codesV.fill(0);
  c.absM.fill(0);
  c.absV.fill(0);
  c.g.fill(0, 256, 512); // block 1 all zero
  const got = await checkStep(c, "f32", "f32", 1, 0.01, 0);
  // Step 1 of Adam from zero moments is −lr·g/(|g| + eps), whatever the quantization; 1e-7
  // covers the f32 scalars (1 − β2 is 1.3e-5 off in f32, halved by the square root).
  got.u.forEach((x, i) => {
    const want = -0.01 * c.g[i] / (Math.abs(c.g[i]) + EPS);
    assert.ok(Math.abs(x - want) <= 1e-7, `update[${i}] ${x} vs ${want}`);
  });
  assert.equal(got.absM[1], 0);
});

Deno.test("the kernel's quantizer picks the nearest code at every code, around every midpoint and decade boundary, and below the smallest code", async () => {
  const around = (x: number) => [x * (1 - 1e-5), x, x * (1 + 1e-5)];
  const targets = (map: Float32Array) =>
    [
      ...map,
      ...[...map].slice(1).flatMap((c, k) => around((c + map[k]) / 2)),
      ...[0, 1, 2, 3, 4, 5, 6, 7].flatMap((d) => around(10 ** -d)),
      1e-8,
      3e-9,
      0,
    ].filter((x) => Math.abs(x) <= 1);
  // m normalizes to g / max|g| and v to g² / max g²: one pass aims at the signed codes with g,
  // one at the unsigned codes with g = √y. Element 0 of every block is 1, the block's absmax.
  for (const values of [targets(MAP_S), targets(MAP_U).map(Math.sqrt)]) {
    const per = QUANT_BLOCK - 1;
    const n = Math.max(4096, Math.ceil(values.length / per) * QUANT_BLOCK);
    const g = new Float64Array(n);
    for (let b = 0; b * QUANT_BLOCK < n; b++) {
      g[b * QUANT_BLOCK] = 1;
      values.slice(b * per, (b + 1) * per).forEach((x, i) => (g[b * QUANT_BLOCK + 1 + i] = x));
    }
    const c = randomCase(n, 1, (x) => x);
    c.g = g.map(Math.fround);
    for (const a of [c.codesM, c.codesV, c.absM, c.absV]) a.fill(0);
    await checkStep(c, "f32", "f32", 1, 0.01, 0);
  }
});

Deno.test("adamw8bit on a tensor past one storage binding: windows of whole blocks, every seam exact", async () => {
  await withBindingWindow(async (limit) => {
    const n = limit / 4 + 1000; // two windows; the last block partial
    const g = randomNormal([n], 0, 1, { seed: 11 });
    const p = randomNormal([n], 0, 1, { seed: 12 });
    // Blocks to check: first, both sides of the window seam (at 2^25 for a 128 MiB limit), last.
    const per = Math.floor(limit / 4 / 16384) * 16384;
    const starts = [0, per - 256, per, Math.floor((n - 1) / 256) * 256];
    const take = async (t: Tensor, len = 256, at = (s: number) => s) => {
      const flat = t.view([t.size]);
      const views = starts.map((s) => flat.rows(at(s), Math.min(len, t.size - at(s))));
      const data = await readAll(views);
      tree.dispose([flat, views]);
      return data.map((d) => Float64Array.from(d));
    };
    const [g0, p0] = [await take(g), await take(p)];
    const opt = adamw8bit({ lr: 0.01, weightDecay: 0.1 });
    const state = opt.init([p]);
    const r = await opt.update([g], state, [p]);
    const [u] = r.updates as Tensor[];
    const m = r.state.m[0] as QuantizedMoment;
    const got = await take(u);
    const codes = await take(m.codes);
    const absmax = await take(m.absmax, 1, (s) => s / 256);
    starts.forEach((_, k) => {
      const len = g0[k].length;
      const zeros = { codes: new Uint8Array(len), abs: new Float32Array(1) };
      const c: Case = {
        g: g0[k],
        p: p0[k],
        codesM: zeros.codes,
        codesV: zeros.codes,
        absM: zeros.abs,
        absV: zeros.abs,
      };
      const want = reference(c, 1, 0.01, 0.1);
      for (let i = 0; i < len; i++) {
        assert.ok(
          Math.abs(got[k][i] - want.u[i]) <= 1e-6 * want.uScale[i],
          `block at ${starts[k]}`,
        );
      }
      assert.ok(Math.abs(absmax[k][0] - want.absM[0]) <= 1e-6 * want.absM[0]);
      checkCodes(
        `m @${starts[k]}`,
        MAP_S,
        Uint8Array.from(codes[k]),
        Float32Array.from(absmax[k]),
        want.m,
        want.absM,
        want.mScale,
      );
    });
    // applyUpdates over the same windows: p + u at both ends of the seam.
    const next = applyUpdates([p], [u]);
    const after = await take(next[0]);
    after.forEach((a, k) =>
      a.forEach((x, i) => assert.equal(x, Math.fround(p0[k][i] + got[k][i]), `p @${starts[k]}`))
    );
    tree.dispose([next, r.state]);
  });
});

/** Least squares ‖X·Wᵀ − Y‖²/N with a planted W: a random problem Adam should solve. */
function leastSquares(seed: number, out: number, inF: number, rows: number) {
  const x = randomArr([rows, inF], seed, -1, 1);
  const w = randomArr([out, inF], seed + 1, -1, 1);
  const y = new Float64Array(rows * out);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < out; o++) {
      let s = 0;
      for (let k = 0; k < inF; k++) s += x.data[r * inF + k] * w.data[o * inF + k];
      y[r * out + o] = s;
    }
  }
  return {
    x: tensor(Float32Array.from(x.data), [rows, inF]),
    y: tensor(Float32Array.from(y), [rows, out]),
  };
}

async function train(
  opt: GradientTransformation,
  prob: { x: Tensor; y: Tensor },
  w0: Float32Array,
  shape: number[],
  steps: number,
) {
  const lossOf = (w: Tensor) => {
    const d = sub(matmul(prob.x, w, { transB: true }), prob.y);
    return mean(mul(d, d));
  };
  let params = [tensor(w0, shape)];
  let state = opt.init(params);
  for (let t = 0; t < steps; t++) {
    const { value, grads } = valueAndGrad((p: Tensor[]) => lossOf(p[0]))(params);
    value.dispose();
    const r = await opt.update(grads, state, params);
    state = r.state;
    params = applyUpdates(params, r.updates);
  }
  const { value } = valueAndGrad((p: Tensor[]) => lossOf(p[0]))(params);
  const [loss, w] = await readAll([value, params[0]]);
  tree.dispose([value, params, state]);
  return { loss: loss[0], w };
}

Deno.test("8-bit Adam tracks f32 Adam on random least-squares problems: final loss within 10% and weights within 5% of the distance travelled", async () => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 1e6 }), async (seed) => {
      const [out, inF, rows, steps] = [48, 96, 128, 60];
      const prob = leastSquares(seed, out, inF, rows);
      const w0 = Float32Array.from(randomArr([out, inF], seed + 2, -0.1, 0.1).data);
      const lr = 0.02;
      const f32 = await train(adamw({ lr }), prob, w0, [out, inF], steps);
      const q8 = await train(adamw8bit({ lr }), prob, w0, [out, inF], steps);
      let d = 0, travelled = 0;
      for (let i = 0; i < w0.length; i++) {
        d += (q8.w[i] - f32.w[i]) ** 2;
        travelled += (f32.w[i] - w0[i]) ** 2;
      }
      const rel = Math.sqrt(d / travelled);
      assert.ok(rel <= 0.05, `weights differ by ${rel} of the distance travelled`);
      assert.ok(
        Math.abs(q8.loss - f32.loss) <= 0.1 * f32.loss,
        `loss ${q8.loss} (8-bit) vs ${f32.loss} (f32)`,
      );
      tree.dispose(prob);
    }),
    { numRuns: 3, seed: 5 },
  );
});

Deno.test("GaLore8bit quantizes the moments in the projected shape; small tensors keep f32 moments", async () => {
  const [m, n, r] = [40, 300, 16]; // projected [16, 300] = 4800 ≥ 4096 elements
  const opt = chain(
    galore(scaleByAdam8bit(), { rank: r, updateProjGap: 10 }),
    scaleByLearningRate(0.01),
  );
  let params = [tensor(Float32Array.from(randomArr([m, n], 1).data), [m, n])];
  let state = opt.init(params);
  for (let t = 0; t < 2; t++) {
    const g = tensor(Float32Array.from(randomArr([m, n], 10 + t).data), [m, n]);
    const res = await opt.update([g], state, params);
    state = res.state;
    params = applyUpdates(params, res.updates);
  }
  const inner = (state[0] as GaLoreState).inner as Adam8bitState;
  const q = inner.m[0];
  assert.ok(isQuantized(q));
  assert.deepEqual(q.codes.shape, [r * n]);
  assert.deepEqual(q.absmax.shape, [Math.ceil((r * n) / 256)]);
  assert.equal(inner.count, 2);
  const small = adamw8bit({ lr: 0.01 }).init([tensor(new Float32Array(4095))]);
  assert.ok(!isQuantized(small.m[0]) && small.m[0].dtype === "f32");
  tree.dispose([params, state, small]);
});

Deno.test("adamw8bit state bytes: two code tensors of ceil(n/4)·4 and two absmax of ceil(n/256)·4 per large tensor, f32 moments below 4096; steps allocate nothing and reuse every buffer (bf16 parameters too)", async () => {
  const shapes = [[70, 61], [4095], [4096], [9, 1000]];
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const want = shapes.reduce((acc, s) => {
    const k = size(s);
    return acc + (k < 4096 ? 8 * k : 2 * (Math.ceil(k / 4) * 4 + Math.ceil(k / 256) * 4));
  }, 0);
  for (const dtype of ["f32", "bf16"] as const) {
    let params = shapes.map((s, i) => tensor(Float32Array.from(randomArr(s, i).data), s, dtype));
    const opt = adamw8bit({ lr: 0.01, weightDecay: 0.1 });
    const live0 = memoryStats().liveBytes;
    let state = opt.init(params);
    assert.equal(memoryStats().liveBytes - live0, want);
    assert.equal(tree.bytes(state), want);
    const step = async (seed: number) => {
      const grads = shapes.map((s, i) =>
        tensor(Float32Array.from(randomArr(s, seed + i).data), s, dtype)
      );
      const r = await opt.update(grads, state, params);
      state = r.state;
      params = applyUpdates(params, r.updates);
    };
    await step(10);
    const buffers = tree.flatten([params, state]).map((t) => t.storage.buffer);
    const before = memoryStats();
    await step(20);
    assert.equal(memoryStats().liveBytes, before.liveBytes);
    assert.deepEqual(tree.flatten([params, state]).map((t) => t.storage.buffer), buffers);
    assert.ok(params.every((p) => p.dtype === dtype));
    tree.dispose([params, state]);
  }
});

Deno.test("perLayer(adamw8bit) inside backward equals the whole-tree update bit for bit", async () => {
  const shapes: Record<string, number[]> = { w: [64, 80], b: [80], e: [50, 100] };
  const names = Object.keys(shapes);
  const fresh = () =>
    Object.fromEntries(
      names.map((k, i) => [k, tensor(Float32Array.from(randomArr(shapes[k], i).data), shapes[k])]),
    );
  const targets = fresh();
  const lossOf = (p: Record<string, Tensor>) =>
    names.map((k) => mean(mul(mul(p[k], p[k]), targets[k]))).reduce((a, b) => sub(a, b));
  const opt = adamw8bit({ lr: 0.01, weightDecay: 0.1 });
  const perLayerOpt = perLayer(opt);
  const a0 = fresh(), b0 = fresh();
  let whole = { params: a0, state: opt.init(a0) };
  let perLeaf = { params: b0, state: perLayerOpt.init(b0) };
  for (let t = 0; t < 3; t++) {
    const { value, grads } = valueAndGrad(lossOf)(whole.params);
    value.dispose();
    const r = await opt.update(grads, whole.state, whole.params);
    whole = { params: applyUpdates(whole.params, r.updates), state: r.state };
    const { value: v2, grads: g2 } = valueAndGrad(lossOf)(perLeaf.params);
    v2.dispose();
    const s = perLayerOpt.start(perLeaf.params, perLeaf.state);
    tree.flatten(g2).forEach((g, i) => s.onGrad(g, i));
    perLeaf = await s.finish();
  }
  // Parameters, then each parameter's m and v.
  const ordered = (params: unknown, m: unknown[], v: unknown[]) => tree.flatten([params, m, v]);
  const a = await readAll(ordered(whole.params, whole.state.m, whole.state.v));
  const b = await readAll(
    ordered(perLeaf.params, perLeaf.state.map((s) => s.m[0]), perLeaf.state.map((s) => s.v[0])),
  );
  assert.equal(a.length, b.length);
  a.forEach((x, i) => assert.deepEqual(b[i], x, `tensor ${i}`));
  tree.dispose([whole, perLeaf, targets]);
});

Deno.test("per-layer updates with bf16 weights and 8-bit states: bf16 gradients from the tape, parameters stay bf16, equal to the whole-tree update bit for bit", async () => {
  const shapes: Record<string, number[]> = { w: [64, 80], n: [80], e: [50, 100] };
  const names = Object.keys(shapes);
  const fresh = () =>
    Object.fromEntries(
      names.map((k, i) => [
        k,
        tensor(Float32Array.from(randomArr(shapes[k], i).data), shapes[k], "bf16"),
      ]),
    );
  const targets = Object.fromEntries(
    names.map((
      k,
      i,
    ) => [k, tensor(Float32Array.from(randomArr(shapes[k], 9 + i).data), shapes[k])]),
  );
  const lossOf = (p: Record<string, Tensor>) =>
    names.map((k) => {
      const x = cast(p[k], "f32");
      return mean(mul(mul(x, x), targets[k]));
    }).reduce((a, b) => sub(a, b));
  const opt = adamw8bit({ lr: 0.01, weightDecay: 0.1 });
  const perLayerOpt = perLayer(opt);
  const a0 = fresh(), b0 = fresh();
  const [w0] = await readAll([a0.w]);
  let whole = { params: a0, state: opt.init(a0) };
  let perLeaf = { params: b0, state: perLayerOpt.init(b0) };
  const gradDTypes = new Set<string>();
  for (let t = 0; t < 3; t++) {
    const grads = backward(whole.params, lossOf);
    grads.forEach((g) => gradDTypes.add(g.dtype));
    const r = await opt.update(tree.unflatten(whole.params, grads), whole.state, whole.params);
    whole = { params: applyUpdates(whole.params, r.updates), state: r.state };
    const s = perLayerOpt.start(perLeaf.params, perLeaf.state);
    backward(perLeaf.params, lossOf, s.onGrad);
    perLeaf = await s.finish();
  }
  assert.deepEqual([...gradDTypes], ["bf16"]);
  assert.ok(tree.flatten(perLeaf.params).every((p) => p.dtype === "bf16"));
  assert.ok(isQuantized(perLeaf.state[0].m[0]), "the [64, 80] weight has 8-bit moments");
  const a = await readAll(tree.flatten(whole.params));
  const b = await readAll(tree.flatten(perLeaf.params));
  a.forEach((x, i) => assert.deepEqual(b[i], x, `parameter ${names[i]}`));
  assert.notDeepEqual(a[0], w0, "the weights moved");
  tree.dispose([whole, perLeaf, targets]);
});
