import assert from "node:assert/strict";
import { dispatchStats, startProfile, stopProfile } from "../core/kernel.ts";
import { deviceInfo } from "../core/device.ts";
import { tensor } from "../core/tensor.ts";
import { exp, mul } from "../ops/mod.ts";
import { setup } from "./util.ts";

await setup();

Deno.test("pipelines are cached by source: repeating an op with new shapes compiles nothing new", async () => {
  const a = tensor([1, 2, 3]);
  exp(a).dispose();
  const before = dispatchStats();
  for (const n of [5, 17, 300]) {
    const x = tensor(new Float32Array(n));
    exp(x).dispose();
    x.dispose();
  }
  await a.data();
  const after = dispatchStats();
  assert.equal(after.pipelines, before.pipelines);
  assert.equal(after.dispatches - before.dispatches, 3);
  a.dispose();
});

Deno.test("profile: GPU time per op name from timestamp queries", async () => {
  if (!deviceInfo().timestamps) throw new Error("the test adapter should support timestamp-query");
  const x = tensor(new Float32Array(4096).fill(1));
  startProfile();
  const y = exp(x);
  const z = mul(y, y);
  const prof = await stopProfile();
  const names = prof.map((e) => e.name);
  assert.ok(names.includes("exp") && names.includes("mul"), names.join(","));
  for (const e of prof) {
    assert.equal(e.count, 1);
    assert.ok(Number.isFinite(e.ms) && e.ms >= 0, `${e.name}: ${e.ms} ms`);
  }
  // Profiling changes how work is submitted, not what it computes.
  assert.ok(Math.abs((await z.data())[0] - Math.E * Math.E) < 1e-5);
  for (const t of [x, y, z]) t.dispose();
});
