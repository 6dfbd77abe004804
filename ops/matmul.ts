/**
 * Matrix multiplication, 2-D and batched, in the layouts A·B, A·Bᵀ, Aᵀ·B and Aᵀ·Bᵀ, so a backward
 * pass never materializes a transpose. Kernels come from `matmul_wgsl.ts` (register-tiled on
 * software adapters, workgroup-memory tiled on real GPUs).
 * @module
 */
import { deviceInfo } from "../core/device.ts";
import { ShapeError } from "../core/errors.ts";
import { dispatch } from "../core/kernel.ts";
import { fmtShape, sizeOf } from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import { assertF32 } from "./elementwise.ts";
import { chooseMatmulConfig, matmulShader, matmulWorkgroups } from "./matmul_wgsl.ts";
import { sum } from "./reduce.ts";

/** Layout flags of {@link matmul}. */
export interface MatmulOptions {
  /** Use Aᵀ: A is stored [..., K, M]. */
  transA?: boolean;
  /** Use Bᵀ: B is stored [..., N, K]. */
  transB?: boolean;
}

interface Plan {
  batch: number;
  m: number;
  n: number;
  k: number;
  aBatched: boolean;
  bBatched: boolean;
  outShape: number[];
}

function plan(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Plan {
  const what = () =>
    `matmul: ${fmtShape(a.shape)}${transA ? "ᵀ" : ""} · ${fmtShape(b.shape)}${transB ? "ᵀ" : ""}`;
  if (a.rank < 2 || b.rank < 2) throw new ShapeError(`${what()}: operands need rank >= 2`);
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [m, ka] = transA ? [ac, ar] : [ar, ac];
  const [kb, n] = transB ? [bc, br] : [br, bc];
  if (ka !== kb) throw new ShapeError(`${what()}: inner dimensions ${ka} and ${kb} differ`);
  const aLead = a.shape.slice(0, -2);
  const bLead = b.shape.slice(0, -2);
  // x[..., K] · W: fold the leading dims of A into M, one plain 2-D product.
  if (b.rank === 2 && !transA) {
    const rows = sizeOf(a.shape.slice(0, -1));
    return {
      batch: 1,
      m: rows,
      n,
      k: ka,
      aBatched: false,
      bBatched: false,
      outShape: [...a.shape.slice(0, -1), n],
    };
  }
  const lead = aLead.length > 0 ? aLead : bLead;
  if (aLead.length > 0 && bLead.length > 0 && fmtShape(aLead) !== fmtShape(bLead)) {
    throw new ShapeError(
      `${what()}: batch dimensions ${fmtShape(aLead)} and ${fmtShape(bLead)} differ`,
    );
  }
  return {
    batch: sizeOf(lead),
    m,
    n,
    k: ka,
    aBatched: aLead.length > 0,
    bBatched: bLead.length > 0,
    outShape: [...lead, m, n],
  };
}

function run(a: Tensor, b: Tensor, transA: boolean, transB: boolean, p: Plan): Tensor {
  const out = Tensor.empty(p.outShape);
  if (sizeOf(p.outShape) === 0) return out;
  if (p.k === 0) {
    out.dispose();
    return zeros(p.outShape);
  }
  const cfg = chooseMatmulConfig(p.m, p.n, p.k, transA, transB, deviceInfo().kind);
  dispatch({
    name: `matmul_${transA ? "T" : "N"}${transB ? "T" : "N"}`,
    code: matmulShader(cfg),
    inputs: [a.binding(), b.binding()],
    outputs: [out.binding()],
    uniforms: new Uint32Array([
      p.m,
      p.n,
      p.k,
      p.batch,
      p.aBatched ? p.m * p.k : 0,
      p.bBatched ? p.k * p.n : 0,
      p.m * p.n,
      0,
    ]),
    workgroups: matmulWorkgroups(cfg, p.m, p.n, p.batch),
  });
  return out;
}

/**
 * Matrix product op(A)·op(B) with op = identity or transpose per {@link MatmulOptions}.
 *
 * Shapes: A [..., M, K] (or [..., K, M] with `transA`), B [..., K, N] (or [..., N, K] with `transB`).
 * Leading (batch) dims must match, or one operand may be 2-D and is shared across the batch. A 2-D B
 * with an untransposed A of any rank multiplies the last axis: `x [B, T, D] · W [D, N] -> [B, T, N]`.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  assertF32("matmul", a, b);
  const p = plan(a, b, transA, transB);
  const y = run(a, b, transA, transB, p);
  const folded = b.rank === 2 && !transA;
  recordOp("matmul", [a, b], y, (g) => {
    const { ga, gb } = folded
      ? foldedGrads(a, b, g, transB)
      : batchedGrads(a, b, g, transA, transB);
    return [sumBatch(ga, a.shape), sumBatch(gb, b.shape)];
  });
  return y;
}

// Gradients of C = op(A)·op(B) per batch, each again one matmul in some layout.
function batchedGrads(
  a: Tensor,
  b: Tensor,
  g: Tensor,
  tA: boolean,
  tB: boolean,
): { ga: Tensor; gb: Tensor } {
  if (!tA && !tB) return { ga: matmul(g, b, { transB: true }), gb: matmul(a, g, { transA: true }) };
  if (!tA && tB) return { ga: matmul(g, b), gb: matmul(g, a, { transA: true }) };
  if (tA && !tB) return { ga: matmul(b, g, { transB: true }), gb: matmul(a, g) };
  return {
    ga: matmul(b, g, { transA: true, transB: true }),
    gb: matmul(g, a, { transA: true, transB: true }),
  };
}

// x[..., K]·op(W): dx is again folded; dW contracts over every leading row at once.
function foldedGrads(a: Tensor, b: Tensor, g: Tensor, tB: boolean): { ga: Tensor; gb: Tensor } {
  const rows = sizeOf(a.shape.slice(0, -1));
  const af = a.view([rows, a.shape[a.rank - 1]]);
  const gf = g.view([rows, g.shape[g.rank - 1]]);
  const ga = tB ? matmul(g, b) : matmul(g, b, { transB: true });
  const gb = tB ? matmul(gf, af, { transA: true }) : matmul(af, gf, { transA: true });
  af.dispose();
  gf.dispose();
  return { ga, gb };
}

// A gradient computed per batch for an operand that was shared across the batch is summed over it.
function sumBatch(g: Tensor, shape: readonly number[]): Tensor {
  if (g.rank === shape.length) return g;
  const s = sum(g.view([sizeOf(g.shape.slice(0, g.rank - shape.length)), ...shape]), 0);
  g.dispose();
  return s;
}
