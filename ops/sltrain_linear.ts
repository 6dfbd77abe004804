/**
 * SLTrain's sparse-plus-low-rank linear layer as one op with a hand-written VJP, and the plain
 * low-rank linear it is compared against.
 *
 * The weight `W = s·B·A ⊕_I V` ([out, in]) exists only transiently: built for the forward product,
 * freed at once, rebuilt once in backward for dx, and never differentiated as a dense matrix. That
 * is what makes the layer's memory scale with its parameters instead of with out × in.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertDType, assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape, sizeOf } from "../core/shape.ts";
import { recordOp, untracked } from "../core/tape.ts";
import type { Tensor } from "../core/tensor.ts";
import { mapN, mulScalar } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { sddmm } from "./sparse.ts";

export { sampleSupport } from "./support.ts";

/*
 * In-place scatter-add of V at I into the freshly built dense W (which this op owns), so building W
 * costs no second out × in buffer. Each invocation heads a run of equal indices and adds the run in
 * order: race-free for any sorted list, one add per invocation for SLTrain's sorted unique supports.
 * Indices >= out·in are ignored, like the sparse ops.
 */
const SCATTER_INPLACE = defineKernel({
  name: "sltrain_scatter_inplace",
  inputs: { idx: "u32", vals: "f32" },
  outputs: { w: "f32" },
  uniforms: { size: "u32" },
  grid: "flat", // over the nnz list entries
  body: `  let j = load_idx(i);
  if (j >= u.size || (i > 0u && load_idx(i - 1u) == j)) { return; }
  var acc = load_w(j);
  var k = i;
  loop {
    acc += load_vals(k);
    k += 1u;
    if (k >= u.n || load_idx(k) != j) { break; }
  }
  store_w(j, acc);`,
});

/** W = (s·B)·A ⊕_I V. Call it untracked (it is internal to the op); the caller disposes it. */
function buildW(B: Tensor, A: Tensor, V: Tensor, I: Tensor, s: number): Tensor {
  // Scaling the out×r factor (not the out×in product) folds s into the matmul for free.
  const sB = mapN("sltrain_scale", [B], "v0 * c0", undefined, [s]);
  const W = matmul(sB, A);
  sB.dispose();
  SCATTER_INPLACE({ idx: I, vals: V, w: W }, { n: I.size, size: W.size });
  return W;
}

function check(x: Tensor, B: Tensor, A: Tensor, V: Tensor, I: Tensor, s: number): void {
  const shapes = () =>
    `x ${fmtShape(x.shape)}, B ${fmtShape(B.shape)}, A ${fmtShape(A.shape)}, ` +
    `V ${fmtShape(V.shape)}, I ${fmtShape(I.shape)}`;
  assertF32("sltrainLinear", ["x", x], ["B", B], ["A", A], ["V", V]);
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
 * Shapes: x [..., in], B [out, r], A [r, in], V [nnz] f32, I [nnz] u32 → y [..., out]. `I` holds
 * flat indices `row · in + col` into W, sorted and unique (what {@link sampleSupport} returns;
 * sorted lists with repeats also work, unsorted lists with repeats race). Indices >= out·in add
 * nothing. `s` is the low-rank scale α/r.
 *
 * The dense W is built (matmul, then scatter-add of V in place), used and freed inside the forward;
 * nothing beyond the inputs is saved. Backward with g = ∂L/∂y never forms a dense gradient:
 * dx = g·W (W rebuilt transiently), dB = s·gᵀ·(x·Aᵀ), dA = (g·s·B)ᵀ·x, dV = (gᵀ·x) sampled at I
 * (SDDMM); I gets no gradient.
 */
export function sltrainLinear(
  x: Tensor,
  B: Tensor,
  A: Tensor,
  V: Tensor,
  I: Tensor,
  s: number,
): Tensor {
  check(x, B, A, V, I, s);
  const [out, inF] = [B.shape[0], A.shape[1]];
  const lead = x.shape.slice(0, -1);
  const T = sizeOf(lead);
  // The internals use recorded ops (matmul, sddmm); the layer must stay one tape node.
  const y = untracked(() => {
    const W = buildW(B, A, V, I, s);
    const x2 = x.view([T, inF]);
    const y2 = matmul(x2, W, { transB: true });
    x2.dispose();
    W.dispose();
    const out3 = y2.view([...lead, out]);
    y2.dispose();
    return out3;
  });
  recordOp("sltrainLinear", [x, B, A, V, I], y, (g) => {
    const g2 = g.view([T, out]);
    const xf = x.view([T, inF]);
    // dx first, so the transient W is gone before the other temporaries exist.
    const Wb = buildW(B, A, V, I, s);
    const dx2 = matmul(g2, Wb);
    Wb.dispose();
    const dx = dx2.view(x.shape);
    dx2.dispose();
    // dA = (g·(s·B))ᵀ·x: the scale rides on the small out×r factor.
    const sB = mapN("sltrain_scale", [B], "v0 * c0", undefined, [s]);
    const gB = matmul(g2, sB);
    sB.dispose();
    const dA = matmul(gB, xf, { transA: true });
    gB.dispose();
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
 * Low-rank linear `y = s·(x·Aᵀ)·Bᵀ` (x [..., in], A [r, in], B [out, r] → y [..., out]), the
 * factorized baseline SLTrain adds a sparse part to. A plain composition of recorded ops, so its
 * VJP is matmul's; the scale is applied to whichever of x·Aᵀ or B is smaller.
 */
export function lowRankLinear(x: Tensor, B: Tensor, A: Tensor, s: number): Tensor {
  assertF32("lowRankLinear", ["x", x], ["B", B], ["A", A]);
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
  const sB = mulScalar(B, s);
  const y = matmul(xA, sB, { transB: true });
  xA.dispose();
  sB.dispose();
  return y;
}
