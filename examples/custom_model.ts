/**
 * A model of your own, trained with the library's pieces: a two-layer MLP fits y = sin(x) with
 * `valueAndGrad` and a chained update transform (clip, Adam, weight decay, a warmup-cosine
 * learning rate). Run: `deno run -A examples/custom_model.ts`
 * @module
 */
import * as sl from "../mod.ts";

/** Trains for `steps` steps; returns the loss every 50 steps (one readback at the end). */
export async function main(steps = 200): Promise<number[]> {
  await sl.init();
  const xs = Array.from({ length: 64 }, (_, i) => -3 + (6 * i) / 63);
  const x = sl.tensor(xs.map((v) => [v])); // [64, 1]
  const y = sl.tensor(xs.map((v) => [Math.sin(v)]));
  let params = {
    hidden: { w: sl.randomNormal([1, 32], 0, 1, { seed: 1 }), b: sl.zeros([32]) },
    out: { w: sl.randomNormal([32, 1], 0, 0.2, { seed: 2 }), b: sl.zeros([1]) },
  };
  type Params = typeof params;
  const hidden = (p: Params) => sl.silu(sl.add(sl.matmul(x, p.hidden.w), p.hidden.b));
  const predict = (p: Params) => sl.add(sl.matmul(hidden(p), p.out.w), p.out.b);
  const lossAndGrads = sl.valueAndGrad((p: Params) => sl.mean(sl.square(sl.sub(predict(p), y))));
  const opt = sl.optim.chain(
    sl.optim.clipByGlobalNorm(1),
    sl.optim.scaleByAdam(),
    sl.optim.addDecayedWeights(1e-4),
    sl.optim.scaleByLearningRate(sl.optim.warmupCosine({ lr: 0.02, warmup: 10, total: steps })),
  );
  let state = opt.init(params);
  const logged: sl.Tensor[] = [];
  for (let step = 0; step < steps; step++) {
    const { value, grads } = lossAndGrads(params);
    const r = await opt.update(grads, state, params); // consumes grads and the old state
    state = r.state;
    params = sl.optim.applyUpdates(params, r.updates); // the only place parameters change
    if (step % 50 === 0 || step === steps - 1) logged.push(value);
    else value.dispose();
  }
  const losses = (await sl.readAll(logged)).map((d) => d[0]);
  sl.tree.dispose([params, state, logged, x, y]);
  return losses;
}

if (import.meta.main) console.log("loss every 50 steps:", (await main()).map((l) => l.toFixed(4)));
