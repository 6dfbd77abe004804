import assert from "node:assert/strict";
import { readSafetensors } from "../cli/safetensors.ts";
import type { RunConfig } from "../cli/run_config.ts";
import { resumeConflicts, trainRun } from "../cli/trainer.ts";
import { quietIO, toyData, toyRun } from "./fixtures.ts";
import { backward, setup } from "./util.ts";
import { memoryStats, resetPeakBytes } from "../core/memory.ts";
import { readAll, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { PRESETS } from "../models/config.ts";
import { initLlama, type LlamaParams, loss } from "../models/llama.ts";
import { mulScalar } from "../ops/mod.ts";
import { applyUpdates, perLayer } from "../optim/mod.ts";
import { buildOptimizer } from "../cli/run_config.ts";

await setup();

function runConfig(method: RunConfig["method"], steps: number): RunConfig {
  return toyRun({ method, steps });
}

const data = toyData;

async function params(dir: string): Promise<Map<string, Uint32Array>> {
  const f = await readSafetensors(`${dir}/checkpoint.safetensors`);
  return new Map(
    Object.entries(f.tensors).filter(([k]) => k.startsWith("params.")).map((
      [k, t],
    ) => [k, new Uint32Array(t.data.buffer)]),
  );
}

for (const method of ["sltrain", "galore", "fira", "apollo"] as const) {
  Deno.test(`resume: ${method} stopped at step 3 and resumed equals an uninterrupted run bit for bit`, async () => {
    const a = await Deno.makeTempDir();
    const b = await Deno.makeTempDir();
    const d = data();
    const full = await trainRun(
      runConfig(method, 6),
      d,
      quietIO(a, { resume: false, shouldStop: () => false }),
    );
    let steps = 0;
    const part = await trainRun(
      runConfig(method, 6),
      d,
      quietIO(b, { resume: false, shouldStop: () => ++steps >= 3 }),
    );
    assert.equal(part.interrupted, true);
    assert.equal(part.steps, 3);
    const rest = await trainRun(
      runConfig(method, 6),
      d,
      quietIO(b, { resume: true, shouldStop: () => false }),
    );
    assert.equal(rest.steps, 6);
    const pa = await params(a);
    const pb = await params(b);
    assert.deepEqual([...pa.keys()], [...pb.keys()]);
    for (const [k, v] of pa) assert.deepEqual(pb.get(k), v, `parameter ${k} differs`);
    assert.deepEqual(rest.history.train, full.history.train);
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  });
}

Deno.test("resume refuses a checkpoint from another config and names the difference", async () => {
  const dir = await Deno.makeTempDir();
  await trainRun(
    runConfig("sltrain", 2),
    data(),
    quietIO(dir, { resume: false, shouldStop: () => false }),
  );
  const other = { ...runConfig("sltrain", 2), rank: 3 };
  await assert.rejects(
    () => trainRun(other, data(), quietIO(dir, { resume: true, shouldStop: () => false })),
    /another config[\s\S]*rank: checkpoint 4, now 3/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("resume checks every setting but an allowlist: a setting added later is checked too", () => {
  const run = runConfig("sltrain", 6);
  assert.deepEqual(resumeConflicts({ ...run, steps: 9, evalEvery: 2, logEvery: 1 }, run), []);
  const later = { ...run, momentum: 0.5 } as unknown as RunConfig;
  assert.deepEqual(resumeConflicts(later, run), ["momentum: checkpoint undefined, now 0.5"]);
  assert.deepEqual(resumeConflicts({ ...run, perLayer: true }, run), [
    "perLayer: checkpoint false, now true",
  ]);
});

Deno.test("per-layer updates on the small preset: bit-identical parameters; every gradient leaves the peak, the optimizer adds nothing to it, and no whole [V, D] gradient exists", async () => {
  // The real small preset (vocab 32000: embedding and lm_head are 32.8 MB each), 1×16 tokens;
  // LM head blocks of 4 MiB (4096 rows), so its gradient can come in blocks of rows.
  const run = toyRun({ method: "full", model: PRESETS.small, batch: 1, seq: 16, weightDecay: 0.1 });
  const ids = Int32Array.from({ length: 16 }, (_, i) => (i * 7919) % 32000);
  const batch = {
    inputs: tensor(ids, [1, 16], "i32"),
    targets: tensor(ids.map((t) => (t + 1) % 32000), [1, 16], "i32"),
  };
  const model = initLlama(run.model, { kind: "dense" }, run.seed);
  const lossOf = (p: LlamaParams) => loss(model, p, batch, { chunkBytes: 4 << 20 });
  const gradBytes = tree.bytes(model.params); // one f32 gradient per f32 parameter
  /** Peak live bytes above the start of one step; `onGrad` = per-layer, else standard. */
  const measure = async (step: () => Promise<void>) => {
    const base = memoryStats().liveBytes;
    resetPeakBytes();
    await step();
    assert.equal(memoryStats().liveBytes, base, "the step leaves nothing behind");
    return memoryStats().peakBytes - base;
  };
  const opt = buildOptimizer(run, model.params);
  const perLayerOpt = perLayer(opt);
  const copy = () => tree.map(model.params, (t) => mulScalar(t, 1));
  let std = { params: copy(), state: opt.init(model.params) };
  let pl = { params: copy(), state: perLayerOpt.init(model.params) };
  const standard = await measure(async () => {
    const grads = tree.unflatten(std.params, backward(std.params, lossOf));
    const r = await opt.update(grads, std.state, std.params);
    std = { params: applyUpdates(std.params, r.updates), state: r.state };
  });
  const layered = await measure(async () => {
    const s = perLayerOpt.start(pl.params, pl.state);
    backward(pl.params, lossOf, { onGrad: s.onGrad, onGradRows: s.onGradRows });
    pl = await s.finish();
  });
  // The floor of any per-layer scheme with this model code: forward + backward dropping each
  // gradient the moment it is final (what is left is activations and the gradient being built).
  const bare = await measure(() =>
    Promise.resolve(void backward(model.params, lossOf, (g) => g.dispose()))
  );
  const [a, b] = [await readAll(tree.flatten(std.params)), await readAll(tree.flatten(pl.params))];
  const paths = tree.paths(model.params);
  a.forEach((x, i) => assert.deepEqual(b[i], x, `parameter ${paths[i]} differs`));
  assert.ok(
    standard >= gradBytes,
    `standard: ${standard} B above params and state < all gradients ${gradBytes} B`,
  );
  assert.ok(layered <= bare, `per-layer peak ${layered} B > bare forward+backward ${bare} B`);
  // Together: per-layer lowers the peak by every gradient byte (embedding and lm_head
  // included) except what the backward itself holds at its peak.
  assert.ok(standard - layered >= gradBytes - bare);
  // The LM head's and the embedding's gradients come to Adam in blocks of rows: below the bare
  // backward, which holds each of them whole in turn.
  const vocabGrad = tree.bytes(model.params.lmHead);
  console.log(`  peaks above params: per-layer ${layered} B, bare backward ${bare} B`);
  assert.ok(bare >= vocabGrad, `bare ${bare} B < one [V, D] gradient ${vocabGrad} B`);
  assert.ok(layered < vocabGrad, `per-layer ${layered} B >= one [V, D] gradient ${vocabGrad} B`);
  tree.dispose([std, pl, model, batch]);
});

for (const method of ["galore", "fira", "apollo"] as const) {
  Deno.test(`per-layer ${method} (projection refresh inside backward, 2 micro-batches per step) matches the standard step`, async () => {
    const dirs: string[] = [];
    for (const perLayer of [false, true]) {
      const dir = await Deno.makeTempDir();
      dirs.push(dir);
      await trainRun(
        { ...runConfig(method, 4), perLayer, gradAccum: 2 },
        data(),
        quietIO(dir, { resume: false, shouldStop: () => false }),
      );
    }
    const [pa, pb] = [await params(dirs[0]), await params(dirs[1])];
    for (const [k, v] of pa) assert.deepEqual(pb.get(k), v, `parameter ${k} differs`);
    for (const d of dirs) await Deno.remove(d, { recursive: true });
  });
}

Deno.test("per-layer full-rank runs (LM head and embedding updated by rows) match the standard run bit for bit: f32 AdamW, and bf16 weights with AdamW8bit, with and without --recompute", async () => {
  for (const overrides of [{}, { dtype: "bf16", optimizer: "adamw8bit" }] as const) {
    const dirs: string[] = [];
    for (const [perLayer, recompute] of [[false, false], [true, false], [true, true]]) {
      const dir = await Deno.makeTempDir();
      dirs.push(dir);
      await trainRun(
        toyRun({ ...overrides, method: "full", steps: 3, weightDecay: 0.1, perLayer, recompute }),
        data(),
        quietIO(dir, { resume: false, shouldStop: () => false }),
      );
    }
    const [pa, ...rest] = await Promise.all(dirs.map(params));
    for (const pb of rest) {
      for (const [k, v] of pa) assert.deepEqual(pb.get(k), v, `parameter ${k} differs`);
    }
    for (const d of dirs) await Deno.remove(d, { recursive: true });
  }
});

Deno.test("measured memory equals the estimate to the byte, optimizer state included, for every full-rank-weight method and bf16 weights", async () => {
  for (const method of ["full", "galore", "fira", "apollo", "apollo-mini"] as const) {
    for (const perLayer of [false, true]) {
      const r = await trainRun(
        { ...runConfig(method, 2), perLayer },
        data(),
        quietIO("", { resume: false }),
      );
      const what = `${method}${perLayer ? " per layer" : ""}`;
      assert.equal(r.stateBytes, r.estimatedStateBytes, `${what}: optimizer state`);
      assert.equal(r.measuredBytes, r.estimatedBytes, `${what}: all`);
    }
  }
  // bf16 weights with 8-bit states, as the summary table reports them.
  for (const method of ["full", "sltrain"] as const) {
    const r = await trainRun(
      { ...runConfig(method, 2), dtype: "bf16", optimizer: "adamw8bit" },
      data(),
      quietIO("", { resume: false }),
    );
    assert.equal(r.measuredBytes, r.estimatedBytes, `${method} bf16 adamw8bit`);
  }
});

Deno.test("SLTrain refactorization + momentum reset and ReLoRA merges: resume across them is bit-exact", async () => {
  for (
    const overrides of [{ method: "sltrain", refactorEvery: 2 }, {
      method: "relora",
      reloraEvery: 2,
    }] as const
  ) {
    const run = toyRun({ ...overrides, steps: 6 });
    const a = await Deno.makeTempDir();
    const b = await Deno.makeTempDir();
    const kinds: unknown[] = [];
    const full = await trainRun(run, data(), {
      ...quietIO(a),
      log: (r) => void kinds.push(r.kind),
    });
    let n = 0;
    await trainRun(run, data(), quietIO(b, { shouldStop: () => ++n >= 3 }));
    await trainRun(run, data(), quietIO(b, { resume: true }));
    const [pa, pb] = [await params(a), await params(b)];
    for (const [k, v] of pa) {
      assert.deepEqual(pb.get(k), v, `${run.method}: parameter ${k} differs`);
    }
    assert.ok(full.history.train.every(([, l]) => Number.isFinite(l)));
    const resets = kinds.filter((k) => k === "refactor" || k === "merge");
    assert.equal(resets.length, 2, `${run.method}: a reset at steps 2 and 4`);
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});
