/**
 * GaLore (Zhao et al. 2024) as a transform around any inner transform: each 2-D gradient is
 * projected onto the top-r singular subspace of its smaller side, the inner transform runs in that
 * small shape (so its moments are r·max(m, n) instead of m·n), and its update is projected back
 * with a scale. Weight decay and the learning rate compose outside it, as stages of a chain.
 * @module
 */
import { convert } from "../core/convert.ts";
import { fnv1a, Rng } from "../core/rng.ts";
import { NonFiniteError, ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { readAll, Tensor, tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { matmul } from "../ops/matmul.ts";
import { allFinite, qr, subspaceFromGram, topSubspace } from "../ops/svd.ts";
import { axpbyInPlace, scaleInPlace } from "./inplace.ts";
import { randomizedProjector } from "./randomized_projector.ts";
import {
  andThen,
  type GradientTransformation,
  type MaybePromise,
  type TransformResult,
} from "./transform.ts";

/** Options of {@link galore}. */
export interface GaLoreOptions {
  /** Subspace rank r (clamped to min(m, n) per matrix). */
  rank: number;
  /** Steps T between projector refreshes; default 200. The projector is also built at step 0. */
  updateProjGap?: number;
  /** α applied at project-back (not divided by r); default 0.25. */
  scale?: number;
  /**
   * How a refresh finds the top-r subspace; default "auto" (see {@link ProjectorMethod}). A
   * function picks per refresh from the refresh clock; `"random"` (GoLore's) takes a random
   * orthonormal basis instead (see {@link randomProjector}).
   */
  projector?: ProjectorMethod | ((count: number) => ProjectorMethod | "random");
  /** Called after each projector refresh (for logging); see {@link ProjectorRefresh}. */
  onRefresh?: (refresh: ProjectorRefresh) => void;
}

/** What one projector refresh did, as {@link GaLoreOptions.onRefresh} sees it. */
export interface ProjectorRefresh {
  /** The refresh clock (the transform's update count) at which it ran. */
  count: number;
  /** Matrices whose projector it built (one per call under per-layer updates). */
  matrices: number;
  /**
   * Seconds from its start until the new projectors were ready: it reads the gradients back, so
   * this includes waiting for the GPU work queued before it.
   */
  seconds: number;
}

/** State of {@link galore}. */
export interface GaLoreState {
  /** GaLore updates since init: the refresh clock (a momentum reset restarts it). */
  count: number;
  /**
   * Projectors per matrix: [m, r] (left, when m < n) or [r, n] (right); null before step 0.
   * Memory min(m, n)·r each.
   */
  proj: (Tensor | null)[];
  /** State of the inner transform over the projected shapes [r, n] or [m, r]. */
  inner: unknown;
}

/**
 * Where a rank-r projection of an [m, n] gradient lives: a left projector [m, r] when m < n
 * (R = Pᵀ·G is [r, n]), else a right one [r, n] (R = G·Qᵀ is [m, r]), so the smaller side is the
 * one compressed. Shared by GaLore, Fira and APOLLO.
 */
export interface ProjectionGeometry {
  /** Rows of the gradient. */
  m: number;
  /** Columns of the gradient. */
  n: number;
  /** Rank used (GaLore clamps it to min(m, n)). */
  r: number;
  /** True for a left projector (m < n). */
  left: boolean;
  /** Shape of the projector. */
  projShape: [number, number];
  /** Shape of the projected gradient. */
  small: [number, number];
}

/** The {@link ProjectionGeometry} of a 2-D tensor at `rank` (clamped to min(m, n)). */
export function projectionGeometry(p: Tensor, rank: number, op = "galore"): ProjectionGeometry {
  if (p.rank !== 2) {
    throw new ShapeError(`${op}: needs 2-D weights, got ${fmtShape(p.shape)}; route it elsewhere`);
  }
  const [m, n] = p.shape;
  const r = Math.min(rank, m, n);
  const left = m < n;
  return {
    m,
    n,
    r,
    left,
    projShape: left ? [m, r] : [r, n],
    small: left ? [r, n] : [m, r],
  };
}

/** `fn` of `g` in f32: a bf16 gradient is converted for the projections (a transient copy). */
function withF32(g: Tensor, fn: (x: Tensor) => Tensor): Tensor {
  if (g.dtype === "f32") return fn(g);
  const x = convert(g, "f32");
  try {
    return fn(x);
  } finally {
    x.dispose();
  }
}

/** R = Pᵀ·G ([r, n]) for a left projector, G·Qᵀ ([m, r]) for a right one. */
export function project(g: Tensor, proj: Tensor, left: boolean): Tensor {
  return left ? matmul(proj, g, { transA: true }) : matmul(g, proj, { transB: true });
}

/** P·N ([m, n]) for a left projector, N·Q for a right one. */
export function projectBack(n: Tensor, proj: Tensor, left: boolean): Tensor {
  return left ? matmul(proj, n) : matmul(n, proj);
}

/**
 * How a projector refresh finds a gradient's top-r singular subspace:
 * - `"cpu64"`: exact. Reads the gradient back, forms the smaller side's Gram matrix and its
 *   eigenvectors in float64 on the CPU (`svd.ts`). O(k²·c + k³) for a [k, c] side: about 1 s at
 *   k = 512, a minute at k = 2048.
 * - `"gpu32"`: exact up to f32 rounding of the Gram matrix, formed by a device matmul (only the
 *   k² Gram is read back): subspace error about 2⁻²⁴·σ₁²/(σ_r² − σ_{r+1}²); the eigensolve is the
 *   same.
 * - `"randomized"`: randomized subspace iteration (`randomized_projector.ts`): device products and
 *   an (r + 32)-sized eigensolve. Several times faster than the exact methods at large sides, and
 *   on real gradients, whose spectra fall off, nearly as good: `bench/galore_projector.ts`
 *   measures the energy it captures (figures in `bench/NOTES.md`); a matrix without a spectral gap
 *   is its worst case. Ω is seeded by the parameter's path and the refresh.
 * - `"auto"` (default): `"cpu64"` while the smaller side is at most {@link EXACT_PROJECTOR_MAX}
 *   (and when r + 32 reaches it), `"randomized"` above.
 */
export type ProjectorMethod = typeof PROJECTOR_METHODS[number];

/** Every {@link ProjectorMethod}, the default first. */
export const PROJECTOR_METHODS = ["auto", "cpu64", "gpu32", "randomized"] as const;

/** The largest smaller side for which `"auto"` keeps the exact float64 projector. */
export const EXACT_PROJECTOR_MAX = 512;

/** Extra sketch columns of the randomized projector. */
const OVERSAMPLE = 32;

function resolveMethod(
  method: ProjectorMethod,
  geo: ProjectionGeometry,
): Exclude<ProjectorMethod, "auto"> {
  const k = Math.min(geo.m, geo.n);
  if (method === "randomized" && geo.r + OVERSAMPLE >= k) return "cpu64";
  if (method !== "auto") return method;
  return k > EXACT_PROJECTOR_MAX && geo.r + OVERSAMPLE < k ? "randomized" : "cpu64";
}

/**
 * Builds the rank-r projector of each gradient (f32 uploads) by `method` (see
 * {@link ProjectorMethod}). A gradient holding NaN or ±Infinity has no subspace: a
 * {@link NonFiniteError} names it. `keys` (e.g. parameter paths) seed the randomized sketch;
 * `refresh` tells refreshes apart.
 */
export async function computeProjectors(
  grads: readonly Tensor[],
  rank: number,
  method: ProjectorMethod = "auto",
  keys: readonly string[] = grads.map((_, i) => `${i}`),
  refresh = 0,
): Promise<Tensor[]> {
  const proj = await projectorsOrNull(grads, rank, method, keys, refresh);
  const bad = proj.indexOf(null);
  if (bad >= 0) {
    tree.dispose(proj);
    throw new NonFiniteError(
      `computeProjectors: gradient ${bad} ${fmtShape(grads[bad].shape)} is not finite`,
    );
  }
  return proj as Tensor[];
}

// computeProjectors, with null for a gradient (or Gram) that holds NaN or ±Infinity.
async function projectorsOrNull(
  grads: readonly Tensor[],
  rank: number,
  method: ProjectorMethod | "random",
  keys: readonly string[],
  refresh: number,
): Promise<(Tensor | null)[]> {
  const geos = grads.map((g) => projectionGeometry(g, rank));
  const methods = geos.map((geo) => method === "random" ? "random" : resolveMethod(method, geo));
  const out: (Tensor | null)[] = grads.map(() => null);
  const pick = (m: string) => grads.flatMap((_, i) => (methods[i] === m ? [i] : []));
  const basisTensor = (i: number, basis: Float64Array) =>
    tensor(Float32Array.from(basis), geos[i].projShape);

  const gpu = pick("gpu32");
  if (gpu.length > 0) {
    const cs = gpu.map((i) =>
      withF32(
        grads[i],
        (x) => geos[i].left ? matmul(x, x, { transB: true }) : matmul(x, x, { transA: true }),
      )
    );
    const data = await readAll(cs);
    tree.dispose(cs);
    gpu.forEach((i, j) => {
      const geo = geos[i];
      if (allFinite(data[j])) {
        out[i] = basisTensor(i, subspaceFromGram(data[j], geo.m, geo.n, geo.r).basis);
      }
    });
  }
  const cpu = pick("cpu64");
  if (cpu.length > 0) {
    const data = await readAll(cpu.map((i) => grads[i]));
    cpu.forEach((i, j) => {
      const geo = geos[i];
      if (allFinite(data[j])) {
        out[i] = basisTensor(i, topSubspace(data[j], geo.m, geo.n, geo.r).basis);
      }
    });
  }
  for (const i of pick("random")) out[i] = randomProjector(geos[i], keys[i], refresh);
  for (const i of pick("randomized")) {
    const seed = fnv1a(`${keys[i]}#${refresh}`);
    out[i] = await oneSketchAtATime(async () => {
      const x = grads[i].dtype === "f32" ? grads[i] : convert(grads[i], "f32");
      try {
        return await randomizedProjector(x, geos[i].r, { seed, oversample: OVERSAMPLE });
      } finally {
        if (x !== grads[i]) x.dispose();
      }
    });
  }
  return out;
}

/**
 * A random rank-r projector in `geo`'s layout (GoLore's): the orthonormalized columns Q of a
 * Gaussian Z [min(m, n), r] (Z = Q·R, R's diagonal positive; float64) drawn from an Rng seeded by
 * fnv1a(`golore:<key>#<refresh>`) (key: the parameter's path; `nextNormal` per entry, row-major), so every matrix and refresh gets its own, identically on every
 * device and under per-layer updates. Its span is uniformly distributed, like the reference's
 * Z·(ZᵀZ)^(-1/2); it reads no gradient, so a random refresh never waits for the GPU's results.
 */
export function randomProjector(geo: ProjectionGeometry, key: string, refresh: number): Tensor {
  const k = geo.left ? geo.m : geo.n;
  const rng = new Rng(fnv1a(`golore:${key}#${refresh}`));
  const z = new Float64Array(k * geo.r);
  for (let i = 0; i < z.length; i++) z[i] = rng.nextNormal();
  const { q, r } = qr(z, k, geo.r);
  // R's diagonal made positive: the one Q of Z's span with that property, whatever QR ran.
  for (let j = 0; j < geo.r; j++) {
    if (r[j * geo.r + j] < 0) { for (let i = 0; i < k; i++) q[i * geo.r + j] = -q[i * geo.r + j]; }
  }
  if (geo.left) return tensor(Float32Array.from(q), geo.projShape);
  const t = new Float32Array(geo.r * k);
  for (let i = 0; i < k; i++) for (let j = 0; j < geo.r; j++) t[j * k + i] = q[i * geo.r + j];
  return tensor(t, geo.projShape);
}

let sketchQueue: Promise<unknown> = Promise.resolve();

/**
 * Runs `fn` after every sketch started before it. Per-layer updates start one refresh per matrix
 * during backward, all before the first readback returns; unqueued, each would allocate its f32
 * copy and sketch at once (bench/NOTES.md). Queued, one matrix's transients exist
 * at a time, whoever started them.
 */
function oneSketchAtATime<T>(fn: () => Promise<T>): Promise<T> {
  const run = sketchQueue.then(fn, fn);
  sketchQueue = run.catch(() => {});
  return run;
}

/**
 * Calls `step(use, proj)` with the projectors for this update: the state's, or, when a refresh is
 * due (count % T == 0, or none yet), new ones built from the gradients `g` (one readback), in
 * which case the result is a promise. `proj` is what the new state keeps; `use` is the same with
 * a zero stand-in (disposed after the step) for a matrix that has no projector — its refresh saw a
 * non-finite gradient, which keeps the matrix's previous projector (a NaN basis would poison
 * every later step) or, with none yet, retries at the next update. A refreshed projector is
 * written into the old one's buffer by a kernel, so an update skipped on the GPU (see `gated` in
 * core/kernel.ts) keeps the old one too. On a failed refresh the gradients are disposed. The
 * refresh rule of {@link galore}, shared with `fira`.
 */
export function withProjectors<T>(
  g: Tensor[],
  state: { count: number; proj: (Tensor | null)[] },
  opts: {
    rank: number;
    updateProjGap: number;
    projector?: GaLoreOptions["projector"];
    keys: readonly string[];
    onRefresh?: (refresh: ProjectorRefresh) => void;
  },
  step: (use: Tensor[], proj: (Tensor | null)[]) => MaybePromise<T>,
): MaybePromise<T> {
  const run = (proj: (Tensor | null)[]) => {
    const use = proj.map((p, i) => p ?? zeros(projectionGeometry(g[i], opts.rank).projShape));
    return andThen(step(use, proj), (r) => {
      use.forEach((u, i) => u !== proj[i] && u.dispose());
      return r;
    });
  };
  // An empty group (e.g. from `partition`) must not pay a readback sync for nothing.
  const due = g.length > 0 &&
    (state.count % opts.updateProjGap === 0 || state.proj.some((q) => q === null));
  if (!due) return run(state.proj);
  const t0 = performance.now();
  const method = typeof opts.projector === "function"
    ? opts.projector(state.count)
    : opts.projector ?? "auto";
  return projectorsOrNull(g, opts.rank, method, opts.keys, state.count).then(
    (fresh) => {
      opts.onRefresh?.({
        count: state.count,
        matrices: g.length,
        seconds: (performance.now() - t0) / 1000,
      });
      return run(fresh.map((p, i) => {
        const old = state.proj[i];
        if (!p || !old) return p ?? old;
        const kept = axpbyInPlace(old, 0, p, 1);
        p.dispose();
        return kept;
      }));
    },
    (e) => {
      tree.dispose(g);
      throw e;
    },
  );
}

/**
 * GaLore around `inner` (e.g. `scaleByAdam()`), for 2-D weights only (route the rest elsewhere
 * with `partition`). Per matrix and step: R = project(G); the inner transform maps R to N in the
 * small shape, with no parameters (so `addDecayedWeights` belongs after `galore`, not inside);
 * the update is α·projectBack(N). Projectors are refreshed from the current gradient when
 * count % T == 0 (also at the first update); the inner state is kept across refreshes, as in the
 * reference. GaLore-AdamW as the paper trains it:
 *
 * ```ts
 * chain(galore(scaleByAdam(), { rank: 128, updateProjGap: 200, scale: 0.25 }), addDecayedWeights(λ), scaleByLearningRate(lr))
 * ```
 *
 * A refresh reads the gradients back, so that update returns a promise and keeps the gradients
 * until the projectors are built; every other update is synchronous. Dispatches per matrix and
 * step: two matmuls, the α scale, and the inner transform's.
 */
export function galore(
  inner: GradientTransformation,
  opts: GaLoreOptions,
): GradientTransformation<GaLoreState> {
  const { rank, updateProjGap = 200, scale = 0.25 } = opts;
  if (!(rank >= 1)) throw new RangeError(`galore: rank must be >= 1, got ${rank}`);
  if (!(updateProjGap >= 1)) throw new RangeError(`galore: updateProjGap must be >= 1`);
  return {
    init(params) {
      // Shape stand-ins for the inner init (which reads shapes only), freed at once.
      const standIns = tree.map(params, (p) => Tensor.empty(projectionGeometry(p, rank).small));
      const innerState = inner.init(standIns);
      tree.dispose(standIns);
      return { count: 0, proj: tree.flatten(params).map(() => null), inner: innerState };
    },
    update(updates, state) {
      const g = tree.flatten(updates);
      const geos = g.map((gi) => projectionGeometry(gi, rank));
      if (state.proj.length !== g.length) {
        throw new RangeError(
          `galore: state has ${state.proj.length} projectors for ${g.length} updates`,
        );
      }
      const step = (
        use: Tensor[],
        proj: (Tensor | null)[],
      ): MaybePromise<TransformResult<GaLoreState>> => {
        const small = g.map((gi, i) => {
          const r = withF32(gi, (x) => project(x, use[i], geos[i].left));
          gi.dispose();
          return r;
        });
        return andThen(inner.update(tree.unflatten(updates, small), state.inner), (r) => {
          const back = tree.flatten(r.updates).map((ni, i) => {
            const scaled = scale === 1 ? ni : scaleInPlace(ni, scale);
            const b = projectBack(scaled, use[i], geos[i].left);
            scaled.dispose();
            return b;
          });
          return {
            updates: tree.unflatten(updates, back),
            state: { count: state.count + 1, proj, inner: r.state },
          };
        });
      };
      const keys = tree.paths(updates);
      return withProjectors(
        g,
        state,
        { rank, updateProjGap, projector: opts.projector, keys, onRefresh: opts.onRefresh },
        step,
      );
    },
  };
}
