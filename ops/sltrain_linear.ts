/**
 * SLTrain's sparse-plus-low-rank linear layer as one op with a hand-written VJP, and the plain
 * low-rank linear it is compared against.
 *
 * The weight `W = s·B·A ⊕_I V` ([out, in]) exists only transiently: built for the forward product,
 * freed at once (or kept to backward, an option), rebuilt once in backward for dx; its gradient
 * dW, where formed, lives only inside the layer's backward. That is what makes the layer's memory
 * scale with its parameters instead of with out × in. Where building W costs more than it saves
 * (few tokens against out·in: a batch of one at 350M to 7B), the layer instead goes through the
 * factors, `s·(x·Aᵀ)·Bᵀ`, plus the product with the sparse part alone, `S = 0 ⊕_I V` (see
 * {@link SLTrainPath}). A W or S larger than one storage binding is built
 * and used block by block of its rows (ops/weight_rows.ts). B, A and V may be bf16.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { assertDType, bytesPerElement } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, sizeOf } from "../core/shape.ts";
import { isRecording, recordOp, untracked } from "../core/tape.ts";
import { type Tensor, zeros } from "../core/tensor.ts";
import { cast } from "./cast.ts";
import { mapN, mulScalar } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { gatherFlat, sddmm } from "./sparse.ts";
import { inputGradByRows, productByRows, weightBlockRows, type WeightRows } from "./weight_rows.ts";

export { sampleSupport } from "./support.ts";

/*
 * In-place scatter-add of V at I into a freshly built block of W (which this op owns): rows
 * [r0, r0 + n) of W, i.e. flat indices [base, base + size) with base = r0·in, so building W costs
 * no second out × in buffer. Each invocation heads a run of equal indices and adds the run in
 * order: race-free for any sorted list, one add per invocation for SLTrain's sorted unique
 * supports. Indices outside the block (e.g. >= out·in) are ignored, like the sparse ops.
 */
const scatterInPlace = kernelFamily((vals: "f32" | "bf16") =>
  defineKernel({
    name: "sltrain_scatter_inplace",
    inputs: { idx: "u32", vals },
    outputs: { w: "f32" },
    uniforms: { base: "u32", size: "u32" },
    grid: "flat", // over the nnz list entries
    body: `  let j = load_idx(i);
  if (j < u.base || j - u.base >= u.size || (i > 0u && load_idx(i - 1u) == j)) { return; }
  var acc = load_w(j - u.base);
  var k = i;
  loop {
    acc += load_vals(k);
    k += 1u;
    if (k >= u.n || load_idx(k) != j) { break; }
  }
  store_w(j - u.base, acc);`,
  })
);

/**
 * How {@link sltrainLinear} computes its products:
 * - `dense`: build W = s·B·A ⊕_I V (2·out·r·in FLOPs) and multiply by it (2·T·out·in);
 * - `factored`: go through the factors, s·(x·Aᵀ)·Bᵀ (2·T·r·(in + out)), plus the product with
 *   S = 0 ⊕_I V built alone (2·T·out·in, no out·r·in build);
 * - `auto` (default): the one with fewer FLOPs, i.e. `factored` iff T·(in + out) < out·in (the
 *   same test in forward and backward, where dx pays the same costs).
 */
export type SLTrainPath = "auto" | "dense" | "factored";

/** Options of {@link sltrainLinear}. */
export interface SLTrainLinearOptions {
  /** Which products to compute (default `auto`): see {@link SLTrainPath}. */
  path?: SLTrainPath;
  /**
   * On the dense path with W within one binding: keep the W built in forward (and s·B) until
   * backward instead of building it again there (default false). Costs out × in f32 per layer
   * from forward to backward; saves one build (a scale, an out·r·in product and the scatter) per
   * layer and step. The gradients are the same bit for bit.
   */
  keepWeight?: boolean;
}

