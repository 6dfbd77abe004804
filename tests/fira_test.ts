/**
 * Fira against a float64 CPU reference of the reference code's step (residual G − α·P·Pᵀ·G,
 * per-channel norm ratio, norm-growth limiter with the post-limit norm stored) over several steps
 * and projector refreshes, for both projector sides, with and without the limiter; the limiter's
 * exact growth with an identity inner transform; per-layer updates equal whole-tree ones; bad
 * options and shapes refused by name.
 */
import fc from "fast-check";
import assert from "node:assert/strict";
import { readAll, type Tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import {
  applyUpdates,
  chain,
  fira,
  type FiraState,
  perLayer,
  scale,
  scaleByAdam,
  scaleByLearningRate,
} from "../optim/mod.ts";
import {
  adamDirection,
  limiterRef,
  phiRef,
  projectBackRef,
  projectRef,
  rand,
  type RefGeometry,
  scaleChannelsRef,
  trainMatrices,
  up,
} from "./scaling_ref.ts";
import { assertClose, setup } from "./util.ts";

await setup();

/** One Fira matrix in float64: moments in the small shape and the limiter's stored norm. */
class FiraRef {
  m: Float64Array;
  v: Float64Array;
  prev: number | null = null;
  limited = 0;
  constructor(readonly geo: RefGeometry, readonly alpha: number, readonly gamma: number) {
    const size = geo.r * (geo.left ? geo.n : geo.m);
    this.m = new Float64Array(size);
    this.v = new Float64Array(size);
  }

  /** The update (before the learning rate) for gradient g at step t with projector p. */
  step(g: ArrayLike<number>, p: ArrayLike<number>, t: number): Float64Array {
    const { m, n, r, left } = this.geo;
    const [rows, cols] = left ? [r, n] : [m, r];
    const channels = left ? "columns" : "rows";
    const rr = projectRef(g, p, this.geo);
    const nn = adamDirection(this.m, this.v, rr, t);
    const sub = projectBackRef(rr, p, this.geo);
    const resid = Float64Array.from(g, (x, i) => x - this.alpha * sub[i]);
    const s = scaleChannelsRef(resid, phiRef(nn, rr, rows, cols, channels), n, channels);
    if (this.gamma > 0) {
      const l = limiterRef(s, this.prev, this.gamma);
      this.prev = l.prev;
      if (l.limited) this.limited++;
    }
    const back = projectBackRef(nn, p, this.geo);
    return back.map((b, i) => this.alpha * b + s[i]);
  }
}

let limitedSteps = 0;
let unlimitedSteps = 0;

Deno.test("fira matches a float64 reference over 6 steps and 3 projector refreshes (both sides, limiter on and off)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 4, max: 12 }),
      fc.integer({ min: 13, max: 24 }),
      // Rank ≥ 2: at rank 1 a column of R is one number, φ = |N|/|R| can be ~1e3 where R nearly
      // cancels, and f32 rounding of R is amplified past any fixed tolerance (the method's
      // conditioning, not an error; APOLLO-Mini is tensor-wise for this reason).
      fc.integer({ min: 2, max: 3 }),
      fc.constantFrom(0.25, 1),
      fc.constantFrom(1.01, 0),
      fc.integer({ min: 1, max: 1e6 }),
      async (a, b, r, alpha, gamma, seed) => {
        const shapes = [[a, b], [b, a]];
        const lr = 0.01;
        const opt = chain(
          fira(scaleByAdam(), { rank: r, updateProjGap: 2, scale: alpha, limiter: gamma }),
          scaleByLearningRate(lr),
        );
        const p0 = shapes.map((s, i) => rand(s, seed + i));
        let params = shapes.map((s, i) => up(p0[i], s));
        let state = opt.init(params);
        const refs = shapes.map(([m, n]) => new FiraRef({ m, n, r, left: m < n }, alpha, gamma));
        const want = p0.map((p) => p.slice());
        for (let t = 1; t <= 6; t++) {
          // Gradients of changing size, so the residual's norm moves from step to step.
          const gs = shapes.map((s, i) =>
            rand(s, seed * 13 + t * 5 + i, -1, 1).map((x) => x * 0.5 ** (t % 3))
          );
          const res = await opt.update(gs.map((g, i) => up(g, shapes[i])), state, params);
          state = res.state;
          params = applyUpdates(params, res.updates);
          const fs = state[0] as FiraState;
          const proj = await readAll(fs.proj as Tensor[]);
          refs.forEach((ref, i) => {
            const u = ref.step(gs[i], proj[i], t);
            for (let k = 0; k < u.length; k++) want[i][k] -= lr * u[k];
          });
        }
        const fs = state[0] as FiraState;
        const got = await readAll([...params, ...fs.norm]);
        want.forEach((w, i) => {
          // f32 against f64 over 6 steps of size ≤ lr·(α + |φ|·|G|): errors ~1e-6.
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
        } else assert.equal(fs.norm.length, 0);
        assert.equal(fs.count, 6);
        tree.dispose([params, state]);
      },
    ),
    { numRuns: 6, seed: 42 },
  );
  // The reference's limiter both engaged and stayed idle on some steps: both paths were compared.
  assert.ok(limitedSteps > 0, "the limiter never engaged");
  assert.ok(unlimitedSteps > 0, "the limiter engaged on every step");
});

