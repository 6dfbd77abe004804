/**
 * bf16 weights end to end: what `initLlama({ dtype: "bf16" })` stores, and that a bf16 model
 * computes exactly what an f32 model holding the same (rounded) values computes, with gradients
 * that are that model's gradients rounded once; and that a bf16 model learns.
 */
import assert from "node:assert/strict";
import { fromBf16Bits, toBf16Bits } from "../core/bf16.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, scope, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { PRESETS, withVocab } from "../models/config.ts";
import { disposeModel, initLlama, type LlamaParams, loss, paramPaths } from "../models/llama.ts";
import type { LinearMethod } from "../models/method.ts";
import { refactorLlama } from "../models/refactor.ts";
import { mergeRelora } from "../models/relora.ts";
import { cast, mulScalar, sub } from "../ops/mod.ts";
import { toyConfig } from "./fixtures.ts";
import { setup } from "./util.ts";

await setup();

const METHODS: Record<string, LinearMethod> = {
  dense: { kind: "dense" },
  lowrank: { kind: "lowrank", rank: 4, alpha: 8 },
  sltrain: { kind: "sltrain", rank: 4, delta: 0.1, alpha: 8, seed: 3 },
  relora: { kind: "relora", rank: 4, alpha: 8 },
};

const round = (x: number) => fromBf16Bits(toBf16Bits(x));

function batchOf(vocab: number, b: number, t: number, seed: number) {
  const ids = Int32Array.from({ length: b * t + 1 }, (_, i) => (i * 7919 + seed) % vocab);
  return {
    inputs: tensor(ids.subarray(0, b * t), [b, t], "i32"),
    targets: tensor(ids.subarray(1), [b, t], "i32"),
  };
}

for (const [name, method] of Object.entries(METHODS)) {
  Deno.test(`bf16 ${name}: 2-D weights and V are bf16, norms f32, the f32 draws rounded; loss equals an f32 model of the same values to the bit, gradients its gradients rounded`, async () => {
    const cfg = toyConfig(11);
    const f32 = initLlama(cfg, method, 7);
    const bf = initLlama(cfg, method, 7, { dtype: "bf16" });
    const entries = paramPaths(bf.params);
    for (const e of entries) {
      assert.equal(e.tensor.dtype, e.role === "norm" ? "f32" : "bf16", e.path);
    }
    const frozen = tree.flatten(bf.buffers).filter((t) => t.dtype !== "u32");
    assert.ok(frozen.every((t) => t.dtype === "bf16"), "ReLoRA's frozen W is bf16");
    const [a, b] = [
      await readAll(tree.flatten(f32.params)),
      await readAll(tree.flatten(bf.params)),
    ];
    a.forEach((x, i) => assert.deepEqual(b[i], x.map(round), entries[i].path));

    // The f32 model holding exactly the bf16 values (buffers too).
    const same: LlamaParams = tree.unflatten(
      bf.params,
      tree.flatten(bf.params).map((t) => cast(t, "f32")),
    );
    const sameModel = {
      ...bf,
      buffers: tree.map(bf.buffers, (t) => (t.dtype === "bf16" ? cast(t, "f32") : t)),
    };
    const batch = batchOf(11, 2, 5, 1);
    const lossOf = (m: typeof bf) => (p: LlamaParams) => loss(m, p, batch);
    const gb = valueAndGrad(lossOf(bf))(bf.params);
    const gf = valueAndGrad(lossOf(sameModel))(same);
    const [lb, lf, ...grads] = await readAll([
      gb.value,
      gf.value,
      ...tree.flatten(gb.grads),
      ...tree.flatten(gf.grads),
    ]);
    assert.equal(lb[0], lf[0]);
    const n = entries.length;
    entries.forEach((e, i) => {
      assert.equal(tree.flatten(gb.grads)[i].dtype, e.tensor.dtype, `grad of ${e.path}`);
      const want = e.tensor.dtype === "bf16" ? grads[n + i].map(round) : grads[n + i];
      assert.deepEqual(grads[i], want, `grad of ${e.path}`);
    });
    tree.dispose([gb, gf, same, batch, f32.params, f32.buffers]);
    tree.dispose(
      tree.flatten(sameModel.buffers).filter((t) => !tree.flatten(bf.buffers).includes(t)),
    );
    disposeModel(bf);
  });
}

Deno.test("a bf16 model learns: 15 steps of SGD on one batch at the tiny preset's width bring the loss down as the f32 model's does", async () => {
  const cfg = { ...withVocab(PRESETS.tiny, 64), layers: 2 };
  const method: LinearMethod = { kind: "sltrain", rank: 16, delta: 0.05, alpha: 16, seed: 1 };
  const batch = batchOf(64, 4, 32, 3);
  const curve = async (dtype: "f32" | "bf16") => {
    const model = initLlama(cfg, method, 2, { dtype });
    let params = model.params;
    const losses: Tensor[] = [];
    for (let step = 0; step < 15; step++) {
      const { value, grads } = valueAndGrad((p: LlamaParams) => loss(model, p, batch))(params);
      losses.push(value);
      // p ← p − lr·g in f32, stored back in the parameter's dtype (round to nearest).
      const gs = tree.flatten(grads);
      const next = tree.unflatten(
        params,
        scope(() =>
          tree.flatten(params).map((p, i) => {
            const moved = sub(cast(p, "f32"), mulScalar(cast(gs[i], "f32"), 0.3));
            return p.dtype === "bf16" ? cast(moved, "bf16") : moved;
          })
        ),
      );
      tree.dispose([params, grads]);
      params = next;
    }
    const ls = (await readAll(losses)).map((l) => l[0]);
    tree.dispose([losses, params, model.buffers]);
    return ls;
  };
  const f = await curve("f32");
  const b = await curve("bf16");
  console.log(
    `  loss f32 ${f[0].toFixed(3)} -> ${f.at(-1)!.toFixed(3)}, bf16 ${b[0].toFixed(3)} -> ${
      b.at(-1)!.toFixed(3)
    }`,
  );
  assert.ok(Math.abs(b[0] - f[0]) < 1e-2, "same start");
  assert.ok(b.at(-1)! < b[0] - 1, `bf16 loss ${b[0]} -> ${b.at(-1)}: not learning`);
  assert.ok(Math.abs(b.at(-1)! - f.at(-1)!) < 0.1 * f.at(-1)!, "bf16 tracks f32 within 10%");
});

Deno.test("bf16 models through refactorization and ReLoRA merges keep bf16 weights", async () => {
  const cfg = toyConfig(11);
  const slt = initLlama(cfg, METHODS.sltrain, 1, { dtype: "bf16" });
  const refactored = await refactorLlama(slt, slt.params);
  const rel = initLlama(cfg, METHODS.relora, 1, { dtype: "bf16" });
  const merged = mergeRelora(rel, rel.params, 9);
  for (const e of [...paramPaths(refactored), ...paramPaths(merged)]) {
    assert.equal(e.tensor.dtype, e.role === "norm" ? "f32" : "bf16", e.path);
  }
  assert.ok(tree.flatten(rel.buffers).every((t) => t.dtype === "bf16"), "merged W stays bf16");
  disposeModel({ params: refactored, buffers: slt.buffers });
  disposeModel({ params: merged, buffers: rel.buffers });
});
