/**
 * SPAM and Stable-SPAM: the updates match float64 CPU references of the update rules (written from
 * the reference code's loops) over steps that cross momentum resets, with spikes clipped; the
 * state resumes from a checkpoint bit for bit; bad options are refused by name.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { chain, scaleByLearningRate } from "../optim/mod.ts";
import { scaleBySpam, type SpamOptions, spamScalars } from "../optim/spam.ts";
import {
  scaleByStableSpam,
  stableSpamFactor,
  type StableSpamOptions,
} from "../optim/stable_spam.ts";
import { assertResumesBitExact, gradSeries, lcg } from "./resume_ref.ts";
import { assertClose, setup } from "./util.ts";

await setup();

/** SPAM on one tensor in float64: the update (without lr) of each step. */
function spamRef(opts: Required<SpamOptions>, grads: Float32Array[]): Float64Array[] {
  const n = grads[0].length;
  let m = new Float64Array(n), v = new Float64Array(n);
  const [b1, b2] = opts.betas;
  return grads.map((g32, s) => {
    const t = s + 1;
    const sc = spamScalars(opts, t);
    if (sc.reset) [m, v] = [new Float64Array(n), new Float64Array(n)];
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let g = g32[i];
      if (sc.clip && g * g > opts.threshold * v[i]) {
        g = Math.sign(g) * Math.sqrt(opts.threshold * v[i]);
      }
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      out[i] = sc.ramp * sc.correction * m[i] / (Math.sqrt(v[i]) + opts.eps);
    }
    return out;
  });
}

/** Stable-SPAM on one tensor in float64. */
function stableSpamRef(opts: Required<StableSpamOptions>, grads: Float32Array[]): Float64Array[] {
  const n = grads[0].length;
  let m = new Float64Array(n), v = new Float64Array(n);
  let mMax = 0, mNorm = 0, vNorm = 0, k = 0;
  return grads.map((g32, s) => {
    const t = s + 1;
    const reset = opts.resetGap > 0 && t % opts.resetGap === 0;
    if (reset) [m, v] = [new Float64Array(n), new Float64Array(n)];
    k = reset ? 1 : k + 1;
    const sc = stableSpamFactor(opts, t);
    const g = Float64Array.from(g32);
    const mx = g.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
    mMax = opts.gamma3 * mMax + (1 - opts.gamma3) * mx;
    const hat = mMax / (1 - opts.gamma3 ** k);
    for (let i = 0; i < n; i++) if (Math.abs(g[i]) > hat) g[i] = g[i] / mx * hat;
    const nrm = Math.sqrt(g.reduce((a, x) => a + x * x, 0));
    const g1 = opts.gamma1 * sc;
    mNorm = g1 * mNorm + (1 - g1) * nrm;
    vNorm = opts.gamma2 * vNorm + (1 - opts.gamma2) * nrm * nrm;
    const c = (mNorm / (1 - g1 ** k)) / (Math.sqrt(vNorm / (1 - opts.gamma2 ** k)) + opts.eps);
    if (nrm > 0) { for (let i = 0; i < n; i++) g[i] = g[i] / nrm * c; }
    const b1 = opts.betas[0] * sc, b2 = opts.betas[1];
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      out[i] = m[i] / (1 - b1 ** k) / (Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** k) + opts.eps);
    }
    return out;
  });
}

/** The gradients of `steps` steps for one tensor, with a spike every 5th step. */
function spiky(n: number, steps: number, seed: number): Float32Array[] {
  return Array.from({ length: steps }, (_, s) => {
    const g = lcg(seed + s, n, 0.1);
    if (s % 5 === 4) g[s % n] *= 400;
    return g;
  });
}

/** Runs `opt` with lr 1 on one parameter from zero and returns each step's update. */
async function updatesOf(
  opt: ReturnType<typeof scaleBySpam> | ReturnType<typeof scaleByStableSpam>,
  grads: Float32Array[],
  shape: number[],
): Promise<Float32Array[]> {
  let state: unknown = opt.init({ w: tensor(new Float32Array(grads[0].length), shape) });
  const out: Float32Array[] = [];
  for (const g of grads) {
    const r = await opt.update({ w: tensor(g, shape) }, state as never);
    state = r.state;
    const [u] = tree.flatten(r.updates);
    out.push((await u.data()) as Float32Array);
    u.dispose();
  }
  tree.dispose(state as tree.TensorTree);
  return out;
}

