/**
 * GaLore's projector refresh, exact vs randomized, on real gradients: one full-rank gradient of a
 * LLaMA preset on Brown text (llama tokenizer), then for the seven matrices of a few layers the
 * time of each projector method and the share of the gradient's energy ‖PᵀG‖² (left; ‖G·Pᵀ‖²
 * right) each captures, relative to the exact projector's (the most any rank-r projector can).
 *
 *   deno run -A bench/galore_projector.ts [--model 350m] [--rank 256] [--batch 2] [--seq 256]
 *     [--layers 0,11,23] [--exact cpu64|gpu32]
 * @module
 */
import { parseArgs } from "node:util";
import { init } from "../core/device.ts";
import { sync } from "../core/kernel.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { Tape } from "../core/tape.ts";
import * as tree from "../core/tree.ts";
import { loadBrown } from "../data/brown.ts";
import { tokenizeCached } from "../data/cache.ts";
import { llamaTokenizer } from "../data/tokenizer.ts";
import { PRESETS } from "../models/config.ts";
import { initLlama, loss } from "../models/llama.ts";
import { matmul } from "../ops/matmul.ts";
import { computeProjectors, projectionGeometry, type ProjectorMethod } from "../optim/galore.ts";

const { values: flags } = parseArgs({
  options: {
    model: { type: "string", default: "350m" },
    rank: { type: "string", default: "256" },
    batch: { type: "string", default: "2" },
    seq: { type: "string", default: "256" },
    layers: { type: "string", default: "0,11,23" },
    exact: { type: "string", default: "cpu64" },
  },
});
const config = PRESETS[flags.model as keyof typeof PRESETS];
if (!config) throw new Error(`--model ${flags.model}: unknown preset`);
const rank = Number(flags.rank), batchSize = Number(flags.batch), seq = Number(flags.seq);
const layers = flags.layers.split(",").map(Number);
const exact = flags.exact as ProjectorMethod;

const info = await init();
const docs = (await tokenizeCached((await loadBrown()).slice(0, 200), await llamaTokenizer())).docs;
const stream = Uint32Array.from(docs.flatMap((d) => [...d]));
const n = batchSize * seq;
const batch = {
  inputs: tensor(Int32Array.from(stream.subarray(0, n)), [batchSize, seq], "i32"),
  targets: tensor(Int32Array.from(stream.subarray(1, n + 1)), [batchSize, seq], "i32"),
};
const model = initLlama(config, { kind: "dense" }, 0);
const leaves = tree.flatten(model.params);
const paths = tree.paths(model.params);
const tape = new Tape();
tape.watch(...leaves);
const value = tape.run(() => loss(model, model.params, batch));
const grads = tape.backward(value, leaves) as Tensor[];
tape.dispose();
await sync();

/** ‖PᵀG‖² (left) or ‖G·Pᵀ‖² (right). */
async function energy(g: Tensor, p: Tensor, left: boolean): Promise<number> {
  const r = left ? matmul(p, g, { transA: true }) : matmul(g, p, { transB: true });
  const [d] = await readAll([r]);
  r.dispose();
  let s = 0;
  for (const x of d as Float32Array) s += x * x;
  return s;
}

async function timed(g: Tensor, method: ProjectorMethod, key: string) {
  const t0 = performance.now();
  const [p] = await computeProjectors([g], rank, method, [key], 0);
  await sync();
  return { p, ms: performance.now() - t0 };
}

console.log(
  `# ${flags.model}, rank ${rank}, gradient of one ${batchSize}×${seq} Brown batch at init; ${info.kind}`,
);
console.log(
  `\n| matrix | shape | ${exact} ms | randomized ms | speed-up | energy captured vs exact |`,
);
console.log("|---|---|---|---|---|---|");
let sumExact = 0, sumRand = 0;
for (const [i, path] of paths.entries()) {
  const layer = Number(/^layers\.(\d+)\./.exec(path)?.[1] ?? NaN);
  if (!layers.includes(layer) || leaves[i].rank !== 2) continue;
  const g = grads[i];
  const { left } = projectionGeometry(g, rank);
  const e = await timed(g, exact, path);
  const r = await timed(g, "randomized", path);
  const share = (await energy(g, r.p, left)) / (await energy(g, e.p, left));
  sumExact += e.ms;
  sumRand += r.ms;
  console.log(
    `| ${path} | ${g.shape.join("×")} | ${e.ms.toFixed(0)} | ${r.ms.toFixed(0)} | ${
      (e.ms / r.ms).toFixed(1)
    }× | ${(100 * share).toFixed(2)}% |`,
  );
  tree.dispose([e.p, r.p]);
}
console.log(
  `\ntotal: ${exact} ${(sumExact / 1000).toFixed(1)} s, randomized ${
    (sumRand / 1000).toFixed(1)
  } s`,
);
tree.dispose([grads, model.params, model.buffers, batch, value]);