/** The path `auto` takes for T tokens through an [out, in] layer: the one with fewer FLOPs. */
export function sltrainPath(tokens: number, out: number, inF: number): "dense" | "factored" {
  return tokens * (inF + out) < out * inF ? "factored" : "dense";
}

/** Adds V at I into `w`, the block of W whose flat indices start at `base` (in place). */
function addSparse(w: Tensor, V: Tensor, I: Tensor, base: number): void {
  scatterInPlace(V.dtype as "f32" | "bf16")({ idx: I, vals: V, w }, {
    n: I.size,
    base,
    size: w.size,
  });
}

/** The builder of W's rows (with `lowRank`) or of S's rows (without). */
function weightRows(
  B: Tensor,
  A: Tensor,
  V: Tensor,
  I: Tensor,
  s: number,
  lowRank: boolean,
): WeightRows {
  const [out, inF] = [B.shape[0], A.shape[1]];
  return (r0, n) => {
    let w: Tensor;
    if (lowRank) {
      // Scaling the n×r factor (not the n×in product) folds s into the matmul for free.
      const rows = n === out ? B.view(B.shape) : B.rows(r0, n);
      const sB = scaleBy(rows, s);
      rows.dispose();
      w = matmul(sB, A);
      sB.dispose();
    } else {
      w = zeros([n, inF]);
    }
    addSparse(w, V, I, r0 * inF);
    return w;
  };
}

const scaleBy = (t: Tensor, s: number) => mapN("sltrain_scale", [t], "v0 * c0", undefined, [s]);

function check(x: Tensor, B: Tensor, A: Tensor, V: Tensor, I: Tensor, s: number): void {
  const shapes = () =>
    `x ${fmtShape(x.shape)}, B ${fmtShape(B.shape)}, A ${fmtShape(A.shape)}, ` +
    `V ${fmtShape(V.shape)}, I ${fmtShape(I.shape)}`;
  assertDType("sltrainLinear", ["f32"], ["x", x]);
  assertDType("sltrainLinear", ["f32", "bf16"], ["B", B], ["A", A], ["V", V]);
  assertDType("sltrainLinear", ["u32"], ["I", I]);
  const bad = (why: string) => new ShapeError(`sltrainLinear: ${why} (${shapes()})`);
  if (B.rank !== 2 || A.rank !== 2) throw bad("B [out, r] and A [r, in] must be 2-D");
  if (B.shape[1] !== A.shape[0]) {
    throw bad(`ranks of B and A differ (${B.shape[1]} vs ${A.shape[0]})`);
  }
  if (x.rank < 1 || x.shape[x.rank - 1] !== A.shape[1]) {
    throw bad(`x's last dim must equal in = ${A.shape[1]}`);
  }
  if (V.rank !== 1 || I.rank !== 1 || V.size !== I.size) {
    throw bad("V and I must be 1-D with one value per index");
  }
  if (!Number.isFinite(s)) throw new RangeError(`sltrainLinear: scale must be finite, got ${s}`);
}

/**
 * SLTrain linear: `y = x·Wᵀ` with `W = s·B·A ⊕_I V`, as one tape node.
 *
 * Shapes: x [..., in] f32, B [out, r], A [r, in], V [nnz] (f32 or bf16), I [nnz] u32 → y [...,
 * out] f32. `I` holds flat indices `row · in + col` into W, sorted and unique (what
 * {@link sampleSupport} returns; sorted lists with repeats also work, unsorted lists with repeats
 * race). Indices >= out·in add nothing. `s` is the low-rank scale α/r.
 *
 * Dense path: W is built (matmul, then scatter-add of V in place), used and freed inside the
 * forward (or kept to backward with `keepWeight`). Backward with g = ∂L/∂y: dx = g·W (W rebuilt
 * transiently) and, with W within one binding, the transient dW = gᵀ·x projected onto the
 * parameters (dV = dW at I, dA = (s·B)ᵀ·dW, dB = s·dW·Aᵀ: a full-rank layer's three large
 * products plus small ones); with W in row blocks, dB = s·gᵀ·(x·Aᵀ), dA = (g·s·B)ᵀ·x and dV =
 * (gᵀ·x) sampled at I (SDDMM), never an out × in gradient. I gets no gradient. The factored path
 * computes y = s·(x·Aᵀ)·Bᵀ + x·Sᵀ and dx = (g·s·B)·A + g·S with the SDDMM for dV (see
 * {@link SLTrainPath}); the gradients are the same up to f32 rounding. Gradients of bf16 factors
 * come out bf16 (the tape rounds them once).
 */
