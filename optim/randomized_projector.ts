/**
 * GaLore's projector by randomized subspace iteration (Halko, Martinsson & Tropp 2011, §4.5 with a
 * Rayleigh–Ritz step at the end), for matrices whose exact eigensolve is too slow on the CPU: at
 * 1B the smaller side of every block matrix is 2048, and a float64 eigensolve of a 2048² Gram
 * matrix takes about a minute in JS, times 168 matrices per refresh. Here the products with the
 * gradient run on the device and the CPU sees only [k, l] and [l, l] matrices, l = r + oversample:
 * an orthonormalization (Householder QR in float64, which stays orthonormal when the gradient's
 * rank is below l, e.g. batch·seq < r) and an l×l eigensolve that orders the basis by singular
 * value, as the exact projector's is.
 *
 * With A the gradient's smaller side first (G when m < n, else Gᵀ), Ω a seeded Gaussian [c, l]:
 * Y = (A·Aᵀ)^q·A·Ω, Q = qr(Y), B = Aᵀ·Q, T = Bᵀ·B = Qᵀ·A·Aᵀ·Q, T = W·Λ·Wᵀ, U = Q·W[:, :r].
 * The subspace error falls like (σ_{l+1}/σ_r)^(2q+1); without re-orthonormalizing between the
 * power steps, directions with σ below about σ₁·(2⁻²⁴)^(1/(2q+1)) are lost to f32 rounding of Y
 * (they carry under 10⁻⁵ of σ₁²'s energy at q = 1).
 * @module
 */
import { fmtShape } from "../core/shape.ts";
import { randomNormal, readAll, type Tensor, tensor } from "../core/tensor.ts";
import { matmul } from "../ops/matmul.ts";
import { allFinite, qr, symEig } from "../ops/svd.ts";

/** Options of {@link randomizedProjector}. */
export interface RandomizedProjectorOptions {
  /** Extra columns l − r of the sketch; default 32 (accuracy rises with it, cost as l²). */
  oversample?: number;
  /** Power steps q; default 1. */
  powerSteps?: number;
  /** Seed of Ω (a u32); the same seed, gradient and options give the same bits. */
  seed: number;
}

/**
 * The rank-r projector of the f32 gradient `g` [m, n] in GaLore's layout: [m, r] (left, m < n) or
 * [r, n] (right), the top-r singular subspace of the smaller side found by randomized subspace
 * iteration (module doc). Null when the sketch holds NaN or ±Infinity (a non-finite gradient). When
 * r + oversample reaches the smaller side the sketch would not be smaller: callers use the exact
 * projector there.
 */
export async function randomizedProjector(
  g: Tensor,
  r: number,
  opts: RandomizedProjectorOptions,
): Promise<Tensor | null> {
  if (g.rank !== 2 || g.dtype !== "f32") {
    throw new TypeError(
      `randomizedProjector: needs a 2-D f32 gradient, got ${g.dtype} ${fmtShape(g.shape)}`,
    );
  }
  const [m, n] = g.shape;
  const left = m < n;
  const k = Math.min(m, n);
  const c = Math.max(m, n);
  const l = Math.min(k, r + (opts.oversample ?? 32));
  if (!(r >= 1 && r <= k && Number.isInteger(r))) {
    throw new RangeError(`randomizedProjector: rank ${r} must be an integer in [1, ${k}]`);
  }
  // A·x and Aᵀ·x with A = G (left) or Gᵀ (right), so both orientations run one algorithm.
  const mulA = (x: Tensor) => left ? matmul(g, x) : matmul(g, x, { transA: true });
  const mulAt = (x: Tensor) => left ? matmul(g, x, { transA: true }) : matmul(g, x);
  const consume = (x: Tensor, f: (x: Tensor) => Tensor) => {
    const y = f(x);
    x.dispose();
    return y;
  };

  let y = consume(randomNormal([c, l], 0, 1, { seed: opts.seed }), mulA);
  for (let s = 0; s < (opts.powerSteps ?? 1); s++) y = consume(consume(y, mulAt), mulA);
  const [yHost] = await readAll([y]);
  y.dispose();
  if (!allFinite(yHost)) return null;
  const q = tensor(Float32Array.from(qr(yHost, k, l).q), [k, l]);
  const b = mulAt(q);
  const t = matmul(b, b, { transA: true });
  b.dispose();
  const [tHost] = await readAll([t]);
  t.dispose();
  if (!allFinite(tHost)) {
    q.dispose();
    return null;
  }
  const w = tensor(topEigenvectors(tHost, l, r), [l, r]);
  // U = Q·W [k, r]; the right projector is Uᵀ = Wᵀ·Qᵀ [r, k].
  const u = left ? matmul(q, w) : matmul(w, q, { transA: true, transB: true });
  q.dispose();
  w.dispose();
  return u;
}

/** The top-r eigenvectors of the symmetric l×l `t`, in float64, as columns of a row-major [l, r]. */
function topEigenvectors(t: ArrayLike<number>, l: number, r: number): Float32Array {
  const sym = Float64Array.from(t);
  // An f32 product is symmetric only up to rounding: use the mean of the two triangles.
  for (let i = 0; i < l; i++) {
    for (let j = 0; j < i; j++) {
      sym[i * l + j] = sym[j * l + i] = (sym[i * l + j] + sym[j * l + i]) / 2;
    }
  }
  const { vectors } = symEig(sym, l);
  const w = new Float32Array(l * r);
  for (let j = 0; j < r; j++) for (let i = 0; i < l; i++) w[i * r + j] = vectors[j * l + i];
  return w;
}
