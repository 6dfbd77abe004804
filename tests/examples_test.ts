/**
 * The programs in examples/ use only mod.ts's exports; running them here keeps the public API from
 * rotting under them.
 */
import assert from "node:assert/strict";
import { main as customModel } from "../examples/custom_model.ts";
import { main as llamaSltrain } from "../examples/llama_sltrain.ts";

Deno.test("examples/custom_model.ts: the MLP's loss falls below a tenth of its start", async () => {
  const losses = await customModel();
  assert.ok(losses.at(-1)! < losses[0] / 10, `losses ${losses}`);
});

Deno.test("examples/llama_sltrain.ts: the loss falls; measured memory equals the estimate to the byte", async () => {
  const r = await llamaSltrain();
  assert.ok(Math.abs(r.losses[0] - Math.log(256)) < 0.1, `first loss ${r.losses[0]}`);
  assert.ok(r.losses.at(-1)! < r.losses[0] - 1, `losses ${r.losses}`);
  assert.equal(r.measuredBytes, r.estimatedBytes);
  assert.ok(r.peakBytes > r.measuredBytes);
});
