/**
 * APOLLO and APOLLO-Mini: the device's random projection equals its CPU regeneration bit for bit
 * (so it is the same on every device) and has the documented distribution; keys separate seeds,
 * parameters and refreshes; the update matches a float64 CPU reference of the reference code's
 * step over several steps and refreshes, for both granularities and both projection sides, with
 * and without the limiter; updates never wait for the GPU; per-layer updates equal whole-tree
 * ones; bad options and shapes are refused by name.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { readAll } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import {
  apollo,
  apolloMini,
  type ApolloState,
  applyUpdates,
  chain,
  type Granularity,
  perLayer,
  scaleByLearningRate,
} from "../optim/mod.ts";
import { apolloProjection, apolloProjectionCpu, apolloProjectionKey } from "../optim/apollo.ts";
import {
  adamDirection,
  limiterRef,
  phiRef,
  projectRef,
  rand,
  type RefGeometry,
  scaleChannelsRef,
  trainMatrices,
  up,
} from "./scaling_ref.ts";
import { assertClose, setup } from "./util.ts";

await setup();

Deno.test("the device's projection equals its CPU regeneration bit for bit", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      fc.integer({ min: 1, max: 70 }),
      fc.integer({ min: 1, max: 70 }),
      fc.integer({ min: 1, max: 64 }),
      async (key, a, b, r) => {
        const p = apolloProjection(key, [a, b], r);
        const got = new Uint32Array(((await p.data()) as Float32Array).buffer);
        p.dispose();
        const want = new Uint32Array(apolloProjectionCpu(key, [a, b], r).buffer);
        assert.deepEqual(got, want);
      },
    ),
    { numRuns: 10, seed: 42 },
  );
});

Deno.test("projection entries: mean 0, variance 1/r, bounded by 6/√r", () => {
  for (const r of [1, 4, 64]) {
    const x = apolloProjectionCpu(apolloProjectionKey(7, "w", 0), [512, 128], r);
    let s = 0, s2 = 0, max = 0;
    for (const v of x) {
      s += v;
      s2 += v * v;
      max = Math.max(max, Math.abs(v));
    }
    const n = x.length, mean = s / n, variance = s2 / n - mean * mean;
    // 65536 samples: the mean's standard error is 0.004/√r, the variance's about 0.6 %.
    assert.ok(Math.abs(mean) * Math.sqrt(r) < 0.02, `r=${r}: mean ${mean}`);
    assert.ok(Math.abs(variance * r - 1) < 0.03, `r=${r}: variance·r ${variance * r}`);
    assert.ok(max <= 6 / Math.sqrt(r), `r=${r}: |entry| ${max} above 6/√r`);
  }
});

Deno.test("projection keys: the same for the same seed, path and refresh; different otherwise", () => {
  const k = apolloProjectionKey(3, "layers.0.attn.q.w", 2);
  assert.equal(apolloProjectionKey(3, "layers.0.attn.q.w", 2), k);
  // Seeds past 32 bits are folded in, not cut: 2³² + 3 is not 3.
  assert.notEqual(apolloProjectionKey(2 ** 32 + 3, "layers.0.attn.q.w", 2), k);
  const others = [
    apolloProjectionKey(4, "layers.0.attn.q.w", 2),
    apolloProjectionKey(3, "layers.0.attn.k.w", 2),
    apolloProjectionKey(3, "layers.0.attn.q.w", 3),
  ];
  for (const o of others) assert.notEqual(o, k);
  const m = apolloProjectionCpu(k, [8, 4], 4);
  for (const o of others) assert.notDeepEqual(apolloProjectionCpu(o, [8, 4], 4), m);
  assert.deepEqual(apolloProjectionCpu(k, [8, 4], 4), m);
});

/** One APOLLO matrix in float64: moments in the projected shape and the limiter's stored norm. */
class ApolloRef {
  m: Float64Array;
  v: Float64Array;
  prev: number | null = null;
  limited = 0;
  constructor(
    readonly geo: RefGeometry,
    readonly opts: { scale: number; granularity: Granularity; gamma: number },
  ) {
    const size = geo.r * (geo.left ? geo.n : geo.m);
    this.m = new Float64Array(size);
    this.v = new Float64Array(size);
  }

  step(g: ArrayLike<number>, p: ArrayLike<number>, t: number): Float64Array {
    const { m, n, r, left } = this.geo;
    const [rows, cols] = left ? [r, n] : [m, r];
    const channels = this.opts.granularity === "tensor" ? "tensor" : left ? "columns" : "rows";
    const rr = projectRef(g, p, this.geo);
    const nn = adamDirection(this.m, this.v, rr, t);
    const s = scaleChannelsRef(g, phiRef(nn, rr, rows, cols, channels), n, channels);
    if (this.opts.gamma > 0) {
      const l = limiterRef(s, this.prev, this.opts.gamma);
      this.prev = l.prev;
      if (l.limited) this.limited++;
    }
    return s.map((x) => Math.sqrt(this.opts.scale) * x);
  }
}

let limitedSteps = 0;
let unlimitedSteps = 0;

