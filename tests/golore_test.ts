/**
 * GoLore: its random projectors are orthonormal, seeded by path and refresh; before `randomFrom`
 * it is GaLore bit for bit, after it each refresh takes the random basis; its update matches a
 * float64 reference of projected Adam with moments kept across refreshes; it resumes from a
 * checkpoint bit for bit.
 */
import assert from "node:assert/strict";
import { readAll, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import {
  chain,
  galore,
  type GaLoreState,
  golore,
  scaleByAdam,
  scaleByLearningRate,
} from "../optim/mod.ts";
import { projectionGeometry, randomProjector } from "../optim/galore.ts";
import { assertResumesBitExact, gradSeries, lcg, runSteps } from "./resume_ref.ts";
import { assertClose, setup } from "./util.ts";

await setup();

Deno.test("random projectors are orthonormal and seeded by path and refresh", async () => {
  for (const [m, n, r] of [[12, 20, 5], [20, 12, 5], [7, 7, 7]]) {
    const geo = projectionGeometry(tensor(new Float32Array(m * n), [m, n]), r);
    const p = randomProjector(geo, "layers.0.q.w", 3);
    const [d] = await readAll([p]);
    const k = geo.left ? m : n;
    // Columns of P [k, r] (left) or rows of Q [r, k] (right) are orthonormal.
    const at = (i: number, j: number) => geo.left ? d[i * r + j] : d[j * k + i];
    for (let a = 0; a < r; a++) {
      for (let b = 0; b < r; b++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += at(i, a) * at(i, b);
        assert.ok(Math.abs(s - (a === b ? 1 : 0)) < 1e-5, `${m}x${n} P'P[${a},${b}] = ${s}`);
      }
    }
    const [same, other, otherKey] = await readAll([
      randomProjector(geo, "layers.0.q.w", 3),
      randomProjector(geo, "layers.0.q.w", 4),
      randomProjector(geo, "layers.0.k.w", 3),
    ]);
    assert.deepEqual(same, d);
    assert.notDeepEqual(other, d);
    assert.notDeepEqual(otherKey, d);
    p.dispose();
  }
});

/** Reads the projector of the only matrix in a chain(golore/galore, lr) state. */
async function projOf(state: unknown): Promise<Float32Array> {
  const gs = (state as unknown[])[0] as GaLoreState;
  return (await readAll([gs.proj[0]!]))[0] as Float32Array;
}

Deno.test("golore is galore before randomFrom and takes the random basis from then on", async () => {
  const [m, n, r, gap] = [10, 16, 3, 2];
  const grads = gradSeries([[m, n]], 6, 11);
  const mk = (f: typeof golore | typeof galore) =>
    chain(
      f(scaleByAdam(), { rank: r, updateProjGap: gap, randomFrom: 4 }),
      scaleByLearningRate(0.01),
    );
  const a = mk(golore), b = mk(galore);
  const pa = { w: tensor(lcg(1, m * n), [m, n]) }, pb = { w: tensor(lcg(1, m * n), [m, n]) };
  let ra = { params: pa, state: a.init(pa) as unknown },
    rb = { params: pb, state: b.init(pb) as unknown };
  const geo = projectionGeometry(pa.w, r);
  for (let s = 0; s < 6; s++) {
    ra = await runSteps(a, ra.params, ra.state, grads, s, s + 1);
    rb = await runSteps(b, rb.params, rb.state, grads, s, s + 1);
    const [x, y] = [await projOf(ra.state), await projOf(rb.state)];
    const refresh = Math.floor(s / gap) * gap;
    if (refresh < 4) assert.deepEqual(x, y, `step ${s}: SVD projector as galore's`);
    else {
      const want = randomProjector(geo, "w", refresh);
      assert.deepEqual(
        x,
        (await readAll([want]))[0],
        `step ${s}: random projector of refresh ${refresh}`,
      );
      want.dispose();
    }
  }
  tree.dispose([ra.params, rb.params, ra.state, rb.state] as tree.TensorTree);
});

Deno.test("golore's update is α·P·Adam(Pᵀ·G), moments kept across random refreshes (float64 reference)", async () => {
  for (const [m, n] of [[8, 14], [14, 8]]) {
    const [r, gap, lr, alpha, steps] = [3, 2, 0.05, 0.5, 5];
    const grads = gradSeries([[m, n]], steps, 23);
    const opt = chain(
      golore(scaleByAdam(), { rank: r, updateProjGap: gap, scale: alpha }),
      scaleByLearningRate(lr),
    );
    const w0 = lcg(2, m * n);
    const p = { w: tensor(w0, [m, n]) };
    const left = m < n;
    const geo = projectionGeometry(p.w, r);
    let run = { params: p, state: opt.init(p) as unknown };
    const w = Float64Array.from(w0);
    const small = left ? r * n : m * r;
    const mo = new Float64Array(small), vo = new Float64Array(small);
    for (let s = 0; s < steps; s++) {
      run = await runSteps(opt, run.params, run.state, grads, s, s + 1);
      const pr = randomProjector(geo, "w", Math.floor(s / gap) * gap);
      const [pd] = await readAll([pr]);
      pr.dispose();
      const g = grads[s][0];
      // R = Pᵀ·G [r, n] (left, P [m, r]) or G·Qᵀ [m, r] (right, Q [r, n]).
      const R = new Float64Array(small);
      if (left) {
        for (let i = 0; i < r; i++) {
          for (let j = 0; j < n; j++) {
            let acc = 0;
            for (let k = 0; k < m; k++) acc += pd[k * r + i] * g[k * n + j];
            R[i * n + j] = acc;
          }
        }
      } else {
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < r; j++) {
            let acc = 0;
            for (let k = 0; k < n; k++) acc += g[i * n + k] * pd[j * n + k];
            R[i * r + j] = acc;
          }
        }
      }
      const t = s + 1;
      const N = R.map((x, i) => {
        mo[i] = 0.9 * mo[i] + 0.1 * x;
        vo[i] = 0.999 * vo[i] + 0.001 * x * x;
        return (mo[i] / (1 - 0.9 ** t)) / (Math.sqrt(vo[i] / (1 - 0.999 ** t)) + 1e-8);
      });
      // W ← W − lr·α·P·N (left) or N·Q (right).
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let acc = 0;
          if (left) { for (let k = 0; k < r; k++) acc += pd[i * r + k] * N[k * n + j]; }
          else for (let k = 0; k < r; k++) acc += N[i * r + k] * pd[k * n + j];
          w[i * n + j] -= lr * alpha * acc;
        }
      }
    }
    const [got] = await readAll([run.params.w]);
    assertClose(got, w, { atol: 2e-6, rtol: 1e-4, what: `${m}x${n}` });
    tree.dispose([run.params, run.state] as tree.TensorTree);
  }
});

Deno.test("golore resumes from a checkpoint bit for bit (random refreshes after the cut too)", async () => {
  const grads = gradSeries([[9, 13], [13, 9]], 7, 3);
  await assertResumesBitExact(
    () =>
      chain(
        golore(scaleByAdam(), { rank: 3, updateProjGap: 2, randomFrom: 2 }),
        scaleByLearningRate(0.01),
      ),
    () => ({ a: tensor(lcg(1, 117), [9, 13]), b: tensor(lcg(2, 117), [13, 9]) }),
    grads,
    3,
  );
  assert.throws(() => golore(scaleByAdam(), { rank: 2, randomFrom: -1 }), /randomFrom/);
});
