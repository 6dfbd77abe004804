/**
 * A LLaMA with SLTrain linears (W = s·B·A ⊕_I V), driven without train.ts: init, the loss, a
 * per-layer update inside backward (each weight updated the moment its gradient is final, so the
 * gradients are never all resident), and the memory counters beside the analytic estimate.
 * Run: `deno run -A examples/llama_sltrain.ts`
 * @module
 */
import {
  init,
  memoryStats,
  models,
  optim,
  readAll,
  resetPeakBytes,
  Tape,
  type Tensor,
  tensor,
  tree,
} from "../mod.ts";

/** What a run reports: losses, and bytes measured and estimated. */
export interface Report {
  /** Training loss of each step. */
  losses: number[];
  /** Live bytes of parameters, sparse supports and optimizer state after training. */
  measuredBytes: number;
  /** `estimateMemory(..., "ours").total` for the same model and AdamW. */
  estimatedBytes: number;
  /** Highest live bytes during the last step. */
  peakBytes: number;
}

/** Trains the `tiny` preset on a fixed sentence (bytes as tokens) for `steps` steps. */
export async function main(steps = 12): Promise<Report> {
  await init();
  const config = models.withVocab(models.PRESETS.tiny, 256);
  const method: models.LinearMethod = {
    kind: "sltrain",
    rank: 32,
    delta: 0.03,
    alpha: 32,
    seed: 0,
  };
  const model = models.initLlama(config, method, 0);
  const bytes = new TextEncoder().encode(
    "the jury said the election was fair and the city agreed. ",
  );
  const ids = Int32Array.from({ length: 4 * 33 }, (_, i) => bytes[i % bytes.length]);
  const rows = (off: number) =>
    Int32Array.from({ length: 4 * 32 }, (_, i) => ids[Math.floor(i / 32) * 33 + (i % 32) + off]);
  const batch = {
    inputs: tensor(rows(0), [4, 32], "i32"),
    targets: tensor(rows(1), [4, 32], "i32"),
  };

  const perLayerOpt = optim.perLayer(optim.adamw({ lr: 3e-3 }));
  let params = model.params;
  let state = perLayerOpt.init(params);
  const losses: Tensor[] = [];
  for (let step = 0; step < steps; step++) {
    resetPeakBytes();
    const leaves = tree.flatten(params);
    const tape = new Tape();
    tape.watch(...leaves);
    const value = tape.run(() => models.loss(model, params, batch));
    const update = perLayerOpt.start(params, state);
    tape.backward(value, leaves, update); // update.onGrad takes each gradient once final
    ({ params, state } = await update.finish());
    losses.push(value);
  }
  const report: Report = {
    losses: (await readAll(losses)).map((d) => d[0]),
    measuredBytes: tree.bytes([params, model.buffers, state]),
    estimatedBytes:
      models.estimateMemory(config, { method, optimizer: { kind: "adam" } }, "ours").total,
    peakBytes: memoryStats().peakBytes,
  };
  tree.dispose([params, model.buffers, state, losses, batch]);
  return report;
}

if (import.meta.main) {
  const r = await main();
  console.log("losses:", r.losses.map((l) => l.toFixed(3)).join(" "));
  console.log(
    `memory: ${r.measuredBytes} B measured, ${r.estimatedBytes} B estimated, step peak ${r.peakBytes} B`,
  );
}
