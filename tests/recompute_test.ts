/**
 * Activation recomputation (`loss(..., { recompute: true })`): the same gradients to the bit, also
 * handed out one by one to a per-layer hook, and a backward that holds one block's activations
 * instead of all of them.
 */
import assert from "node:assert/strict";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { type LlamaConfig, PRESETS, withVocab } from "../models/config.ts";
import { disposeModel, initLlama, type LlamaParams, loss } from "../models/llama.ts";
import type { LinearMethod } from "../models/method.ts";
import { cast } from "../ops/cast.ts";
import { quietIO, toyConfig, toyRun } from "./fixtures.ts";
import { trainRun } from "../cli/trainer.ts";
import { packedSequences } from "../data/batches.ts";
import { backward, setup } from "./util.ts";
import { Tape } from "../core/tape.ts";
import { adamw, perLayer } from "../optim/mod.ts";

await setup();

function batchOf(vocab: number, b: number, t: number) {
  const ids = Int32Array.from({ length: b * t + 1 }, (_, i) => (i * 7919 + 5) % vocab);
  return {
    inputs: tensor(ids.subarray(0, b * t), [b, t], "i32"),
    targets: tensor(ids.subarray(1), [b, t], "i32"),
  };
}

const METHODS: [string, LinearMethod, "f32" | "bf16"][] = [
  ["dense", { kind: "dense" }, "f32"],
  ["sltrain", { kind: "sltrain", rank: 4, delta: 0.1, alpha: 8, seed: 3 }, "f32"],
  ["sltrain bf16", { kind: "sltrain", rank: 4, delta: 0.1, alpha: 8, seed: 3 }, "bf16"],
  ["relora", { kind: "relora", rank: 4, alpha: 8 }, "f32"],
];

for (const [name, method, dtype] of METHODS) {
  Deno.test(`recompute (${name}): gradients bit-identical to the plain backward, also through onGrad`, async () => {
    const model = initLlama({ ...toyConfig(11), layers: 3 }, method, 4, { dtype });
    const batch = batchOf(11, 2, 6);
    const lossOf = (recompute: boolean) => (p: LlamaParams) => loss(model, p, batch, { recompute });
    const plain = backward(model.params, lossOf(false));
    const rec = backward(model.params, lossOf(true));
    // The hook makes a tensor of its own from each gradient (as an optimizer does), which must
    // outlive the recomputed backward it is called from.
    const hooked: Tensor[] = [];
    backward(model.params, lossOf(true), (g, i) => {
      hooked[i] = cast(g, "f32");
      g.dispose();
    });
    const [p, r, h] = [await readAll(plain), await readAll(rec), await readAll(hooked)];
    const paths = tree.paths(model.params);
    p.forEach((g, i) => {
      assert.deepEqual(r[i], g, `gradient of ${paths[i]}`);
      assert.deepEqual(h[i], g, `onGrad gradient of ${paths[i]}`);
    });
    tree.dispose([plain, rec, hooked, batch]);
    disposeModel(model);
  });
}

Deno.test("train: --recompute with --per-layer gives the same run to the bit", async () => {
  const histories = [];
  for (const recompute of [false, true]) {
    const run = toyRun({ perLayer: true, recompute, steps: 3, logEvery: 1, evalEvery: 3 });
    const docs = Array.from(
      { length: 6 },
      (_, i) => Uint32Array.from({ length: 30 }, (_, j) => (i * 7 + j * 3) % 38),
    );
    const seqs = packedSequences(docs, run.seq, 38, 39);
    const data = { train: seqs, val: seqs };
    histories.push((await trainRun(run, data, { ...quietIO(""), out: null })).history);
  }
  assert.deepEqual(histories[1], histories[0]);
});

Deno.test("recompute at the small preset: backward holds about one block's activations (peaks from the memory counters, 1 and 4 layers)", () => {
  const [b, t] = [2, 64];
  const batch = batchOf(256, b, t);
  let blockParams = 0;
  /** Peak live bytes of forward + backward above the params, each gradient dropped when final. */
  const peak = (config: LlamaConfig, recompute: boolean) => {
    const model = initLlama(config, { kind: "dense" }, 1);
    blockParams = tree.bytes(model.params.layers[0]);
    const base = memoryStats().liveBytes;
    resetPeakBytes();
    backward(model.params, (p) => loss(model, p, batch, { recompute }), (g) => g.dispose());
    const bytes = memoryStats().peakBytes - base;
    assert.equal(memoryStats().liveBytes, base, "nothing left behind");
    disposeModel(model);
    return bytes;
  };
  const small = withVocab(PRESETS.small, 256);
  const [plain1, plain4] = [peak({ ...small, layers: 1 }, false), peak(small, false)];
  const [rec1, rec4] = [peak({ ...small, layers: 1 }, true), peak(small, true)];
  const block = (plain4 - plain1) / 3; // what one more block adds to a plain backward's peak
  const boundary = 4 * b * t * small.hidden; // one block's input, [B, T, D] f32
  console.log(
    `  peak above params: plain ${plain1} B (1 layer) / ${plain4} B (4 layers), recompute ` +
      `${rec1} B / ${rec4} B; one block ${block.toFixed(0)} B, a block input ${boundary} B, ` +
      `one block's parameters ${blockParams} B`,
  );
  // Plain: every block's activations stay on the tape until backward reaches them.
  assert.ok(block > 10 * boundary, `a block holds ${block} B of activations`);
  // Recompute: depth adds only the saved block inputs.
  assert.ok(
    rec4 - rec1 <= 3 * boundary * 1.05,
    `recompute grows by ${rec4 - rec1} B over 3 blocks`,
  );
  // The peak is one block's worth: a one-block model's plain peak, the other blocks' inputs, and
  // the recomputed block's output and output gradient. (Each parameter gradient goes to the hook
  // as soon as it is final inside the recomputed backward; were they held until the block's
  // backward ended, they would add one block's parameters: 3.2 MB here.)
  assert.ok(
    rec4 <= plain1 + 5 * boundary * 1.05,
    `recompute peak ${rec4} B, one block's parameters ${blockParams} B`,
  );
  tree.dispose(batch);
});

Deno.test("per-layer updates inside recomputed blocks write the weights in place (no copy of any)", async () => {
  const model = initLlama({ ...toyConfig(11), layers: 3 }, { kind: "dense" }, 4);
  const batch = batchOf(11, 2, 6);
  let params = model.params;
  for (const recompute of [false, true]) {
    const perLayerOpt = perLayer(adamw({ lr: 1e-3 }));
    const state = perLayerOpt.init(params);
    const leaves = tree.flatten(params);
    const buffers = leaves.map((t) => t.storage.buffer);
    const tape = new Tape();
    tape.watch(...leaves);
    const value = tape.run(() => loss(model, params, batch, { recompute }));
    const step = perLayerOpt.start(params, state);
    tape.backward(value, leaves, { onGrad: step.onGrad });
    const next = await step.finish();
    // A parameter the tape still held when its update ran would have been copied (donate).
    const paths = tree.paths(params);
    tree.flatten(next.params).forEach((t, i) =>
      assert.equal(t.storage.buffer, buffers[i], `recompute ${recompute}: ${paths[i]} was copied`)
    );
    params = next.params;
    tree.dispose([next.state, value]);
  }
  tree.dispose([batch, params, model.buffers]);
});