Deno.test("apollo matches a float64 reference over 6 steps and 3 refreshes (both granularities and sides, limiter on and off)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 3, max: 12 }),
      fc.integer({ min: 13, max: 24 }),
      fc.integer({ min: 1, max: 2 }),
      fc.constantFrom<Granularity>("channel", "tensor"),
      fc.constantFrom(1, 4),
      fc.constantFrom(1.01, 0),
      fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      async (a, b, r, granularity, scale, gamma, seed) => {
        const shapes = [[a, b], [b, a]];
        const lr = 0.01, gap = 2;
        const opt = chain(
          apollo({ rank: r, updateProjGap: gap, scale, granularity, seed, limiter: gamma }),
          scaleByLearningRate(lr),
        );
        const p0 = shapes.map((s, i) => rand(s, seed + i));
        let params = shapes.map((s, i) => up(p0[i], s));
        let state = opt.init(params);
        const refs = shapes.map(([m, n]) =>
          new ApolloRef({ m, n, r, left: m < n }, { scale, granularity, gamma })
        );
        const want = p0.map((p) => p.slice());
        for (let t = 1; t <= 6; t++) {
          const gs = shapes.map((s, i) =>
            rand(s, (seed % 1e6) * 13 + t * 5 + i).map((x) => x * 0.5 ** (t % 3))
          );
          const res = opt.update(gs.map((g, i) => up(g, shapes[i])), state, params);
          assert.ok(!(res instanceof Promise), "an apollo update waited for the GPU");
          state = res.state;
          params = applyUpdates(params, res.updates);
          refs.forEach((ref, i) => {
            const geo = ref.geo;
            const key = apolloProjectionKey(seed, String(i), Math.floor((t - 1) / gap));
            const p = apolloProjectionCpu(key, geo.left ? [geo.m, r] : [r, geo.n], r);
            const u = ref.step(gs[i], p, t);
            for (let k = 0; k < u.length; k++) want[i][k] -= lr * u[k];
          });
        }
        const as = state[0] as ApolloState;
        const got = await readAll([...params, ...as.norm]);
        want.forEach((w, i) => {
          // f32 against f64 over 6 steps of size ≤ lr·√scale·|φ|·|G|: errors ~1e-6.
          assertClose(got[i], w, { atol: 2e-5, rtol: 1e-4, what: `params ${shapes[i]}` });
        });
        if (gamma > 0) {
          refs.forEach((ref, i) =>
            assertClose(got[2 + i], [ref.prev!], { atol: 1e-5, rtol: 1e-4, what: "stored norm" })
          );
          for (const ref of refs) {
            limitedSteps += ref.limited;
            unlimitedSteps += 5 - ref.limited;
          }
        } else assert.equal(as.norm.length, 0);
        assert.equal(as.count, 6);
        tree.dispose([params, state]);
      },
    ),
    { numRuns: 8, seed: 42 },
  );
  assert.ok(limitedSteps > 0, "the limiter never engaged");
  assert.ok(unlimitedSteps > 0, "the limiter engaged on every step");
});

Deno.test("apolloMini is apollo at rank 1, tensor-wise, scale 128: state 2·max(m, n) per matrix", async () => {
  const shapes = [[6, 20], [20, 6]];
  const mini = await trainMatrices(apolloMini({ seed: 5 }), shapes);
  const full = await trainMatrices(
    apollo({ rank: 1, granularity: "tensor", scale: 128, seed: 5 }),
    shapes,
  );
  assert.deepEqual(mini.params, full.params);
  assert.equal(mini.stateBytes, 4 * shapes.length * (2 * 20 + 1));
});

Deno.test("apollo per layer equals apollo on the whole tree, bit for bit (projections follow paths)", async () => {
  const opt = chain(apollo({ rank: 3, updateProjGap: 2, seed: 9 }), scaleByLearningRate(0.01));
  const shapes = [[8, 14], [14, 8]];
  const a = await trainMatrices(perLayer(opt), shapes);
  assert.deepEqual(a.params, (await trainMatrices(opt, shapes)).params);
});

Deno.test("apollo's state after steps is exactly its analytic size, and a step leaves nothing else behind", async () => {
  const r = 3;
  const opt = chain(apollo({ rank: r, updateProjGap: 2 }), scaleByLearningRate(0.01));
  const { stateBytes, keptBytes } = await trainMatrices(opt, [[10, 16], [16, 10]]);
  // Per matrix: moments 2·r·max(m,n) and the limiter's norm (no projector); f32.
  const want = 2 * 4 * (2 * r * 16 + 1);
  assert.equal(stateBytes, want);
  assert.equal(keptBytes, want);
});

Deno.test("apollo refuses bad options and shapes, naming them", () => {
  assert.throws(() => apollo({ rank: 0 }), /apollo: rank must be a positive integer, got 0/);
  assert.throws(() => apollo({ rank: 2, scale: 0 }), /apollo: scale must be .*> 0, got 0/);
  assert.throws(() => apolloMini({ scale: -3 }), /apollo: scale must be .*> 0, got -3/);
  assert.throws(
    () => apollo({ rank: 2, granularity: "row" as Granularity }),
    /apollo: granularity must be one of channel, tensor, got "row"/,
  );
  assert.throws(
    () => apollo({ rank: 2, seed: -1 }),
    /apollo: seed must be a non-negative safe integer, got -1/,
  );
  assert.throws(() => apollo({ rank: 2, limiter: 0.9 }), /apollo: limiter must be 0 \(off\)/);
  const opt = apollo({ rank: 5 });
  const p = { up: up(new Float64Array(35), [7, 5]) };
  assert.throws(() => opt.init(p), /apollo: rank 5 must be < min\(m, n\) = 5 of up \[7, 5\]/);
  const one = { row: up(new Float64Array(4), [1, 4]) };
  assert.throws(() => apolloMini().init(one), /apollo: rank 1 must be < min\(m, n\) = 1 of row/);
  tree.dispose([p, one]);
});
