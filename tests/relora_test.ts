import assert from "node:assert/strict";
import { memoryStats } from "../core/memory.ts";
import { Rng } from "../core/rng.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { LlamaConfig } from "../models/config.ts";
import {
  disposeModel,
  forward,
  initLlama,
  type LayerParams,
  type LlamaModel,
  type LlamaParams,
  loss,
  paramPaths,
} from "../models/llama.ts";
import type { ReLoRALinearParams } from "../models/linear.ts";
import { BLOCK_LINEARS, type LinearMethod } from "../models/method.ts";
import { mergeRelora, reloraMerge } from "../models/relora.ts";
import { toyConfig } from "./fixtures.ts";
import { reloraLinear } from "../ops/relora_linear.ts";
import {
  alignedRowsBytes,
  type Arr,
  assertClose,
  checkOp,
  mm,
  randomArr,
  setup,
  toTensor,
  withWindowBytes,
} from "./util.ts";

await setup();

const TOY: LlamaConfig = toyConfig();
const RELORA: LinearMethod = { kind: "relora", rank: 4, alpha: 8 };
const S = 8 / 4;

function tokens(seed: number): Tensor {
  const rng = new Rng(seed);
  return tensor(Int32Array.from({ length: 10 }, () => rng.nextInt(TOY.vocabSize)), [2, 5], "i32");
}

/** The model's params with every adapter B redrawn nonzero, so a merge has something to merge. */
function withTrainedB(params: LlamaParams, seed: number): LlamaParams {
  const rng = new Rng(seed);
  const layers = params.layers.map((l) => {
    const next: Record<string, unknown> = { ...l };
    for (const n of BLOCK_LINEARS) {
      const { A, B } = l[n] as ReLoRALinearParams;
      const b = Float32Array.from({ length: B.size }, () => 0.3 * (2 * rng.nextFloat() - 1));
      B.dispose();
      next[n] = { A, B: tensor(b, [...B.shape]) };
    }
    return next as LayerParams;
  });
  return { ...params, layers };
}

Deno.test("relora: params hold only the adapter (A, B) and non-block tensors; W is a buffer equal to the dense init; B = 0, A Kaiming-uniform", async () => {
  const model = initLlama(TOY, RELORA, 4);
  const dense = initLlama(TOY, { kind: "dense" }, 4);
  const entries = paramPaths(model.params);
  assert.ok(entries.every((e) => e.factor !== "w" && e.factor !== "V"));
  assert.equal(entries.filter((e) => e.role === "block").length, 2 * 7 * 2);
  const [w, wDense, a, b] = await readAll([
    model.buffers.layers[1].gate!,
    (dense.params.layers[1].gate as { w: Tensor }).w,
    (model.params.layers[1].gate as ReLoRALinearParams).A,
    (model.params.layers[1].gate as ReLoRALinearParams).B,
  ]);
  disposeModel(model);
  disposeModel(dense);
  assert.deepEqual(w, wDense, "frozen W is the dense model's w under the same seed");
  assert.ok(b.every((x) => x === 0), "B = 0");
  const bound = 1 / Math.sqrt(TOY.hidden);
  const m = Array.from(a).reduce((s, x) => Math.max(s, Math.abs(x)), 0);
  assert.ok(m <= bound && m > 0.8 * bound, `A: max |x| ${m} vs ${bound}`);
});

Deno.test("relora: a merge leaves the function unchanged (logits within 1e-5) and equals a dense model with the merged weights; W = W0 + s·B·A, B = 0, A redrawn; live bytes unchanged", async () => {
  const model = initLlama(TOY, RELORA, 1);
  const params = withTrainedB(model.params, 2);
  const ids = tokens(3);
  const before = forward(model, params, ids);
  const w0 = model.buffers.layers[0].up!;
  const { A: a0, B: b0 } = params.layers[0].up as ReLoRALinearParams;
  const [beforeData, w0d, a0d, b0d] = await readAll([before, w0, a0, b0]);
  const live = memoryStats().liveBytes;
  const merged = mergeRelora(model, params, 9);
  assert.equal(memoryStats().liveBytes, live, "merge replaces tensors one for one (donated)");
  assert.ok(w0.isDisposed && a0.isDisposed && b0.isDisposed, "old W and adapter disposed");
  const after = forward(model, merged, ids);
  const denseModel: LlamaModel = {
    config: TOY,
    method: { kind: "dense" },
    buffers: { layers: model.buffers.layers.map(() => ({})) },
  };
  const denseParams: LlamaParams = {
    ...merged,
    layers: merged.layers.map((l, i) => {
      const next: Record<string, unknown> = { ...l };
      for (const n of BLOCK_LINEARS) next[n] = { w: model.buffers.layers[i][n]! };
      return next as LayerParams;
    }),
  };
  const asDense = forward(denseModel, denseParams, ids);
  const { A: a1, B: b1 } = merged.layers[0].up as ReLoRALinearParams;
  const [afterData, denseData, w1d, a1d, b1d] = await readAll([
    after,
    asDense,
    model.buffers.layers[0].up!,
    a1,
    b1,
  ]);
  for (const t of [before, after, asDense, ids]) t.dispose();
  disposeModel({ params: merged, buffers: model.buffers });

  let drift = 0;
  for (let i = 0; i < beforeData.length; i++) {
    drift = Math.max(drift, Math.abs(afterData[i] - beforeData[i]));
    assert.ok(Math.abs(afterData[i] - beforeData[i]) <= 1e-5, `logit ${i} moved`);
    assert.ok(Math.abs(denseData[i] - afterData[i]) <= 1e-5, `logit ${i}: dense vs relora`);
  }
  const [out, inF, r] = [TOY.intermediate, TOY.hidden, 4];
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inF; j++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += b0d[i * r + k] * a0d[k * inF + j];
      const exp = w0d[i * inF + j] + S * ba;
      assert.ok(Math.abs(w1d[i * inF + j] - exp) <= 1e-6, `merged W[${i}, ${j}]`);
    }
  }
  assert.ok(b1d.every((x) => x === 0), "B restarts at 0");
  assert.notDeepEqual(a1d, a0d, "A is redrawn");
  const bound = 1 / Math.sqrt(inF);
  assert.ok(a1d.every((x) => Math.abs(x) <= bound), "A within the Kaiming bound");
  console.log(`  max |Δlogit| across the merge ${drift.toExponential(1)}`);
});

