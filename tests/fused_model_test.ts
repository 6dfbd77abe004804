/**
 * The model on its fused kernels (flash attention with RoPE, addRmsNorm, swiglu; no transposes) at
 * a sequence spanning several attention blocks, in both kernel configurations: logits against the
 * float64 reference, and the real-GPU configuration's loss and gradients against the adapter's.
 * (Kernel names come from the profiler, which needs `timestamp-query`: both software adapters
 * have it.)
 */
import assert from "node:assert/strict";
import { deviceInfo } from "../core/device.ts";
import { startProfile, stopProfile } from "../core/kernel.ts";
import { Rng } from "../core/rng.ts";
import { valueAndGrad } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { disposeModel, forward, initLlama, type LlamaParams, loss } from "../models/llama.ts";
import type { LinearMethod } from "../models/method.ts";
import { type FusedTarget, setFusedTarget } from "../ops/fused_target.ts";
import { refLogits } from "./llama_ref.ts";
import { toyConfig } from "./fixtures.ts";
import { assertClose, setup } from "./util.ts";

await setup();

// T = 21: three blocks of 8 keys, a ragged last one, and more rows than one 16-row workgroup.
const [B, T] = [2, 21];
const CONFIG = toyConfig(13, 32);

const METHODS: LinearMethod[] = [
  { kind: "dense" },
  { kind: "sltrain", rank: 4, delta: 0.1, alpha: 8, seed: 3 },
];

for (const method of METHODS) {
  Deno.test(`llama ${method.kind} on the fused kernels, T = ${T}: logits match float64 in both kernel configurations, and the GPU configuration's loss and gradients equal the adapter's`, async () => {
    const model = initLlama(CONFIG, method, 1);
    // Redraw every parameter away from init (f32-rounded) so attention is far from uniform.
    const rng = new Rng(11);
    const cpu = new Map<string, Float64Array>();
    const leaves = tree.flatten(model.params).map((t, i) => {
      const v = Float64Array.from(
        { length: t.size },
        () => Math.fround(0.6 * rng.nextFloat() - 0.3),
      );
      cpu.set(tree.paths(model.params)[i], v);
      return tensor(Float32Array.from(v), [...t.shape]);
    });
    const params = tree.unflatten(model.params, leaves) as LlamaParams;
    const ids = Int32Array.from({ length: B * T }, () => rng.nextInt(CONFIG.vocabSize));
    const inputs = tensor(ids, [B, T], "i32");
    const targets = tensor(ids.map((x) => (x + 1) % CONFIG.vocabSize), [B, T], "i32");

    const run = async (target: FusedTarget) => {
      const prev = setFusedTarget(target);
      try {
        startProfile();
        const { value, grads } = valueAndGrad((p: LlamaParams) =>
          loss(model, p, { inputs, targets })
        )(params);
        const kernels = (await stopProfile()).map((e) => e.name);
        // The step runs the fused kernels of this configuration, and no layout copies.
        const sg = target === "auto" && deviceInfo().subgroupSize === 8;
        for (const k of [`attention_forward_${sg ? "sg" : "wg"}`, "swiglu", "add_rms_norm"]) {
          assert.ok(kernels.some((n) => n.startsWith(k)), `${target}: ${k} not in ${kernels}`);
        }
        if (method.kind === "dense") assert.ok(!kernels.includes("transpose"), `${kernels}`);
        const logits = forward(model, params, inputs);
        const out = await readAll([logits, value, ...tree.flatten(grads)]);
        tree.dispose([logits, value, grads]);
        return out;
      } finally {
        setFusedTarget(prev);
      }
    };
    const [auto, gpu] = [await run("auto"), await run("gpu")];
    const buffers = tree.paths(model.buffers).map((p, i) => [p, tree.flatten(model.buffers)[i]]);
    const bufferData = await readAll(buffers.map(([, t]) => t as Tensor));
    const expected = refLogits(
      {
        config: CONFIG,
        method,
        params: cpu,
        buffers: new Map(buffers.map(([p], i) => [p as string, bufferData[i]])),
      },
      ids,
      B,
      T,
    );
    assertClose(auto[0], expected, { atol: 2e-5, rtol: 1e-5, what: "logits (adapter's kernels)" });
    assertClose(gpu[0], expected, { atol: 2e-5, rtol: 1e-5, what: "logits (GPU kernels)" });
    assert.ok(
      Math.max(...Array.from(expected, Math.abs)) > 0.3,
      "logits too small to test anything",
    );
    for (let i = 1; i < auto.length; i++) {
      assertClose(gpu[i], auto[i], {
        atol: 1e-6,
        rtol: 1e-4,
        what: `loss / gradient leaf ${i - 1}`,
      });
    }
    tree.dispose([leaves, inputs, targets]);
    disposeModel(model);
  });
}