export function sltrainLinear(
  x: Tensor,
  B: Tensor,
  A: Tensor,
  V: Tensor,
  I: Tensor,
  s: number,
  opts: SLTrainLinearOptions = {},
): Tensor {
  check(x, B, A, V, I, s);
  const [out, inF] = [B.shape[0], A.shape[1]];
  const lead = x.shape.slice(0, -1);
  const T = sizeOf(lead);
  const choice = opts.path ?? "auto";
  const factored = choice === "auto"
    ? sltrainPath(T, out, inF) === "factored"
    : choice === "factored";
  const per = weightBlockRows(out, inF, [B.shape[1] * bytesPerElement(B.dtype)]);
  if (!factored && per >= out) return denseLinear(x, B, A, V, I, s, opts.keepWeight ?? false);
  const build = weightRows(B, A, V, I, s, !factored);
  // The internals use recorded ops (matmul, sddmm); the layer must stay one tape node.
  const y = untracked(() => {
    const x2 = x.view([T, inF]);
    let init: Tensor | undefined;
    if (factored) {
      const xA = matmul(x2, A, { transB: true });
      const sxA = scaleBy(xA, s);
      xA.dispose();
      init = matmul(sxA, B, { transB: true });
      sxA.dispose();
    }
    const y2 = productByRows(x2, out, per, build, init);
    x2.dispose();
    const out3 = y2.view([...lead, out]);
    y2.dispose();
    return out3;
  });
  recordOp("sltrainLinear", [x, B, A, V, I], y, (g) => {
    const g2 = g.view([T, out]);
    const xf = x.view([T, inF]);
    // g·(s·B): the scale rides on the small out×r factor. dA = (g·s·B)ᵀ·x; the factored dx
    // starts from (g·s·B)·A.
    const sB = scaleBy(B, s);
    const gB = matmul(g2, sB);
    sB.dispose();
    const dA = matmul(gB, xf, { transA: true });
    const init = factored ? matmul(gB, A) : undefined;
    gB.dispose();
    // dx = g·W (or g·S): the transient out × in blocks are gone before the other temporaries.
    const dx2 = inputGradByRows(g2, inF, per, build, init);
    const dx = dx2.view(x.shape);
    dx2.dispose();
    // dB = s·gᵀ·(x·Aᵀ)
    const xA = matmul(xf, A, { transB: true });
    const gtxA = matmul(g2, xA, { transA: true });
    xA.dispose();
    const dB = s === 1 ? gtxA : mulScalar(gtxA, s);
    if (dB !== gtxA) gtxA.dispose();
    const dV = sddmm(g2, xf, I);
    g2.dispose();
    xf.dispose();
    return [dx, dB, dA, dV, null];
  });
  return y;
}

/**
 * The dense path with W in one binding, shaped like a full-rank layer's step: y = x·Wᵀ, dx = g·W
 * and dW = gᵀ·x (the same three large products), with the transient dW then projected onto the
 * parameters: dV = dW at I, dA = (s·B)ᵀ·dW, dB = s·dW·Aᵀ. dW lives only inside the VJP, like the
 * rebuilt W: no dense gradient outlives the layer's backward, and the SDDMM (with its layout
 * copies) is not needed.
 */
