/**
 * LoRO (Mo et al., ICLR 2025, "Parameter and Memory Efficient Pretraining via Low-rank Riemannian
 * Optimization") as a transform over the factor pairs (B [d, r], A [r, n]) of low-rank linears
 * W = B·A: most steps move B and A by their Adam directions scaled by r/d (the cheap
 * "approximate" step); every k-th step instead takes an exact Riemannian step of the product on
 * the manifold of rank-r matrices — the product minus the learning rate times the Adam-preconditioned
 * gradient projected onto the tangent space, retracted to rank r by a truncated SVD — computed
 * without ever forming a d×n matrix. Definitions and defaults follow the benchmark's code
 * (OptimAI-Lab Memory_Efficient_Pretraining, `pt_loro/LORO.py`).
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { canonicalSigns, qr, svdJacobi } from "../ops/svd.ts";
import { axpbyInPlace, scaleInPlace } from "./inplace.ts";
import { andThen, type GradientTransformation, type Schedule, scheduleAt } from "./transform.ts";

/** Options of {@link loro}. */
export interface LoroOptions {
  /** Learning rate (or a schedule of the update count): LoRO applies it itself. */
  lr: Schedule;
  /** Every k-th update (k, 2k, …) is an exact Riemannian step; default 5 (the reference's). */
  exactEvery?: number;
}

/** State of {@link loro}. */
export interface LoroState {
  /** Updates since init: the learning-rate clock and which steps are exact. */
  count: number;
  /** State of the inner transform (the Adam moments of every factor). */
  inner: unknown;
}

/** Result of {@link loroExactStep}: the new factors, row-major float64. */
export interface LoroFactors {
  /** B' [d, r]. */
  b: Float64Array;
  /** A' [r, n]. */
  a: Float64Array;
}

/** Solves X·U = Y for X, U upper-triangular [r, r], Y [rows, r] (row-major); null if U is singular. */
function solveRightUpper(y: Float64Array, u: Float64Array, rows: number, r: number) {
  const x = new Float64Array(rows * r);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < r; j++) {
      let s = y[i * r + j];
      for (let k = 0; k < j; k++) s -= x[i * r + k] * u[k * r + j];
      const piv = u[j * r + j];
      if (piv === 0) return null;
      x[i * r + j] = s / piv;
    }
  }
  return x;
}

/** Y − Q·(Qᵀ·Y) for Q, Y [rows, r]: Y's part outside span(Q). */
function outside(q: Float64Array, y: Float64Array, rows: number, r: number): Float64Array {
  const c = new Float64Array(r * r);
  for (let k = 0; k < rows; k++) {
    for (let i = 0; i < r; i++) {
      for (let j = 0; j < r; j++) c[i * r + j] += q[k * r + i] * y[k * r + j];
    }
  }
  const out = Float64Array.from(y);
  for (let k = 0; k < rows; k++) {
    for (let j = 0; j < r; j++) {
      let s = 0;
      for (let i = 0; i < r; i++) s += q[k * r + i] * c[i * r + j];
      out[k * r + j] -= s;
    }
  }
  return out;
}

/**
 * LoRO's exact step of one pair, in float64: with W = B·A, B = Q_b·R_b and Aᵀ = Q_a·R_a (thin QR),
 * and dB, dA the preconditioned factor gradients (dB = G·Aᵀ and dA = Bᵀ·G for an implied G), it
 * returns the factors of the best rank-r approximation of W − η·P(G), where P projects onto the
 * tangent space at W: P(G) = Q_bQ_bᵀG + GQ_aQ_aᵀ − Q_bQ_bᵀGQ_aQ_aᵀ. G·Q_a = dB·R_a⁻¹ and
 * Gᵀ·Q_b = dAᵀ·R_b⁻¹ come from the factor gradients alone; the parts outside the spans are
 * orthonormalized ((I − Q_bQ_bᵀ)GQ_a = Q_b'R_b', (I − Q_aQ_aᵀ)GᵀQ_b = Q_a'R_a'), so
 * W − η·P(G) = [Q_b Q_b']·M·[Q_a Q_a']ᵀ with the 2r×2r
 * M = [[R_bR_aᵀ − η·Q_bᵀGQ_a, −η·R_a'ᵀ], [−η·R_b', 0]], and its top-r SVD U·Σ·Vᵀ gives
 * B' = [Q_b Q_b']·U·√Σ, A' = √Σ·Vᵀ·[Q_a Q_a']ᵀ, each pair's sign fixed by {@link canonicalSigns}
 * (B' column's largest entry positive). Null when B or A is rank-deficient (R singular).
 *
 * The reference code puts −η·R_b (not R_b') in M's lower-left block, which is not the tangent
 * projection above; this follows the method as derived.
 */
