/**
 * Token-weighted validation loss over a fixed prefix of the validation sequences: sums and counts
 * stay on the GPU and are read back once.
 * @module
 */
import { readAll, scope, type Tensor, tensor, zeros } from "../core/tensor.ts";
import { IGNORE_INDEX, type Sequences } from "../data/batches.ts";
import { evalLossSums, type LlamaModel, type LlamaParams } from "../models/llama.ts";
import { add } from "../ops/mod.ts";

/** Result of {@link evaluate}. */
export interface EvalResult {
  /** Mean cross-entropy per target token. */
  loss: number;
  /** Targets counted. */
  tokens: number;
}

/**
 * Mean next-token loss over the first validation sequences until `maxTokens` targets are covered
 * (always the same sequences, so evaluations are comparable across steps and methods).
 */
export async function evaluate(
  model: LlamaModel,
  params: LlamaParams,
  val: Sequences,
  batch: number,
  maxTokens: number,
): Promise<EvalResult> {
  let sum: Tensor = zeros([]);
  let count: Tensor = zeros([]);
  let seen = 0;
  for (let start = 0; start < val.count && seen < maxTokens; start += batch) {
    const rows = Math.min(batch, val.count - start);
    const inp = new Int32Array(rows * val.seq);
    const tgt = new Int32Array(rows * val.seq);
    for (let r = 0; r < rows; r++) val.fill(start + r, inp, tgt, r * val.seq);
    for (const t of tgt) if (t !== IGNORE_INDEX) seen++;
    const next = scope(() => {
      const inputs = tensor(inp, [rows, val.seq], "i32");
      const targets = tensor(tgt, [rows, val.seq], "i32");
      const part = evalLossSums(model, params, { inputs, targets });
      return { sum: add(sum, part.sum), count: add(count, part.count) };
    });
    sum.dispose();
    count.dispose();
    sum = next.sum;
    count = next.count;
  }
  const [s, c] = await readAll([sum, count]);
  sum.dispose();
  count.dispose();
  return { loss: c[0] > 0 ? s[0] / c[0] : NaN, tokens: c[0] };
}