function denseLinear(
  x: Tensor,
  B: Tensor,
  A: Tensor,
  V: Tensor,
  I: Tensor,
  s: number,
  keep: boolean,
): Tensor {
  const [out, inF] = [B.shape[0], A.shape[1]];
  const lead = x.shape.slice(0, -1);
  const T = sizeOf(lead);
  const build = () =>
    untracked(() => {
      const sB = scaleBy(B, s);
      const w = matmul(sB, A);
      addSparse(w, V, I, 0);
      return { sB, w };
    });
  const made = build();
  const y = untracked(() => {
    const x2 = x.view([T, inF]);
    const y2 = matmul(x2, made.w, { transB: true });
    x2.dispose();
    const y3 = y2.view([...lead, out]);
    y2.dispose();
    return y3;
  });
  const kept = keep && isRecording();
  if (!kept) {
    made.w.dispose();
    made.sB.dispose();
  }
  recordOp("sltrainLinear", [x, B, A, V, I], y, (g) => {
    // Kept tensors belong to the tape (saved below); rebuilt ones are freed here.
    const { sB, w } = kept ? made : build();
    const g2 = g.view([T, out]);
    const xf = x.view([T, inF]);
    const dx2 = matmul(g2, w);
    if (!kept) w.dispose(); // one transient out × in at a time: W, then dW
    const dW = matmul(g2, xf, { transA: true });
    g2.dispose();
    xf.dispose();
    const dx = dx2.view(x.shape);
    dx2.dispose();
    const dV = gatherFlat(dW, I);
    const dA = matmul(sB, dW, { transA: true });
    const dWAt = matmul(dW, A, { transB: true });
    dW.dispose();
    if (!kept) sB.dispose();
    const dB = s === 1 ? dWAt : scaleBy(dWAt, s);
    if (dB !== dWAt) dWAt.dispose();
    return [dx, dB, dA, dV, null];
  }, kept ? [made.sB, made.w] : []);
  return y;
}

/**
 * Low-rank linear `y = s·(x·Aᵀ)·Bᵀ` (x [..., in] f32, A [r, in], B [out, r] f32 or bf16 → y
 * [..., out]), the factorized baseline SLTrain adds a sparse part to. A plain composition of
 * recorded ops, so its VJP is matmul's; the scale is applied to whichever of x·Aᵀ or B is smaller.
 */
export function lowRankLinear(x: Tensor, B: Tensor, A: Tensor, s: number): Tensor {
  assertDType("lowRankLinear", ["f32"], ["x", x]);
  assertDType("lowRankLinear", ["f32", "bf16"], ["B", B], ["A", A]);
  if (
    B.rank !== 2 || A.rank !== 2 || B.shape[1] !== A.shape[0] || x.rank < 2 ||
    x.shape[x.rank - 1] !== A.shape[1]
  ) {
    throw new ShapeError(
      `lowRankLinear: need x [..., in] (rank >= 2), B [out, r], A [r, in]; got x ${
        fmtShape(x.shape)
      }, B ${fmtShape(B.shape)}, A ${fmtShape(A.shape)}`,
    );
  }
  if (!Number.isFinite(s)) throw new RangeError(`lowRankLinear: scale must be finite, got ${s}`);
  const xA = matmul(x, A, { transB: true });
  const tokens = sizeOf(x.shape.slice(0, -1));
  if (s === 1) {
    const y = matmul(xA, B, { transB: true });
    xA.dispose();
    return y;
  }
  if (tokens <= B.shape[0]) {
    const sxA = mulScalar(xA, s);
    xA.dispose();
    const y = matmul(sxA, B, { transB: true });
    sxA.dispose();
    return y;
  }
  // A bf16 B is widened (recorded: its gradient passes through) before it is scaled.
  const wide = B.dtype === "bf16" ? cast(B, "f32") : B;
  const sB = mulScalar(wide, s);
  if (wide !== B) wide.dispose();
  const y = matmul(xA, sB, { transB: true });
  xA.dispose();
  sB.dispose();
  return y;
}