export function loroExactStep(
  b: ArrayLike<number>,
  a: ArrayLike<number>,
  db: ArrayLike<number>,
  da: ArrayLike<number>,
  d: number,
  r: number,
  n: number,
  eta: number,
): LoroFactors | null {
  const at = new Float64Array(n * r);
  const dat = new Float64Array(n * r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < n; j++) {
      at[j * r + i] = a[i * n + j];
      dat[j * r + i] = da[i * n + j];
    }
  }
  const qb = qr(b, d, r);
  const qa = qr(at, n, r);
  // G·Q_a = dB·R_a⁻¹ [d, r]; Gᵀ·Q_b = dAᵀ·R_b⁻¹ [n, r] (dA = R_bᵀ·Q_bᵀ·G).
  const gqa = solveRightUpper(Float64Array.from(db), qa.r, d, r);
  const gtqb = solveRightUpper(dat, qb.r, n, r);
  if (!gqa || !gtqb) return null;
  const yb = qr(outside(qb.q, gqa, d, r), d, r);
  const ya = qr(outside(qa.q, gtqb, n, r), n, r);
  const k = 2 * r;
  const m = new Float64Array(k * k);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      // (R_b·R_aᵀ)[i][j] and (Q_bᵀ·G·Q_a)[i][j] = Σ_l (GᵀQ_b)[l][i]·Q_a[l][j].
      let core = 0;
      for (let l = 0; l < r; l++) core += qb.r[i * r + l] * qa.r[j * r + l];
      let proj = 0;
      for (let l = 0; l < n; l++) proj += gtqb[l * r + i] * qa.q[l * r + j];
      m[i * k + j] = core - eta * proj;
      m[i * k + r + j] = -eta * ya.r[j * r + i];
      m[(r + i) * k + j] = -eta * yb.r[i * r + j];
    }
  }
  const { u, s, v } = svdJacobi(m, k, k);
  const root = Array.from({ length: r }, (_, j) => Math.sqrt(s[j]));
  canonicalSigns(u, v, k, r, (j) => {
    // Column j of B' up to the factor √σ_j, whose largest entry in magnitude decides the sign.
    let best = 0;
    for (let i = 0; i < d; i++) {
      let acc = 0;
      for (let l = 0; l < r; l++) {
        acc += qb.q[i * r + l] * u[l * k + j] + yb.q[i * r + l] * u[(r + l) * k + j];
      }
      if (Math.abs(acc) > Math.abs(best)) best = acc;
    }
    return best;
  });
  const nb = new Float64Array(d * r);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < r; j++) {
      let acc = 0;
      for (let l = 0; l < r; l++) {
        acc += qb.q[i * r + l] * u[l * k + j] + yb.q[i * r + l] * u[(r + l) * k + j];
      }
      nb[i * r + j] = acc * root[j];
    }
  }
  const na = new Float64Array(r * n);
  for (let c = 0; c < n; c++) {
    for (let j = 0; j < r; j++) {
      let acc = 0;
      for (let l = 0; l < r; l++) {
        acc += qa.q[c * r + l] * v[l * k + j] + ya.q[c * r + l] * v[(r + l) * k + j];
      }
      na[j * n + c] = acc * root[j];
    }
  }
  return { b: nb, a: na };
}

