/**
 * Dense linear algebra on the CPU in float64, for work that happens rarely (a GaLore projector
 * refresh every T steps, a weight refactorization every cycle) and must be accurate: a symmetric
 * eigensolver (Householder tridiagonalization + implicit QL, after JAMA's tred2/tql2), the top-r
 * singular subspace of a matrix through the Gram matrix of its smaller side, Householder QR, and a
 * one-sided Jacobi SVD for small matrices.
 *
 * Matrices are row-major `Float64Array`s unless a doc says column-major. Column-major storage is
 * used inside the eigensolver because every inner loop there then walks contiguous memory.
 * @module
 */

/** Eigen-decomposition of a symmetric matrix: values descending, vectors as matching columns. */
export interface SymEig {
  /** Eigenvalues, largest first. */
  values: Float64Array;
  /** Eigenvectors, column-major: vector k is `vectors.subarray(k * n, (k + 1) * n)`. */
  vectors: Float64Array;
}

/**
 * All eigenpairs of the symmetric n×n matrix `a` (row-major; only symmetry is assumed, the lower
 * triangle is read). O(n³): about 1 s for n = 512 in V8. `a` is not modified.
 */
export function symEig(a: Float64Array, n: number): SymEig {
  const z = Float64Array.from(a); // column-major == row-major for a symmetric matrix
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  if (n === 0) return { values: d, vectors: z };
  tred2(z, d, e, n);
  tql2(z, d, e, n);
  // Sort descending (tql2 leaves them unordered), moving the columns along.
  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => d[j] - d[i]);
  const values = Float64Array.from(order, (i) => d[i]);
  const vectors = new Float64Array(n * n);
  order.forEach((src, k) => vectors.set(z.subarray(src * n, src * n + n), k * n));
  return { values, vectors };
}

// Householder reduction to tridiagonal form; z (column-major, V[k][j] = z[j*n + k]) accumulates
// the orthogonal transform. d gets the diagonal, e the subdiagonal (in e[1..n-1]).
function tred2(z: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  for (let j = 0; j < n; j++) d[j] = z[j * n + n - 1];
  for (let i = n - 1; i > 0; i--) {
    let scale = 0;
    let h = 0;
    for (let k = 0; k < i; k++) scale += Math.abs(d[k]);
    if (scale === 0) {
      e[i] = d[i - 1];
      for (let j = 0; j < i; j++) {
        d[j] = z[j * n + i - 1];
        z[j * n + i] = 0;
        z[i * n + j] = 0;
      }
    } else {
      for (let k = 0; k < i; k++) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      let f = d[i - 1];
      let g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (let j = 0; j < i; j++) e[j] = 0;
      for (let j = 0; j < i; j++) {
        const cj = j * n;
        f = d[j];
        z[i * n + j] = f;
        g = e[j] + z[cj + j] * f;
        for (let k = j + 1; k <= i - 1; k++) {
          const zk = z[cj + k];
          g += zk * d[k];
          e[k] += zk * f;
        }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j] -= hh * d[j];
      for (let j = 0; j < i; j++) {
        const cj = j * n;
        f = d[j];
        g = e[j];
        for (let k = j; k <= i - 1; k++) z[cj + k] -= f * e[k] + g * d[k];
        d[j] = z[cj + i - 1];
        z[cj + i] = 0;
      }
    }
    d[i] = h;
  }
  for (let i = 0; i < n - 1; i++) {
    const ci = i * n;
    const ci1 = (i + 1) * n;
    z[ci + n - 1] = z[ci + i];
    z[ci + i] = 1;
    const h = d[i + 1];
    if (h !== 0) {
      for (let k = 0; k <= i; k++) d[k] = z[ci1 + k] / h;
      for (let j = 0; j <= i; j++) {
        const cj = j * n;
        let g = 0;
        for (let k = 0; k <= i; k++) g += z[ci1 + k] * z[cj + k];
        for (let k = 0; k <= i; k++) z[cj + k] -= g * d[k];
      }
    }
    for (let k = 0; k <= i; k++) z[ci1 + k] = 0;
  }
  for (let j = 0; j < n; j++) {
    d[j] = z[j * n + n - 1];
    z[j * n + n - 1] = 0;
  }
  z[(n - 1) * n + n - 1] = 1;
  e[0] = 0;
}

