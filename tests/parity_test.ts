/**
 * Parity with the PyTorch reference (bench/torch_ref, written from the methods' definitions): every
 * method and option of bench/parity_cases.ts — 8-bit states, bf16 weights, per-layer updates,
 * recomputation, weight decay and clipping, refactorization with momentum reset, GaLore's second
 * refresh, GoLore's random refreshes, LoRO's exact steps, SPAM's and Stable-SPAM's resets — trains
 * a one-block model for 6 steps from the same weights and batches in both; the losses agree within
 * 1e-4 relative at every step and the final weights within f32 rounding (one bf16 ulp, or an 8-bit
 * code, where those are stored). Needs Debian's python3-torch (installed here and in CI).
 */
import assert from "node:assert/strict";
import { PARITY_CASES, runParity } from "../bench/parity_cases.ts";
import { setup } from "./util.ts";

await setup();

Deno.test("every method and option: losses within 1e-4 of PyTorch's at every step, weights at the end", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sltrain-parity-test-" });
  try {
    const model = `${dir}/micro.json`;
    await Deno.writeTextFile(
      model,
      JSON.stringify({
        vocabSize: 256,
        hidden: 32,
        intermediate: 64,
        heads: 2,
        layers: 1,
        maxSeqLen: 64,
        rmsNormEps: 1e-6,
        ropeBase: 10000,
        initStd: 0.02,
      }),
    );
    const flags = ["--model", model, "--batch", "2", "--seq", "16", "--rank", "4", "--alpha", "4"];
    const results = await runParity(Object.keys(PARITY_CASES), {
      steps: 6,
      tight: 6,
      dir,
      flags: [...flags, "--eval-tokens", "64"],
      quiet: true,
    });
    for (const r of results) {
      assert.equal(r.ours.length, 6, r.name);
      assert.ok(r.tight <= 1e-4, `${r.name}: loss rel. diff ${r.tight} at step ${r.worst}`);
      // f32 weights differ by rounding; a bf16 weight or an 8-bit moment code may land one
      // step apart on a near-tie.
      const tol = /bf16|8bit/.test(r.name) ? 2e-2 : 1e-3;
      assert.ok(r.weights <= tol, `${r.name}: weights rel. diff ${r.weights} (${r.worstTensor})`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