/** The factor pairs of a tree: leaf indices of each linear's B and A, by path prefix. */
function pairsOf(paths: readonly string[], leaves: readonly Tensor[]): [number, number][] {
  const byPrefix = new Map<string, { A?: number; B?: number }>();
  paths.forEach((p, i) => {
    const cut = p.lastIndexOf(".");
    const [prefix, name] = [p.slice(0, Math.max(cut, 0)), p.slice(cut + 1)];
    if (name !== "A" && name !== "B") {
      throw new ShapeError(`loro: ${p || i} is not a low-rank factor (A or B); route it elsewhere`);
    }
    const e = byPrefix.get(prefix) ?? {};
    e[name] = i;
    byPrefix.set(prefix, e);
  });
  return [...byPrefix].map(([prefix, e]) => {
    if (e.A === undefined || e.B === undefined) {
      throw new ShapeError(
        `loro: ${prefix} needs both factors A and B in one update (per-layer updates cannot run LoRO)`,
      );
    }
    const [b, a] = [leaves[e.B], leaves[e.A]];
    if (b.rank !== 2 || a.rank !== 2 || b.shape[1] !== a.shape[0]) {
      throw new ShapeError(
        `loro: ${prefix} needs B [d, r] and A [r, n], got ${fmtShape(b.shape)} and ${
          fmtShape(a.shape)
        }`,
      );
    }
    if (b.shape[1] > Math.min(b.shape[0], a.shape[1])) {
      throw new ShapeError(
        `loro: ${prefix} rank ${b.shape[1]} exceeds a side of ${b.shape[0]}x${a.shape[1]}`,
      );
    }
    return [e.B, e.A];
  });
}

/**
 * LoRO around `inner`, the Adam direction of every factor (`scaleByAdam()`, or 8-bit moments with
 * `scaleByAdam8bit()`), for trees of low-rank factor pairs (leaves `….B` [d, r] and `….A` [r, n];
 * route the rest elsewhere with `partition`). Per pair and update t, with N_B, N_A the inner
 * transform's outputs and lr = lr(t − 1):
 *
 * - t not a multiple of `exactEvery`: the updates are −lr·(r/d)·N_B and −lr·(r/d)·N_A;
 * - otherwise the exact step {@link loroExactStep} with η = lr and (dB, dA) = (N_B, N_A), as the
 *   updates B' − B and A' − A (one readback of the factors and directions, float64 on the CPU; the
 *   update returns a promise). A pair whose B or A is rank-deficient takes the approximate step.
 *
 * LoRO applies the learning rate itself, so no `scaleByLearningRate` follows it; the reference's
 * weight decay is L2 added to the gradient, i.e. `addDecayedWeights` chained before it. The inner
 * moments are kept across exact steps, as in the reference.
 */
export function loro(
  inner: GradientTransformation,
  opts: LoroOptions,
): GradientTransformation<LoroState> {
  const every = opts.exactEvery ?? 5;
  if (!Number.isInteger(every) || every < 1) {
    throw new RangeError(`loro: exactEvery must be a positive integer, got ${every}`);
  }
  return {
    init: (params) => ({ count: 0, inner: inner.init(params) }),
    update(updates, state, params) {
      const g = tree.flatten(updates);
      const pairs = pairsOf(tree.paths(updates), g);
      const t = state.count + 1;
      const lr = scheduleAt(opts.lr, state.count);
      const exact = t % every === 0;
      if (exact && params === undefined) {
        throw new RangeError("loro: its exact steps need the parameters");
      }
      const p = params === undefined ? [] : tree.flatten(params);
      return andThen(inner.update(updates, state.inner), (r) => {
        const dir = tree.flatten(r.updates);
        const next = { count: t, inner: r.state };
        const approx = (ib: number, ia: number) => {
          const [d, rank] = g[ib].shape;
          dir[ib] = scaleInPlace(dir[ib], -lr * rank / d);
          dir[ia] = scaleInPlace(dir[ia], -lr * rank / d);
        };
        if (!exact) {
          for (const [ib, ia] of pairs) approx(ib, ia);
          return { updates: tree.unflatten(updates, dir), state: next };
        }
        return readAll(pairs.flatMap(([ib, ia]) => [p[ib], p[ia], dir[ib], dir[ia]])).then(
          (data) => {
            pairs.forEach(([ib, ia], j) => {
              const [d, rank] = g[ib].shape;
              const n = g[ia].shape[1];
              const [b, a, db, da] = data.slice(4 * j, 4 * j + 4);
              const f = loroExactStep(b, a, db, da, d, rank, n, lr);
              if (!f) return approx(ib, ia);
              for (const [i, x] of [[ib, f.b], [ia, f.a]] as const) {
                dir[i].dispose();
                dir[i] = axpbyInPlace(tensor(Float32Array.from(x), p[i].shape), 1, p[i], -1);
              }
            });
            return { updates: tree.unflatten(updates, dir), state: next };
          },
        );
      });
    },
  };
}