Deno.test("fira with an identity inner transform: growing gradients grow the residual term by exactly γ per step", async () => {
  const [m, n, r, alpha, gamma] = [6, 10, 2, 0.25, 1.01];
  // φ = 1 with an identity inner transform, so the residual term is G − α·P·Pᵀ·G itself.
  const opt = fira(scale(1), { rank: r, updateProjGap: 100, scale: alpha, limiter: gamma });
  let state = opt.init([up(new Float64Array(m * n), [m, n])]);
  const norms: number[] = [];
  for (let t = 0; t < 5; t++) {
    const g = rand([m, n], 3).map((x) => x * 2 ** t);
    const res = await opt.update([up(g, [m, n])], state);
    state = res.state;
    norms.push((await state.norm[0].data())[0]);
    tree.dispose(res.updates);
  }
  // Unlimited the norm would double each step; limited it grows by γ exactly.
  for (let t = 1; t < 5; t++) {
    assertClose([norms[t] / norms[t - 1]], [gamma], { atol: 0, rtol: 1e-5, what: `step ${t}` });
  }
  tree.dispose(state);
});

Deno.test("fira per layer equals fira on the whole tree, bit for bit", async () => {
  const opt = chain(fira(scaleByAdam(), { rank: 3, updateProjGap: 2 }), scaleByLearningRate(0.01));
  const shapes = [[8, 14], [14, 8]];
  const a = await trainMatrices(perLayer(opt), shapes);
  assert.deepEqual(a.params, (await trainMatrices(opt, shapes)).params);
});

Deno.test("fira's state after steps is exactly its analytic size, and a step leaves nothing else behind", async () => {
  const r = 3;
  const opt = chain(fira(scaleByAdam(), { rank: r, updateProjGap: 2 }), scaleByLearningRate(0.01));
  const { stateBytes, keptBytes } = await trainMatrices(opt, [[10, 16], [16, 10]]);
  // Per matrix: projector min(m,n)·r, moments 2·r·max(m,n), the limiter's norm; f32.
  const want = 2 * 4 * (10 * r + 2 * r * 16 + 1);
  assert.equal(stateBytes, want);
  assert.equal(keptBytes, want);
});

Deno.test("fira refuses bad options and shapes, naming them", () => {
  const inner = scaleByAdam();
  assert.throws(() => fira(inner, { rank: 0 }), /fira: rank must be a positive integer, got 0/);
  assert.throws(() => fira(inner, { rank: 2, scale: 0 }), /fira: scale must be .*> 0, got 0/);
  assert.throws(() => fira(inner, { rank: 2, scale: -1 }), /fira: scale must be .*> 0, got -1/);
  assert.throws(() => fira(inner, { rank: 2, limiter: 0.5 }), /fira: limiter must be 0 \(off\)/);
  assert.throws(() => fira(inner, { rank: 2, updateProjGap: 0 }), /fira: updateProjGap/);
  const opt = fira(inner, { rank: 4 });
  const p = { layers: [{ w: up(new Float64Array(24), [4, 6]) }] };
  assert.throws(
    () => opt.init(p),
    /fira: rank 4 must be < min\(m, n\) = 4 of layers\.0\.w \[4, 6\]/,
  );
  const v = { b: up(new Float64Array(6), [6]) };
  assert.throws(() => opt.init(v), /fira: needs 2-D weights, got \[6\]/);
  tree.dispose([p, v]);
});