Deno.test("SPAM matches its float64 reference across resets, ramps and clipped spikes", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 300 }),
      fc.integer({ min: 3, max: 7 }),
      fc.integer({ min: 0, max: 1e6 }),
      async (n, resetGap, seed) => {
        const opts: Required<SpamOptions> = {
          betas: [0.9, 0.999],
          eps: 1e-6,
          threshold: 50,
          resetGap,
          warmup: 3,
          clipDelay: 2,
        };
        const grads = spiky(n, 16, seed);
        const got = await updatesOf(scaleBySpam(opts), grads, [n]);
        const want = spamRef(opts, grads);
        got.forEach((g, s) =>
          assertClose(g, want[s], { rtol: 2e-4, atol: 1e-5, what: `step ${s + 1}` })
        );
      },
    ),
    { numRuns: 8, seed: 1 },
  );
});

Deno.test("SPAM clips a spike to sign(g)·√(θ·v) and resets momentum to zero", async () => {
  const opts = { threshold: 4, resetGap: 3, warmup: 0, clipDelay: 2 };
  const s1 = spamScalars(opts, 1), s2 = spamScalars(opts, 2), s3 = spamScalars(opts, 3);
  assert.equal(s1.clip, false, "no clipping before clipDelay steps");
  assert.equal(s2.clip, true);
  assert.equal(s3.reset, true);
  assert.equal(s3.clip, false, "no clipping at the reset step (v is zero)");
  assert.equal(s2.reset, false);
  // Step 1 leaves v = 0.001·1; step 2's gradient 100 is a spike: clipped to √(4·0.001) ≈ 0.063.
  const got = await updatesOf(scaleBySpam({ ...opts, eps: 0 }), [
    new Float32Array([1]),
    new Float32Array([100]),
  ], [1]);
  const m2 = 0.9 * 0.1 + 0.1 * Math.sqrt(0.004);
  const v2 = 0.999 * 0.001 + 0.001 * 0.004;
  assertClose(got[1], [s2.correction * m2 / Math.sqrt(v2)], { rtol: 1e-5 });
});

Deno.test("Stable-SPAM matches its float64 reference across resets and its β1 schedule", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 5000 }),
      fc.integer({ min: 0, max: 6 }),
      fc.integer({ min: 0, max: 1e6 }),
      async (n, resetGap, seed) => {
        const opts: Required<StableSpamOptions> = {
          betas: [0.9, 0.999],
          eps: 1e-8,
          gamma1: 0.85,
          gamma2: 0.99,
          gamma3: 0.9,
          resetGap,
          totalT: 12,
          etaMin: 0.5,
        };
        const grads = spiky(n, 14, seed);
        const got = await updatesOf(scaleByStableSpam(opts), grads, [n]);
        const want = stableSpamRef(opts, grads);
        got.forEach((g, s) =>
          assertClose(g, want[s], { rtol: 5e-4, atol: 1e-5, what: `step ${s + 1}` })
        );
      },
    ),
    { numRuns: 8, seed: 2 },
  );
});

Deno.test("SPAM and Stable-SPAM resume from a checkpoint bit for bit", async () => {
  const shapes = [[6, 5], [7]];
  const grads = gradSeries(shapes, 9, 5);
  const init = () => ({ a: tensor(lcg(1, 30), [6, 5]), b: tensor(lcg(2, 7), [7]) });
  await assertResumesBitExact(
    () =>
      chain(
        scaleBySpam({ resetGap: 4, warmup: 2, clipDelay: 1, threshold: 10 }),
        scaleByLearningRate(0.01),
      ),
    init,
    grads,
    5,
  );
  await assertResumesBitExact(
    () => chain(scaleByStableSpam({ resetGap: 4, totalT: 9 }), scaleByLearningRate(0.01)),
    init,
    grads,
    5,
  );
});

Deno.test("SPAM and Stable-SPAM refuse out-of-range options by name", () => {
  assert.throws(() => scaleBySpam({ threshold: -1 }), /threshold/);
  assert.throws(() => scaleBySpam({ resetGap: 1.5 }), /resetGap/);
  assert.throws(() => scaleBySpam({ betas: [1, 0.9] }), /betas/);
  assert.throws(() => scaleByStableSpam({ gamma1: 1 }), /gamma1/);
  assert.throws(() => scaleByStableSpam({ etaMin: -0.1 }), /etaMin/);
  assert.throws(() => scaleByStableSpam({ totalT: -3 }), /totalT/);
});
