/**
 * One training run of `tiny` on fixed bytes from a fixed seed, with the library alone, so that Deno
 * and a browser page run exactly the same code (bench/browser_vs_deno.ts compares them).
 * @module
 */
import { models, optim, readAll, tensor, tree, valueAndGrad } from "../mod.ts";

const { initLlama, loss, PRESETS, withVocab } = models;
const { adamw, applyUpdates } = optim;

/** Per-step losses and tokens/s of one run. */
export interface SameRun {
  /** Training loss of each step. */
  losses: number[];
  /** Tokens per second over the steps after the first (which compiles the shaders). */
  tokensPerSec: number;
}

const TEXT = "In the beginning God created the heaven and the earth. And the earth was without " +
  "form, and void; and darkness was upon the face of the deep. ";

/** Trains `tiny` with `method` (`full` or `sltrain`) for `steps` steps, batch 8 × 64, seed 0. */
export async function sameRun(method: string, steps: number): Promise<SameRun> {
  const config = withVocab(PRESETS.tiny, 256);
  const linear: models.LinearMethod = method === "sltrain"
    ? { kind: "sltrain", rank: 32, delta: 0.03, alpha: 8, seed: 0 }
    : { kind: "dense" };
  const model = initLlama(config, linear, 0);
  const bytes = new TextEncoder().encode(TEXT.repeat(40));
  const [B, T] = [8, 64];
  let params: models.LlamaParams = model.params;
  const opt = adamw({ lr: 3e-3 });
  let state = opt.init(params);
  const losses = [];
  let t1 = 0;
  for (let s = 0; s < steps; s++) {
    if (s === 1) t1 = performance.now();
    const rows = (off: number) =>
      Int32Array.from(
        { length: B * T },
        (_, i) => bytes[(s * 97 + Math.floor(i / T) * 131 + (i % T) + off) % bytes.length],
      );
    const batch = {
      inputs: tensor(rows(0), [B, T], "i32"),
      targets: tensor(rows(1), [B, T], "i32"),
    };
    const { value, grads } = valueAndGrad((p: models.LlamaParams) => loss(model, p, batch))(params);
    const r = await opt.update(grads, state, params);
    state = r.state;
    params = applyUpdates(params, r.updates);
    losses.push((await readAll([value]))[0][0]);
    tree.dispose([value, batch]);
  }
  const seconds = (performance.now() - t1) / 1000;
  tree.dispose([params, model.buffers, state]);
  return { losses, tokensPerSec: ((steps - 1) * B * T) / seconds };
}
