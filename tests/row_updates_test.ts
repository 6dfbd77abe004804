/**
 * Per-layer updates by rows: the LM head's and the embedding's gradients handed to the optimizer a
 * block of rows at a time (`gradRows` / `onGradRows` / `updateRows`) give the standard step's
 * parameters and moments to the bit, and no whole [V, D] gradient of either exists.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { GradRows } from "../core/tape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import type { TensorTree } from "../core/tree.ts";
import { toyConfig } from "./fixtures.ts";
import { disposeModel, initLlama, type LlamaParams, loss } from "../models/llama.ts";
import { lmHeadCrossEntropy } from "../ops/lm_head.ts";
import {
  adamw,
  adamw8bit,
  applyUpdates,
  type GradientTransformation,
  isQuantized,
  type MomentsState,
  perLayer,
} from "../optim/mod.ts";
import { backward, setup, withWindowBytes } from "./util.ts";

await setup();

// 64-wide rows: 8-bit moments then take blocks of 256 rows (whole quantization blocks whose absmax
// windows start on a 256-byte offset alignment).
const HIDDEN = 64;
// Tokens per batch (2 × 6), fewer than HIDDEN: a head block of m rows then needs 4·HIDDEN·m bytes.
const [B, T] = [2, 6];

function batchOf(vocab: number) {
  const ids = Int32Array.from({ length: B * T + 1 }, (_, i) => (i * 7919 + 5) % vocab);
  return {
    inputs: tensor(ids.subarray(0, B * T), [B, T], "i32"),
    targets: tensor(ids.subarray(1), [B, T], "i32"),
  };
}

interface Case {
  /** Vocabulary rows (odd: no block size divides it). */
  vocab: number;
  /** Rows of the LM head's blocks (a multiple of 256, as 8-bit moments need). */
  headRows: number;
  /** Rows of one binding window (the embedding's blocks; caps the head's blocks too). */
  windowRows: number;
  dtype: "f32" | "bf16";
  optimizer: "adamw" | "adamw8bit";
  recompute: boolean;
}

/**
 * Two steps of the standard update and of the per-layer one taking rows; returns both runs'
 * parameters and moments as read back, and the blocks each parameter's rows came in.
 */
async function twoSteps(c: Case) {
  const make = c.optimizer === "adamw" ? adamw : adamw8bit;
  const opt = make({ lr: 0.01, weightDecay: 0.1 }) as GradientTransformation<Moments>;
  const perLayerOpt = perLayer(opt);
  const fresh = () =>
    initLlama(
      { ...toyConfig(c.vocab), hidden: HIDDEN, intermediate: 96, layers: 1 },
      { kind: "dense" },
      7,
      { dtype: c.dtype },
    );
  const [a, b] = [fresh(), fresh()];
  const batch = batchOf(c.vocab);
  const chunkBytes = 4 * HIDDEN * c.headRows;
  const lossOf = (p: LlamaParams) => loss(a, p, batch, { recompute: c.recompute, chunkBytes });
  let whole = { params: a.params, state: opt.init(a.params) };
  let perLeaf = { params: b.params, state: perLayerOpt.init(b.params) };
  const blocks = new Map<number, number[]>();
  await withWindowBytes(4 * HIDDEN * c.windowRows, async () => {
    for (let step = 0; step < 2; step++) {
      const grads = backward(whole.params, lossOf);
      const r = await opt.update(tree.unflatten(whole.params, grads), whole.state, whole.params);
      whole = { params: applyUpdates(whole.params, r.updates), state: r.state };
      const s = perLayerOpt.start(perLeaf.params, perLeaf.state);
      backward(perLeaf.params, lossOf, {
        onGrad: s.onGrad,
        onGradRows: (i) => {
          const rows = s.onGradRows(i);
          return rows && counting(rows, (n) => blocks.set(i, [...(blocks.get(i) ?? []), n]));
        },
      });
      perLeaf = await s.finish();
    }
  });
  const wholeRead = await readAll(withMoments(whole.params, whole.state));
  const perLeafRead = await readAll(withMoments(perLeaf.params, perLeaf.state));
  const counts = perLeaf.state.map((s) => s.count);
  const quantized = isQuantized(perLeaf.state[0].m[0] as never);
  tree.dispose([whole, perLeaf, batch]);
  disposeModel(a);
  disposeModel(b);
  return { wholeRead, perLeafRead, blocks, counts, quantized };
}

type Moments = MomentsState<unknown>;

/**
 * Parameters, then every first moment, then every second one: the whole-tree state's order, also
 * for the per-layer states of `perLayer`.
 */
function withMoments(params: TensorTree, state: Moments | Moments[]): Tensor[] {
  const [m, v] = Array.isArray(state)
    ? [state.map((s) => s.m[0]), state.map((s) => s.v[0])]
    : [state.m, state.v];
  return tree.flatten([params, m, v] as TensorTree);
}

/** `rows` that also reports each block's row count. */
function counting(rows: GradRows, seen: (n: number) => void): GradRows {
  return {
    multiple: rows.multiple,
    take: (g, r0) => {
      seen(g.shape[0]);
      rows.take(g, r0);
    },
    end: () => rows.end(),
  };
}

