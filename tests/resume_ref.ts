/**
 * Shared by the optimizer tests: runs a transform over a fixed sequence of gradients, straight
 * through and with a checkpoint save/load in the middle, and compares the final parameters bit for
 * bit (the state must round-trip exactly, counts and all).
 */
import assert from "node:assert/strict";
import { bytesSource, memorySink } from "../io/bytes.ts";
import { readCheckpoint, writeCheckpoint } from "../io/checkpoint.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { applyUpdates, type GradientTransformation } from "../optim/mod.ts";

/** Deterministic pseudo-random values in [-1, 1) (a small LCG, so tests need no device RNG). */
export function lcg(seed: number, n: number, scale = 1): Float32Array {
  let x = (seed * 2654435761 + 12345) >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = ((x / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}

/** Gradient data of `steps` steps for parameters of `shapes` (seeded; entry i of step s). */
export function gradSeries(shapes: number[][], steps: number, seed: number): Float32Array[][] {
  return Array.from(
    { length: steps },
    (_, s) => shapes.map((sh, i) => lcg(seed + 97 * s + 13 * i, sh.reduce((a, b) => a * b, 1))),
  );
}

type Params = Record<string, Tensor>;

/** Runs `opt` from `params` over steps [from, to) of `grads`, consuming params and state. */
export async function runSteps<P extends Params>(
  opt: GradientTransformation,
  params: P,
  state: unknown,
  grads: Float32Array[][],
  from: number,
  to: number,
): Promise<{ params: P; state: unknown }> {
  const names = Object.keys(params);
  for (let s = from; s < to; s++) {
    const g: Params = {};
    names.forEach((n, i) => (g[n] = tensor(grads[s][i], params[n].shape)));
    const r = await opt.update(g, state, params);
    state = r.state;
    params = applyUpdates(params, r.updates);
  }
  return { params, state };
}

/**
 * Asserts that `make()`'s transform gives the same bits straight through `steps` steps as with a
 * checkpoint written and read back after step `cut` (a fresh transform continuing from it).
 */
export async function assertResumesBitExact(
  make: () => GradientTransformation,
  init: () => Params,
  grads: Float32Array[][],
  cut: number,
): Promise<void> {
  const opt = make();
  const p0 = init();
  const straight = await runSteps(opt, p0, opt.init(p0), grads, 0, grads.length);
  const p1 = init();
  const half = await runSteps(opt, p1, opt.init(p1), grads, 0, cut);
  // In memory, through the same serializer as checkpoint files, so this runs in browsers too.
  const sink = memorySink();
  await writeCheckpoint(sink, {
    params: half.params,
    buffers: {},
    optState: half.state,
    step: cut,
    meta: {},
  });
  tree.dispose([half.params, half.state as tree.TensorTree]);
  const back = await readCheckpoint(bytesSource(sink.bytes(), "ck.safetensors"));
  const resumed = await runSteps(
    make(),
    back.params as Params,
    back.optState,
    grads,
    cut,
    grads.length,
  );
  const names = Object.keys(straight.params);
  const a = await readAll(names.map((n) => straight.params[n]));
  const b = await readAll(names.map((n) => resumed.params[n]));
  names.forEach((n, i) => {
    assert.deepEqual(
      new Uint32Array(Float32Array.from(b[i]).buffer),
      new Uint32Array(Float32Array.from(a[i]).buffer),
      `${n} after resuming at step ${cut}`,
    );
  });
  tree.dispose(
    [straight.params, straight.state, resumed.params, resumed.state] as tree.TensorTree,
  );
}
