/**
 * GaLore (Zhao et al. 2024) as a transform around any inner optimizer: each 2-D gradient is
 * projected onto the top-r singular subspace of its smaller side, the inner optimizer runs in that
 * small shape (so its moments are r·max(m, n) instead of m·n), and the result is projected back
 * with a scale.
 * @module
 */
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import type { TensorTree } from "../core/tape.ts";
import { readAll, Tensor, tensor, zeros } from "../core/tensor.ts";
import { mapN } from "../ops/elementwise.ts";
import { matmul } from "../ops/matmul.ts";
import { subspaceFromGram, topSubspace } from "./svd.ts";
import {
  disposeTree,
  lrAt,
  type Optimizer,
  pairLeaves,
  type Schedule,
  treeLeaves,
  treeRebuild,
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
   * Decoupled weight decay of the full weight, W ← W − lr·λ·W, with the inner optimizer's lr.
   * Default: the inner optimizer's `hyper.weightDecay` (the inner one itself only ever sees the
   * projected update, so its own decay would act on nothing).
   */
  weightDecay?: number;
  /** How projector refreshes form the Gram matrix; default "cpu64" (see {@link computeProjectors}). */
  gram?: GramMode;
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
  /** State of the inner optimizer over the projected shapes [r, n] or [m, r]. */
  inner: unknown;
}

interface Geometry {
  m: number;
  n: number;
  r: number;
  left: boolean;
  projShape: [number, number];
  small: [number, number];
}

function geometry(p: Tensor, rank: number): Geometry {
  if (p.rank !== 2) {
    throw new ShapeError(`galore: needs 2-D weights, got ${fmtShape(p.shape)}; route it elsewhere`);
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

/** R = Pᵀ·G ([r, n]) for a left projector, G·Qᵀ ([m, r]) for a right one. */
export function project(g: Tensor, proj: Tensor, left: boolean): Tensor {
  return left ? matmul(proj, g, { transA: true }) : matmul(g, proj, { transB: true });
}

/** P·N ([m, n]) for a left projector, N·Q for a right one. */
export function projectBack(n: Tensor, proj: Tensor, left: boolean): Tensor {
  return left ? matmul(proj, n) : matmul(n, proj);
}

/** Where a projector refresh forms the Gram matrix of the gradient's smaller side. */
export type GramMode = "cpu64" | "gpu32";

/**
 * Builds projectors from the current gradients with one readback for all of them, then the exact
 * top-r eigenvectors of each smaller-side Gram matrix in float64 on the CPU (see `svd.ts`),
 * uploaded as f32. `gram: "cpu64"` (default) reads the gradients and forms G·Gᵀ in float64;
 * `"gpu32"` forms it with an f32 matmul on the device and reads back only the min(m,n)² Gram:
 * faster for large matrices, with subspace error about 2⁻²⁴·σ₁²/(σ_r² − σ_{r+1}²).
 */
export async function computeProjectors(
  grads: readonly Tensor[],
  rank: number,
  gram: GramMode = "cpu64",
): Promise<Tensor[]> {
  const geos = grads.map((g) => geometry(g, rank));
  if (gram === "gpu32") {
    const cs = grads.map((g, i) =>
      geos[i].left ? matmul(g, g, { transB: true }) : matmul(g, g, { transA: true })
    );
    const data = await readAll(cs);
    disposeTree(cs);
    return geos.map((geo, i) => {
      const { basis } = subspaceFromGram(data[i], geo.m, geo.n, geo.r);
      return tensor(Float32Array.from(basis), geo.projShape);
    });
  }
  const data = await readAll(grads);
  return geos.map((geo, i) => {
    const { basis } = topSubspace(data[i], geo.m, geo.n, geo.r);
    return tensor(Float32Array.from(basis), geo.projShape);
  });
}

/**
 * GaLore around `inner` (usually `adamw`), for 2-D weights only (use `partition` to send the rest
 * elsewhere). Per step and matrix: R = project(G); the inner optimizer updates a zero "parameter"
 * of R's shape with gradient R, so its result is exactly its update direction (GaLore's 8-bit
 * trick, which works for any inner optimizer); then W ← W·(1 − lr·λ) + α·projectBack(that).
 * Projectors are refreshed from the current gradient when count % T == 0 (also at the first step);
 * the inner moments are kept across refreshes, as in the reference.
 * Dispatches per matrix and step: 2 matmuls, the inner step, one fused apply.
 */
export function galore(inner: Optimizer, opts: GaLoreOptions): Optimizer<GaLoreState> {
  const { rank, updateProjGap = 200, scale = 0.25 } = opts;
  if (!(rank >= 1)) throw new RangeError(`galore: rank must be >= 1, got ${rank}`);
  if (!(updateProjGap >= 1)) throw new RangeError(`galore: updateProjGap must be >= 1`);
  const wd = opts.weightDecay ?? inner.hyper?.weightDecay ?? 0;
  const lr: Schedule = inner.hyper?.lr ?? 0;
  if (wd !== 0 && !inner.hyper) {
    throw new RangeError(
      "galore: weightDecay needs an inner optimizer that exposes its lr (hyper)",
    );
  }
  return {
    hyper: inner.hyper,
    init(params: TensorTree): GaLoreState {
      const ps = treeLeaves(params).map((l) => l.tensor);
      // Shape stand-ins for the inner init (it only reads shapes); never written, freed at once.
      const standIns = ps.map((p) => Tensor.empty(geometry(p, rank).small));
      const innerState = inner.init(standIns);
      standIns.forEach((t) => t.dispose());
      return { count: 0, proj: ps.map(() => null), inner: innerState };
    },
    async update(grads, state, params, step, { donate = true } = {}) {
      const [g, p] = pairLeaves(grads, params, "galore");
      const geos = p.map((pi) => geometry(pi, rank));
      let proj = state.proj;
      // An empty group (e.g. from `partition`) must not pay a readback sync for nothing.
      const due = state.count % updateProjGap === 0 || proj.some((q) => q === null);
      if (due && g.length > 0) {
        proj = await computeProjectors(g, rank, opts.gram);
        if (donate) disposeTree(state.proj);
      }
      const rs = g.map((gi, i) => project(gi, proj[i]!, geos[i].left));
      const zs = geos.map((geo) => zeros(geo.small));
      let res;
      try {
        res = await inner.update(rs, state.inner, zs, step, { donate });
      } finally {
        disposeTree(rs);
        disposeTree(zs);
      }
      const dirs = treeLeaves(res.params).map((l) => l.tensor);
      const decay = 1 - lrAt(lr, step) * wd;
      const out = p.map((pi, i) => {
        const back = projectBack(dirs[i], proj[i]!, geos[i].left);
        dirs[i].dispose();
        const next = mapN("galore_apply", [pi, back], "v0 * c0 + c1 * v1", undefined, [
          decay,
          scale,
        ]);
        back.dispose();
        if (donate) pi.dispose();
        return next;
      });
      return {
        params: treeRebuild(params, out),
        state: { count: state.count + 1, proj: proj as Tensor[], inner: res.state },
      };
    },
  };
}