Deno.test("relora: A and B get nonzero gradients (W is a buffer, never differentiated); the loss is continuous across a merge", async () => {
  const model = initLlama(TOY, RELORA, 5);
  const params = withTrainedB(model.params, 6);
  const ids = tokens(7);
  const batch = { inputs: ids, targets: tokens(8) };
  const f = valueAndGrad((p: LlamaParams) => loss(model, p, batch));
  const { value, grads } = f(params);
  const g = paramPaths(grads).filter((e) => e.role === "block");
  const data = await readAll(g.map((e) => e.tensor));
  g.forEach((e, i) => assert.ok(data[i].some((x) => x !== 0), `${e.path} gradient is nonzero`));
  const merged = mergeRelora(model, params, 1);
  const l2 = loss(model, merged, batch);
  const [l1, l2d] = await readAll([value, l2]);
  assert.ok(Math.abs(l1[0] - l2d[0]) <= 1e-5, `loss ${l1[0]} before merge vs ${l2d[0]} after`);
  for (const t of [value, l2, ...paramPaths(grads).map((e) => e.tensor), ids, batch.targets]) {
    t.dispose();
  }
  disposeModel({ params: merged, buffers: model.buffers });
});

Deno.test("relora: mergeRelora refuses other methods", () => {
  const model = initLlama(TOY, { kind: "lowrank", rank: 4, alpha: 8 }, 0);
  assert.throws(() => mergeRelora(model, model.params, 0), /needs a relora model/);
  disposeModel(model);
});

Deno.test("reloraMerge folds scale·B·A into W and restarts the adapter at B = 0", async () => {
  const [out, r, inp, scale] = [9, 3, 7, 0.25];
  const w0 = randomArr([out, inp], 1), b0 = randomArr([out, r], 2), a0 = randomArr([r, inp], 3);
  const res = reloraMerge(toTensor(w0), toTensor(b0), toTensor(a0), scale);
  const [w, b] = await readAll([res.w, res.b]);
  const ba = mm(b0.data, a0.data, out, r, inp);
  const want = w0.data.map((x, i) => x + scale * ba[i]);
  assertClose(w, want, { atol: 1e-6, rtol: 1e-5, what: "merged W" });
  assert.ok(b.every((x) => x === 0));
  tree.dispose(res);
});

for (const dtype of ["f32", "bf16"] as const) {
  Deno.test(`reloraLinear: ${dtype} W, B, A, the effective weight built in row blocks, matches float64 and finite differences (W gets no gradient)`, async () => {
    const [t, out, inF, r, s] = [5, 40, 16, 8, 0.75];
    const ref = ([x, w, b, a]: Arr[]): Arr => {
      const ba = mm(b.data, a.data, out, r, inF);
      const weff = w.data.map((v, i) => v + s * ba[i]);
      return { shape: [t, out], data: mm(x.data, weff, t, inF, out, false, true) };
    };
    // Blocks of 16 rows of the [40, 16] effective weight.
    await withWindowBytes(alignedRowsBytes(4 * inF) * 4, () =>
      checkOp({
        op: ([x, w, b, a]) => reloraLinear(x, w, b, a, s),
        ref,
        inputs: [
          randomArr([t, inF], 1),
          randomArr([out, inF], 2, -1, 1),
          randomArr([out, r], 3, -1, 1),
          randomArr([r, inF], 4, -1, 1),
        ],
        diff: [true, false, true, true],
        dtypes: ["f32", dtype, dtype, dtype],
        fwd: { atol: 1e-4, rtol: 1e-4 },
        grad: dtype === "bf16" ? { atol: 2e-2, rtol: 1e-2 } : { atol: 2e-3, rtol: 1e-3 },
      }));
  });
}
