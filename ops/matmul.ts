/**
 * Matrix multiplication, 2-D and batched, in the layouts A·B, A·Bᵀ, Aᵀ·B and Aᵀ·Bᵀ, so a backward
 * pass never materializes a transpose. Kernels come from `matmul_wgsl.ts` (register-tiled on
 * software adapters, workgroup-memory tiled on real GPUs).
 * @module
 */
import { deviceInfo, gpuDevice } from "../core/device.ts";
import { ShapeError } from "../core/errors.ts";
import { assertF32 } from "../core/dtype.ts";
import { destroyAfterSubmit, encodeCopyToTexture, registerCache } from "../core/kernel.ts";
import { fmtShape, sizeOf } from "../core/shape.ts";
import { recordOp } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import {
  chooseMatmulConfig,
  matmulKernel,
  type MatmulTexLayout,
  matmulTexLayout,
  matmulWorkgroups,
} from "./matmul_wgsl.ts";
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
  const { kind, limits, subgroupSize } = deviceInfo();
  const cfg = chooseMatmulConfig(p.m, p.n, p.k, transA, transB, kind, {
    subgroupSize: useSubgroups ? subgroupSize : undefined,
  });
  const uniforms = {
    M: p.m,
    N: p.n,
    K: p.k,
    batch: p.batch,
    strideA: p.aBatched ? p.m * p.k : 0,
    strideB: p.bBatched ? p.k * p.n : 0,
    strideC: p.m * p.n,
  };
  const workgroups = matmulWorkgroups(cfg, p.m, p.n, p.batch);
  // Only untransposed A goes through a texture: there each invocation reads its own rows of A, the
  // pattern where textureLoad beats storage loads on llvmpipe (~1.1-1.3x end to end, copy
  // included); for Aᵀ, and for B in any layout, it measured no faster or slower. Where the
  // subgroup kernel was chosen (subgroups of 8, e.g. lavapipe) it replaces the texture path: its
  // A loads are shared across the subgroup and need no copy; the texture path remains the
  // fallback on adapters without fixed-size-8 subgroups (e.g. GL).
  const aRows = (p.aBatched ? p.batch : 1) * p.m;
  const tex = kind === "cpu" && !transA && cfg.kind === "reg" && cfg.vec4A && !cfg.subgroupA &&
      2 * p.batch * p.m * p.n * p.k >= textureMinFlops
    ? matmulTexLayout(aRows, p.k, limits.maxTextureDimension2D)
    : null;
  if (tex) {
    const tA = copyToTexture(a, aRows, p.k, tex);
    const shifts = { shiftA: tex.shift, shiftB: 0 };
    matmulKernel({ ...cfg, texA: true })(
      { B: b, C: out, tA },
      { ...uniforms, ...shifts },
      workgroups,
    );
  } else {
    matmulKernel(cfg)({ A: a, B: b, C: out }, uniforms, workgroups);
  }
  return out;
}

let useSubgroups = true;

/**
 * Allows (default) or forbids the subgroup kernel for "cpu" adapters with subgroups of exactly 8
 * (A loads shared across the subgroup; it replaces the texture path there); returns the previous
 * setting. Meant for tests and benchmarks.
 */
export function setMatmulSubgroups(enabled: boolean): boolean {
  const prev = useSubgroups;
  useSubgroups = enabled;
  return prev;
}

// Minimum 2·batch·M·N·K for the texture path: below it the copy and the extra pipeline are not
// worth it (and tiny test shapes keep exercising the storage kernel).
let textureMinFlops = 2 ** 26;

/**
 * Sets the minimum 2·batch·M·N·K at which a matmul with untransposed A on a "cpu" (llvmpipe)
 * adapter reads A through an rgba32float texture; returns the previous value. `0` uses the texture
 * path whenever the shape allows it (K % 4 == 0, texture within maxTextureDimension2D), `Infinity`
 * never. Meant for tests and benchmarks.
 */
export function setMatmulTextureThreshold(minFlops: number): number {
  const prev = textureMinFlops;
  textureMinFlops = minFlops;
  return prev;
}

// Textures reused across calls, by size: a training step repeats the same few shapes. Reuse within
// one command stream is safe because commands run in recording order. Oldest entries are evicted
// once the cache holds more than TEX_CACHE_BYTES.
const texCache = new Map<string, GPUTexture>();
registerCache("matmulTextures", () => texCache.size);
const TEX_CACHE_BYTES = 128 * 1024 * 1024;
let texCacheBytes = 0;

function cachedTexture(width: number, height: number): GPUTexture {
  const key = `${width}x${height}`;
  let t = texCache.get(key);
  if (t) {
    texCache.delete(key); // re-insert: Map order is the LRU order
  } else {
    t = gpuDevice().createTexture({
      size: [width, height],
      format: "rgba32float",
      usage: GPUTextureUsage.COPY_DST | GPUTextureUsage.TEXTURE_BINDING,
      label: `matmul operand ${key}`,
    });
    texCacheBytes += width * height * 16;
    for (const [k, old] of texCache) {
      if (texCacheBytes <= TEX_CACHE_BYTES) break;
      texCache.delete(k);
      texCacheBytes -= old.width * old.height * 16;
      destroyAfterSubmit(old);
    }
  }
  texCache.set(key, t);
  return t;
}

// Copies a row-major operand (rows x rowLen f32) into a texture laid out per `lay`: whole texture
// rows in one copy, then the rows left over when rows is not a multiple of 2^shift.
function copyToTexture(
  x: Tensor,
  rows: number,
  rowLen: number,
  lay: MatmulTexLayout,
): GPUTextureView {
  const texture = cachedTexture(lay.width, lay.height);
  const buffer = x.storage.buffer;
  const g = 2 ** lay.shift;
  const full = Math.floor(rows / g);
  if (full > 0) {
    encodeCopyToTexture(
      { buffer, bytesPerRow: lay.bytesPerRow, rowsPerImage: full },
      { texture },
      [lay.width, full],
    );
  }
  const rest = rows - full * g;
  if (rest > 0) {
    encodeCopyToTexture(
      { buffer, offset: full * lay.bytesPerRow },
      { texture, origin: [0, full] },
      [(rest * rowLen) / 4, 1],
    );
  }
  return texture.createView();
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