// Implicit QL with Wilkinson-like shifts on the tridiagonal (d, e), rotating the columns of z.
function tql2(z: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  let f = 0;
  let tst1 = 0;
  const eps = 2 ** -52;
  for (let l = 0; l < n; l++) {
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n) {
      if (Math.abs(e[m]) <= eps * tst1) break;
      m++;
    }
    if (m > l) {
      let iter = 0;
      do {
        if (++iter > 60) throw new Error("symEig: QL iteration did not converge");
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        p = d[m];
        let c = 1, c2 = 1, c3 = 1;
        const el1 = e[l + 1];
        let s = 0, s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = Math.hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          const ci = i * n;
          const ci1 = ci + n;
          for (let k = 0; k < n; k++) {
            const zk1 = z[ci1 + k];
            const zk = z[ci + k];
            z[ci1 + k] = s * zk + c * zk1;
            z[ci + k] = c * zk - s * zk1;
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}

/** True when every value is finite: data read back with NaN or ±Infinity has no subspace. */
export function allFinite(d: ArrayLike<number>): boolean {
  for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) return false;
  return true;
}

/** G·Gᵀ (rows×rows, row-major) of a row-major rows×cols matrix, accumulated in float64. */
export function gram(g: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const a = g instanceof Float64Array ? g : Float64Array.from(g);
  const c = new Float64Array(rows * rows);
  // Column blocks keep the rows' slices in cache (bench/NOTES.md).
  const KB = 256;
  for (let k0 = 0; k0 < cols; k0 += KB) {
    const k1 = Math.min(cols, k0 + KB);
    for (let i = 0; i < rows; i++) {
      const ri = i * cols;
      for (let j = 0; j <= i; j++) {
        const rj = j * cols;
        // Four partial sums break the add dependency chain (bench/NOTES.md).
        let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        let k = k0;
        for (; k + 4 <= k1; k += 4) {
          s0 += a[ri + k] * a[rj + k];
          s1 += a[ri + k + 1] * a[rj + k + 1];
          s2 += a[ri + k + 2] * a[rj + k + 2];
          s3 += a[ri + k + 3] * a[rj + k + 3];
        }
        for (; k < k1; k++) s0 += a[ri + k] * a[rj + k];
        c[i * rows + j] += s0 + s1 + s2 + s3;
      }
    }
  }
  for (let i = 0; i < rows; i++) for (let j = 0; j < i; j++) c[j * rows + i] = c[i * rows + j];
  return c;
}

/** Transpose of a row-major rows×cols matrix, as float64. */
export function transpose64(g: ArrayLike<number>, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = g[i * cols + j];
  return t;
}

/** The top-r singular subspace of a matrix on its smaller side (GaLore's `std` projector). */
export interface TopSubspace {
  /**
   * `left` when m < n: the basis is U[:, :r] stored [m, r] (project Pᵀ·G). `right` when m ≥ n:
   * the basis is Vᵀ[:r, :] stored [r, n] (project G·Qᵀ), as in GaLore's code.
   */
  side: "left" | "right";
  /** Row-major basis, shape [m, r] (left) or [r, n] (right). */
  basis: Float64Array;
  /** The top r singular values, descending. */
  singularValues: Float64Array;
}

/**
 * Top-r singular vectors of the row-major m×n matrix `g` on its smaller side, exactly (up to
 * float64 rounding) via the eigenvectors of the smaller Gram matrix, each with its largest entry in
 * magnitude positive. Squaring costs accuracy only
 * relative to the gap: the subspace error is about 2⁻⁵²·σ₁² / (σ_r² − σ_{r+1}²), far below f32
 * resolution unless the r-th and (r+1)-th singular values nearly coincide, in which case no
 * method defines a stable subspace. Cost O(min(m,n)²·max(m,n) + min(m,n)³).
 */
export function topSubspace(g: ArrayLike<number>, m: number, n: number, r: number): TopSubspace {
  checkRank(m, n, r);
  const left = m < n;
  return subspaceFromGram(left ? gram(g, m, n) : gram(transpose64(g, m, n), n, m), m, n, r);
}

function checkRank(m: number, n: number, r: number): void {
  const k = Math.min(m, n);
  if (!(r >= 1 && r <= k && Number.isInteger(r))) {
    throw new RangeError(`topSubspace: rank ${r} must be an integer in [1, ${k}]`);
  }
}

/**
 * {@link topSubspace} from a precomputed Gram matrix of the smaller side of an m×n matrix
 * (G·Gᵀ when m < n, else Gᵀ·G), e.g. one computed by a GPU matmul.
 */
export function subspaceFromGram(
  c: ArrayLike<number>,
  m: number,
  n: number,
  r: number,
): TopSubspace {
  checkRank(m, n, r);
  const k = Math.min(m, n);
  const left = m < n;
  const { values, vectors } = symEig(c instanceof Float64Array ? c : Float64Array.from(c), k);
  const basis = new Float64Array(k * r);
  for (let j = 0; j < r; j++) {
    const col = Float64Array.from(vectors.subarray(j * k, j * k + k));
    // An eigenvector's sign is arbitrary; its largest entry in magnitude made positive fixes it
    // (so moments kept across refreshes see the same basis in any implementation).
    let lead = 0;
    for (const x of col) if (Math.abs(x) > Math.abs(lead)) lead = x;
    if (lead < 0) { for (let i = 0; i < k; i++) col[i] = -col[i]; }
    // Left: basis [k, r] (column j = vector j). Right: basis [r, k] (row j = vector j).
    if (left) { for (let i = 0; i < k; i++) basis[i * r + j] = col[i]; }
    else basis.set(col, j * k);
  }
  const singularValues = Float64Array.from(
    values.subarray(0, r),
    (v) => Math.sqrt(Math.max(0, v)),
  );
  return { side: left ? "left" : "right", basis, singularValues };
}

/**
 * Thin Householder QR of a row-major m×n matrix with m ≥ n: Q [m, n] with orthonormal columns and
 * upper-triangular R [n, n], A = Q·R.
 */
export function qr(
  a: ArrayLike<number>,
  m: number,
  n: number,
): { q: Float64Array; r: Float64Array } {
  if (m < n) throw new RangeError(`qr: need rows >= cols, got ${m}x${n}`);
  // Work column-major so each Householder reflection touches contiguous columns.
  const w = transpose64(a, m, n); // w[j*m + i] = A[i][j]
  const vs: Float64Array[] = [];
  for (let j = 0; j < n; j++) {
    const cj = j * m;
    let norm = 0;
    for (let i = j; i < m; i++) norm += w[cj + i] * w[cj + i];
    norm = Math.sqrt(norm);
    const v = new Float64Array(m - j);
    if (norm === 0) {
      vs.push(v);
      continue;
    }
    const alpha = w[cj + j] > 0 ? -norm : norm;
    for (let i = j; i < m; i++) v[i - j] = w[cj + i];
    v[0] -= alpha;
    let vn = 0;
    for (let i = 0; i < v.length; i++) vn += v[i] * v[i];
    vn = Math.sqrt(vn);
    if (vn > 0) { for (let i = 0; i < v.length; i++) v[i] /= vn; }
    vs.push(v);
    for (let c = j; c < n; c++) {
      const cc = c * m;
      let dot = 0;
      for (let i = j; i < m; i++) dot += v[i - j] * w[cc + i];
      for (let i = j; i < m; i++) w[cc + i] -= 2 * dot * v[i - j];
    }
  }
  const r = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) r[i * n + j] = w[j * m + i];
  // Q = H0·H1·…·H(n-1) applied to the first n columns of the identity (column-major).
  const qc = new Float64Array(m * n);
  for (let c = 0; c < n; c++) qc[c * m + c] = 1;
  for (let j = n - 1; j >= 0; j--) {
    const v = vs[j];
    for (let c = 0; c < n; c++) {
      const cc = c * m;
      let dot = 0;
      for (let i = j; i < m; i++) dot += v[i - j] * qc[cc + i];
      if (dot !== 0) { for (let i = j; i < m; i++) qc[cc + i] -= 2 * dot * v[i - j]; }
    }
  }
  return { q: transpose64(qc, n, m), r };
}

/**
 * Full SVD of a small row-major n×n (or m×n with m ≥ n) matrix by one-sided Jacobi: accurate to
 * float64 rounding for every singular value, large or small. Returns U [m, n], s (descending) and
 * V [n, n] with A = U·diag(s)·Vᵀ. O(sweeps·n²·m); meant for r×r cores (refactorization).
 */
export function svdJacobi(
  a: ArrayLike<number>,
  m: number,
  n: number,
): { u: Float64Array; s: Float64Array; v: Float64Array } {
  if (m < n) throw new RangeError(`svdJacobi: need rows >= cols, got ${m}x${n}`);
  const w = transpose64(a, m, n); // columns of A, contiguous
  const vc = new Float64Array(n * n); // columns of V
  for (let i = 0; i < n; i++) vc[i * n + i] = 1;
  const tol = 1e-15;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const cp = p * m, cq = q * m;
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < m; i++) {
          const x = w[cp + i], y = w[cq + i];
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (Math.abs(gamma) <= tol * Math.sqrt(alpha * beta) || gamma === 0) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const x = w[cp + i], y = w[cq + i];
          w[cp + i] = c * x - s * y;
          w[cq + i] = s * x + c * y;
        }
        const vp = p * n, vq = q * n;
        for (let i = 0; i < n; i++) {
          const x = vc[vp + i], y = vc[vq + i];
          vc[vp + i] = c * x - s * y;
          vc[vq + i] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }
  const norms = Array.from({ length: n }, (_, j) => {
    let s = 0;
    for (let i = 0; i < m; i++) s += w[j * m + i] ** 2;
    return Math.sqrt(s);
  });
  const order = norms.map((_, j) => j).sort((x, y) => norms[y] - norms[x]);
  const u = new Float64Array(m * n);
  const v = new Float64Array(n * n);
  const s = new Float64Array(n);
  order.forEach((j, k) => {
    s[k] = norms[j];
    for (let i = 0; i < m; i++) u[i * n + k] = norms[j] > 0 ? w[j * m + i] / norms[j] : 0;
    for (let i = 0; i < n; i++) v[i * n + k] = vc[j * n + i];
  });
  return { u, s, v };
}

/**
 * Flips singular pairs (columns j < r of U [rows, cols] and V, row-major with `cols` columns) so
 * that `lead(j)`, the largest-magnitude entry of the factor they make, is positive: an SVD fixes
 * each pair only up to a joint sign, which the product ignores but each factor's optimizer state
 * does not; a fixed rule makes every implementation (PyTorch's included) produce the same factors.
 */
export function canonicalSigns(
  u: Float64Array,
  v: Float64Array,
  cols: number,
  r: number,
  lead: (j: number) => number,
): void {
  for (let j = 0; j < r; j++) {
    if (lead(j) >= 0) continue;
    for (let i = 0; i < u.length / cols; i++) u[i * cols + j] = -u[i * cols + j];
    for (let i = 0; i < v.length / cols; i++) v[i * cols + j] = -v[i * cols + j];
  }
}
