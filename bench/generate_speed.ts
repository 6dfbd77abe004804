/**
 * sample.ts's decoding speed with and without the KV cache, measured back to back in one process
 * on a freshly initialized model: tokens/s of `generate` (greedy) after the first token, and the
 * time to the first token (for the cached path: merging the block linears into dense weights, the
 * prefill and one sync).
 *
 * Usage: `deno run -A bench/generate_speed.ts [--model tiny] [--vocab 256] [--method sltrain]
 *   [--prompt 16] [--tokens 32] [--reps 2]`
 * @module
 */
import { parseArgs } from "node:util";
import { deviceInfo, init } from "../core/device.ts";
import { Rng } from "../core/rng.ts";
import { withVocab } from "../models/config.ts";
import { loadConfig } from "../cli/load_config.ts";
import { disposeModel, initLlama } from "../models/llama.ts";
import { generate } from "../cli/generate.ts";
import { methodName } from "../cli/flags.ts";
import { linearMethod, type RunConfig } from "../cli/run_config.ts";

const { values: f } = parseArgs({
  options: {
    model: { type: "string", default: "tiny" },
    vocab: { type: "string", default: "256" },
    method: { type: "string", default: "sltrain" },
    prompt: { type: "string", default: "16" },
    tokens: { type: "string", default: "32" },
    reps: { type: "string", default: "2" },
  },
});
await init();
const config = withVocab(await loadConfig(f.model!), Number(f.vocab));
const rank = Math.floor(config.hidden / 4);
const method = linearMethod({
  method: methodName(f.method!),
  rank,
  alpha: rank / 4,
  delta: 0.03,
  seed: 1,
} as RunConfig);
const model = initLlama(config, method, 42);
const rng = new Rng(3);
const prompt = Array.from({ length: Number(f.prompt) }, () => rng.nextInt(config.vocabSize));
const tokens = Number(f.tokens);
const window = config.maxSeqLen ?? 1024;

/** Seconds to the first token (merge + prefill + one sync) and tokens/s over the later ones. */
async function speed(cache: boolean): Promise<{ first: number; rate: number }> {
  const t0 = performance.now();
  let t1 = 0;
  const out = await generate({ model, params: model.params }, prompt, {
    tokens,
    window,
    seed: 0,
    greedy: true,
    cache,
    onToken: () => void (t1 ||= performance.now()),
  });
  const t2 = performance.now();
  return { first: (t1 - t0) / 1000, rate: (out.length - 1) / ((t2 - t1) / 1000) };
}

// Warm-up compiles every pipeline of both paths.
await speed(true);
await speed(false);
const rows: [string, { first: number; rate: number }[]][] = [["KV cache", []], [
  "full recompute",
  [],
]];
for (let r = 0; r < Number(f.reps); r++) {
  rows[0][1].push(await speed(true));
  rows[1][1].push(await speed(false));
}
const best = (xs: { rate: number }[]) => Math.max(...xs.map((x) => x.rate));
console.log(
  `${
    deviceInfo().summary.split("\n")[0]
  }\n${f.model} (${config.vocabSize} vocab), ${method.kind}, ` +
    `prompt ${prompt.length}, ${tokens} new tokens, greedy; best of ${f.reps}`,
);
for (const [name, xs] of rows) {
  console.log(
    `${name.padEnd(15)} ${best(xs).toFixed(1).padStart(7)} tokens/s after the first token; ` +
      `first token after ${xs.map((x) => x.first.toFixed(2)).join(", ")} s (runs: ${
        xs.map((x) => x.rate.toFixed(1)).join(", ")
      } tokens/s)`,
  );
}
console.log(`speed-up ${(best(rows[0][1]) / best(rows[1][1])).toFixed(1)}x`);
disposeModel(model);