/** Row counts of blocks of `per` rows over `n` rows. */
function split(n: number, per: number): number[] {
  return Array.from({ length: Math.ceil(n / per) }, (_, i) => Math.min(per, n - i * per));
}

Deno.test("per-layer updates by rows: the LM head and the embedding updated block by block equal the standard step bit for bit (f32 AdamW and AdamW8bit, f32 and bf16 weights, with and without recompute, blocks that do not divide the vocabulary)", async () => {
  // Every combination of dtype, optimizer and recompute, over random vocabularies and blocks.
  const combos = (["f32", "bf16"] as const).flatMap((dtype) =>
    (["adamw", "adamw8bit"] as const).flatMap((optimizer) =>
      [false, true].map((recompute) => ({ dtype, optimizer, recompute }))
    )
  );
  for (const [k, combo] of combos.entries()) {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          vocab: fc.integer({ min: 260, max: 420 }).map((k) => 2 * k + 1),
          headRows: fc.constantFrom(256, 512),
          windowRows: fc.constantFrom(256, 512, 768),
        }),
        async (sizes) => {
          const c = { ...combo, ...sizes };
          const r = await twoSteps(c);
          assert.equal(r.perLeafRead.length, r.wholeRead.length);
          r.wholeRead.forEach((x, i) => assert.deepEqual(r.perLeafRead[i], x, `tensor ${i}`));
          // The count advanced once per step, not once per block.
          assert.ok(r.counts.every((n) => n === 2), `update counts ${r.counts}`);
          // 8-bit moments of the embedding (≥ 4096 elements) are quantized: whole blocks of rows.
          assert.equal(r.quantized, c.optimizer === "adamw8bit");
          // Leaf 0 is the embedding, the last one the LM head; nothing else comes by rows.
          const last = r.counts.length - 1;
          const headBlock = Math.min(c.headRows, c.windowRows);
          assert.deepEqual([...r.blocks.keys()].sort((x, y) => x - y), [0, last]);
          assert.deepEqual(r.blocks.get(0), [
            ...split(c.vocab, c.windowRows),
            ...split(c.vocab, c.windowRows),
          ]);
          assert.deepEqual(r.blocks.get(last), [
            ...split(c.vocab, headBlock),
            ...split(c.vocab, headBlock),
          ]);
        },
      ),
      { numRuns: 2, seed: 11 + k },
    );
  }
});

Deno.test("per-layer updates by rows fall back to the whole gradient, with the same bits: an LM head whose blocks do not line up with 8-bit quantization blocks, and a parameter another handle shares (which keeps its old values)", async () => {
  const [n, d, v] = [12, 64, 700];
  const targets = tensor(Int32Array.from({ length: n }, (_, i) => (i * 37) % v), [n], "i32");
  const fresh = () => ({
    h: tensor(Float32Array.from({ length: n * d }, (_, i) => Math.sin(i)), [n, d]),
    w: tensor(Float32Array.from({ length: v * d }, (_, i) => Math.cos(i) / 8), [v, d]),
  });
  const opt = adamw8bit({ lr: 0.01, weightDecay: 0.1 });
  const perLayerOpt = perLayer(opt);
  // Asking costs nothing: the offer's alignment, before anything is taken.
  const probe = fresh();
  const multiple = perLayerOpt.start(probe, perLayerOpt.init(probe)).onGradRows(1)?.multiple;
  tree.dispose(probe);
  assert.ok(multiple !== undefined && multiple > 1, `8-bit rows come in multiples (${multiple})`);
  for (const shared of [false, true]) {
    // Shared: blocks that line up, but another handle on W. Else: blocks of half the multiple.
    const chunkBytes = 4 * d * (shared ? multiple : multiple / 2);
    type P = { h: Tensor; w: Tensor };
    const lossOf = (p: P) => lmHeadCrossEntropy(p.h, p.w, targets, { chunkBytes });
    const a = fresh(), b = fresh();
    const alias = shared ? b.w.view(b.w.shape) : null;
    const [w0] = await readAll([b.w]);
    const grads = backward(a, lossOf);
    const r = await opt.update(tree.unflatten(a, grads), opt.init(a), a);
    const whole = { params: applyUpdates(a, r.updates), state: r.state };
    const s = perLayerOpt.start(b, perLayerOpt.init(b));
    const taken: number[] = [];
    backward(b, lossOf, {
      onGrad: s.onGrad,
      onGradRows: (i) => {
        const rows = s.onGradRows(i);
        assert.equal(rows === null, shared, `offer for leaf ${i}`);
        return rows && counting(rows, (m) => taken.push(m));
      },
    });
    const perLeaf = await s.finish();
    assert.deepEqual(taken, [], "no block was taken");
    const x = await readAll(withMoments(whole.params, whole.state as Moments));
    const y = await readAll(withMoments(perLeaf.params, perLeaf.state as Moments[]));
    x.forEach((t, i) => assert.deepEqual(y[i], t, `tensor ${i}`));
    if (alias) {
      assert.deepEqual((await readAll([alias]))[0], w0, "the other handle still sees W as it was");
      assert.notDeepEqual(y[1], w0, "W moved");
    }
    tree.dispose([whole, perLeaf, alias]);
  }
  targets.dispose();
});
