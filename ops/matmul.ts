/**
 * Matrix multiplication, 2-D and batched, in the layouts A·B, A·Bᵀ, Aᵀ·B and Aᵀ·Bᵀ, so a backward
 * pass never materializes a transpose. Kernels come from `matmul_wgsl.ts` (register-tiled on
 * software adapters, workgroup-memory tiled on real GPUs).
 * @module
 */
import { deviceInfo, gpuDevice } from "../core/device.ts";
import { DeviceLimitError, ShapeError } from "../core/errors.ts";
import { convert } from "../core/convert.ts";
import { assertDType, bytesPerElement } from "../core/dtype.ts";
import { destroyAfterSubmit, encodeCopyToTexture, registerCache } from "../core/kernel.ts";
import { noteAllocated } from "../core/allocations.ts";
import { fmtShape, shapesEqual, sizeOf } from "../core/shape.ts";
import { recordOp, untracked } from "../core/tape.ts";
import { Tensor, zeros } from "../core/tensor.ts";
import {
  chooseMatmulConfig,
  type MatmulFamily,
  matmulKernel,
  type MatmulShaderConfig,
  type MatmulTexLayout,
  matmulTexLayout,
  matmulWorkgroups,
} from "./matmul_wgsl.ts";
import { forEachRowWindow, maxWindowBytes, rowAlignment } from "../core/windows.ts";
import { sum } from "./reduce.ts";
import { addInto, stridedCopy } from "./strided.ts";

export type { MatmulFamily } from "./matmul_wgsl.ts";

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

// op(a)·op(b) into `out` (f32, maybe a window of a larger tensor); a and b are f32 and fit one
// binding each. One dispatch (plus a texture copy), or a split-K product and its sum.
function run(a: Tensor, b: Tensor, out: Tensor, transA: boolean, transB: boolean, p: Plan): void {
  const { kind, subgroupSize } = deviceInfo();
  const cfg = chooseMatmulConfig(p.m, p.n, p.k, transA, transB, kind, {
    subgroupSize,
    family: forcedFamily,
  });
  const parts = splitKParts(cfg, p);
  if (parts > 1) {
    // Aᵀ·B over K = parts·Ks is the sum of `parts` products over consecutive row blocks of A and
    // B: a batched product with batch strides Ks·M and Ks·N, then a sum over the batch.
    const ks = p.k / parts;
    const partial = Tensor.empty([parts, p.m, p.n]);
    const sub: Plan = { ...p, batch: parts, k: ks, aBatched: true, bBatched: true };
    // Same config: for Aᵀ·B the vec4 flags depend on M and N only.
    encodeMatmul(a, b, partial, sub, cfg);
    const total = untracked(() => sum(partial, 0)); // [M, N]: split products are 2-D only
    partial.dispose();
    stridedCopy("matmul_split_k", "scatter", total, out, [p.m, p.n], [p.n, 1], 0);
    total.dispose();
    return;
  }
  encodeMatmul(a, b, out, p, cfg);
}

// Records one product into `out` (which has the plan's shape): texture copy of A if it pays, then
// the kernel of `cfg`.
function encodeMatmul(a: Tensor, b: Tensor, out: Tensor, p: Plan, cfg: MatmulShaderConfig): void {
  const { transA } = cfg;
  const { limits } = deviceInfo();
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
  const aRows = (p.aBatched ? p.batch : 1) * (transA ? p.k : p.m);
  const aRowLen = transA ? p.m : p.k;
  const tex = useTextureA(cfg, p)
    ? matmulTexLayout(aRows, aRowLen, limits.maxTextureDimension2D)
    : null;
  if (tex) {
    const tA = copyToTexture(a, aRows, aRowLen, tex);
    const shifts = { shiftA: tex.shift, shiftB: 0 };
    matmulKernel({ ...cfg, texA: true })(
      { B: b, C: out, tA },
      { ...uniforms, ...shifts },
      workgroups,
    );
  } else {
    matmulKernel(cfg)({ A: a, B: b, C: out }, uniforms, workgroups);
  }
}

// The interim bf16 path: a bf16 operand (block) is widened to a transient f32 copy for one
// dispatch and freed right after it (the dispatch is already recorded), so the tape keeps the
// bf16 tensor. A kernel reading bf16 directly would need neither copy.
function runWidened(
  a: Tensor,
  b: Tensor,
  out: Tensor,
  transA: boolean,
  transB: boolean,
  p: Plan,
): void {
  const [a32, b32] = [convert(a, "f32"), convert(b, "f32")];
  try {
    run(a32, b32, out, transA, transB, p);
  } finally {
    a32.dispose();
    b32.dispose();
  }
}

/**
 * op(a)·op(b) into `out` [..., M, N]. Operands and output that fit one storage binding (as f32)
 * take one dispatch. A larger 2-D product runs in blocks of M, N and K. A large operand is cut
 * along its rows into zero-copy windows (M of an untransposed A, N of a transposed B, K of a
 * transposed A or an untransposed B); other blocks are gathered copies (of the small operands: in
 * a training step the activations, or of a large operand's row windows where a layout cuts it
 * along its columns). Blocks over K add up into their block of C, which is a row window of a
 * large C or copied into a small one. A batched product over the limit throws a DeviceLimitError
 * naming the shapes.
 */
function multiplyInto(
  a: Tensor,
  b: Tensor,
  out: Tensor,
  transA: boolean,
  transB: boolean,
  p: Plan,
): void {
  const limit = maxWindowBytes();
  // Output rows and columns per dispatch stay within the workgroup-count limit (each workgroup
  // covers at least one of them).
  const cap = gpuDevice().limits.maxComputeWorkgroupsPerDimension;
  const f32 = (t: Tensor) => t.size * 4;
  const { m, n, k } = p;
  const batched = p.batch > 1 || p.aBatched || p.bBatched;
  if (
    f32(a) <= limit && f32(b) <= limit && out.bytes <= limit && (batched || (m <= cap && n <= cap))
  ) {
    runWidened(a, b, out, transA, transB, p);
    return;
  }
  const refuse = (why: string) =>
    new DeviceLimitError(
      `matmul: ${fmtShape(a.shape)} ${a.dtype}${transA ? "ᵀ" : ""} · ${
        fmtShape(b.shape)
      } ${b.dtype}${transB ? "ᵀ" : ""} -> ${
        fmtShape(out.shape)
      }: ${why} (one storage binding holds ${limit} bytes: maxStorageBufferBindingSize)`,
    );
  if (batched) throw refuse("a batched product over one binding cannot be windowed");
  const [bytesA, bytesB] = [bytesPerElement(a.dtype), bytesPerElement(b.dtype)];
  // A window of an axis of `size` (at most `most`) such that blocks `other` elements across fit
  // the limit as f32, starting on aligned offsets of the operands whose rows the axis indexes.
  const window = (size: number, other: number, rowBytes: number[], most = Infinity) => {
    if (4 * size * other <= limit && size <= most) return size;
    const step = rowAlignment(...rowBytes);
    const w = Math.floor(Math.min(limit / (4 * other), most) / step) * step;
    if (w < 1) throw refuse(`a block ${step} x ${other} does not fit one binding`);
    return w;
  };
  // Only what does not fit one binding is cut into row views (aligned, and whole rows even where
  // a block uses some of the columns); blocks of small operands and of a small C are copies.
  // N: rows of a transposed B. K: rows of an untransposed B and of a transposed A. M: rows of C
  // and of an untransposed A. Each later window accounts for the earlier ones.
  const [bigA, bigB, bigC] = [f32(a) > limit, f32(b) > limit, out.bytes > limit];
  const nw = window(n, transB ? k : 1, transB && bigB ? [k * bytesB] : [], cap);
  const kw = window(
    k,
    Math.max(transB ? 0 : bigB ? n : nw, transA && bigA ? m : 0),
    [...(!transB && bigB ? [n * bytesB] : []), ...(transA && bigA ? [m * bytesA] : [])],
  );
  const mRows = [...(bigC ? [4 * n] : []), ...(!transA && bigA ? [k * bytesA] : [])];
  const aWidth = transA ? (bigA ? 0 : kw) : bigA ? k : kw;
  const mw = window(m, Math.max(bigC ? n : nw, aWidth), mRows, cap);
  const cWhole = !bigC;
  const a2 = a.view(transA ? [k, m] : [m, k]);
  const b2 = b.view(transB ? [n, k] : [k, n]);
  const c2 = out.view([m, n]);
  try {
    forEachRowWindow(m, mw, (m0, rows) => {
      const cRows = rows === m || cWhole ? c2.view(c2.shape) : c2.rows(m0, rows);
      // Where this M block starts in cRows.
      const base = cWhole ? m0 * n : 0;
      forEachRowWindow(n, nw, (n0, cols) => {
        // The block of C: C's own rows when it spans them, else a block copied in after.
        const own = cols === n && (rows === m || !cWhole);
        const target = own ? cRows : Tensor.empty([rows, cols]);
        forEachRowWindow(k, kw, (k0, depth) => {
          const aBlk = block(a2, !transA, [m0, rows], [k0, depth]);
          const bBlk = block(b2, !transB, [k0, depth], [n0, cols]);
          const dims = { ...p, m: rows, n: cols, k: depth, outShape: [rows, cols] };
          const part = k0 === 0 ? target : Tensor.empty([rows, cols]);
          runWidened(aBlk, bBlk, part, transA, transB, dims);
          if (part !== target) {
            addInto(part, target);
            part.dispose();
          }
          aBlk.dispose();
          bBlk.dispose();
        });
        if (target !== cRows) {
          stridedCopy("matmul_block", "scatter", target, cRows, [rows, cols], [n, 1], base + n0);
          target.dispose();
        }
      });
      cRows.dispose();
    });
  } finally {
    for (const t of [a2, b2, c2]) t.dispose();
  }
}

/**
 * The block [r0, r0 + nr) x [c0, c0 + nc) of a stored 2-D operand, in its stored layout; `rowsFirst`
 * says whether the first range indexes the stored rows (else the stored matrix is its transpose).
 * A range of whole rows starting on an aligned offset is a zero-copy window; anything else is
 * gathered into a new f32 tensor (from the row window, or from the whole operand when the window
 * would be misaligned: then the operand is a small one, see the windows of `multiplyInto`).
 */
function block(
  t: Tensor,
  rowsFirst: boolean,
  first: [number, number],
  second: [number, number],
): Tensor {
  const [[r0, nr], [c0, nc]] = rowsFirst ? [first, second] : [second, first];
  const [rows, cols] = t.shape;
  if (nr === rows && nc === cols) return t.view(t.shape);
  const align = gpuDevice().limits.minStorageBufferOffsetAlignment;
  const aligned = (t.offset + r0 * cols * bytesPerElement(t.dtype)) % align === 0;
  if (aligned && nc === cols) return t.rows(r0, nr);
  const view = aligned ? t.rows(r0, nr) : t.view(t.shape);
  const src = convert(view, "f32");
  view.dispose();
  const out = Tensor.empty([nr, nc]);
  const off = (aligned ? 0 : r0 * cols) + c0;
  stridedCopy("matmul_block", "gather", src, out, [nr, nc], [cols, 1], off);
  src.dispose();
  return out;
}

/**
 * Whether A goes through an rgba32float texture (register kernels on "cpu" adapters, vec4 A, big
 * enough products). textureLoad fetches the 8 lanes' texels in straight-line code, where a storage
 * load is a per-lane loop with branches, so it pays where A's loads miss the cache:
 *  - Aᵀ with the B-sharing kernel: each K step reads 4 rows of Aᵀ that lie M floats apart, which
 *    the prefetcher does not follow; textured it measured 1.03-2x faster, copy included (same
 *    run: 1024³ 1.13x, 1376x2048x512 2.0x, 2048x512x1376 1.10x, 352x2048x128 1.04x), e.g. the
 *    weight gradient dW = dYᵀ·X.
 *  - untransposed A in the plain register kernel (no subgroups, e.g. GL): each invocation reads
 *    its own rows; ~1.1-1.3x end to end, copy included.
 * Elsewhere it measured no faster than storage, so the copy is not paid.
 */
function useTextureA(cfg: MatmulShaderConfig, p: Plan): boolean {
  if (deviceInfo().kind !== "cpu" || cfg.kind !== "reg" || !cfg.vec4A || cfg.subgroupA) {
    return false;
  }
  if (2 * p.batch * p.m * p.n * p.k < textureMinFlops) return false;
  return cfg.subgroupB ? cfg.transA : !cfg.transA;
}

/**
 * Number of K blocks for split-K, or 1. Only Aᵀ·B splits (its K blocks are contiguous row blocks of
 * both operands, so a split is a batched product), and only 2-D products whose output gives too
 * few workgroups to keep every llvmpipe thread busy while K is long: the weight gradient
 * dW = dYᵀ·X with K = tokens and a small layer (e.g. 32x128 over 2048 tokens).
 */
function splitKParts(cfg: MatmulShaderConfig, p: Plan): number {
  if (!cfg.transA || cfg.transB || p.batch !== 1 || cfg.kind !== "reg") return 1;
  const [x, y] = matmulWorkgroups(cfg, p.m, p.n, 1);
  let parts = 1;
  while (
    x * y * parts < splitMinWorkgroups && p.k % (2 * parts) === 0 &&
    p.k / (2 * parts) >= SPLIT_MIN_K
  ) parts *= 2;
  return parts;
}

// Split-K targets: one workgroup per core (llvmpipe runs one thread per core), each with a K block
// of at least SPLIT_MIN_K. Only outputs with fewer workgroups than cores split, so the extra sum
// dispatch is paid only where a core would otherwise idle.
let splitMinWorkgroups = navigator.hardwareConcurrency || 2;
const SPLIT_MIN_K = 256;

/**
 * Sets the number of workgroups split-K aims for (default: the number of cores; 0 switches
 * split-K off); returns the previous value. Meant for tests and benchmarks.
 */
export function setMatmulSplitK(minWorkgroups: number): number {
  const prev = splitMinWorkgroups;
  splitMinWorkgroups = minWorkgroups;
  return prev;
}

let forcedFamily: MatmulFamily = "auto";

/**
 * Forces a kernel family for every later matmul where the shape and device allow it (see
 * {@link MatmulFamily}); `"auto"` (the default) restores the per-adapter table. Returns the
 * previous setting. Meant for tests and benchmarks.
 */
export function setMatmulFamily(family: MatmulFamily): MatmulFamily {
  const prev = forcedFamily;
  forcedFamily = family;
  return prev;
}

// Minimum 2·batch·M·N·K for the texture path: below it the copy and the extra pipeline are not
// worth it (and tiny test shapes keep exercising the storage kernel).
let textureMinFlops = 2 ** 26;

/**
 * Sets the minimum 2·batch·M·N·K at which a matmul on a "cpu" (llvmpipe) adapter reads A through
 * an rgba32float texture where that pays (Aᵀ in the B-sharing kernel, untransposed A in the plain
 * register kernel); returns the previous value. `0` uses the texture path whenever the shape
 * allows it (A's rows a multiple of 4 long, texture within maxTextureDimension2D), `Infinity`
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
// One view per cached texture, so that the dispatcher finds the bind groups that use it again.
const texViews = new WeakMap<GPUTexture, GPUTextureView>();
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
    noteAllocated(t, "textures", width * height * 16);
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
      { buffer, offset: x.offset, bytesPerRow: lay.bytesPerRow, rowsPerImage: full },
      { texture },
      [lay.width, full],
    );
  }
  const rest = rows - full * g;
  if (rest > 0) {
    encodeCopyToTexture(
      { buffer, offset: x.offset + full * lay.bytesPerRow },
      { texture, origin: [0, full] },
      [(rest * rowLen) / 4, 1],
    );
  }
  let view = texViews.get(texture);
  if (!view) texViews.set(texture, view = texture.createView());
  return view;
}

function product(a: Tensor, b: Tensor, transA: boolean, transB: boolean, p: Plan): Tensor {
  if (sizeOf(p.outShape) > 0 && p.k === 0) return zeros(p.outShape);
  const out = Tensor.empty(p.outShape);
  if (out.size > 0) multiplyInto(a, b, out, transA, transB, p);
  return out;
}

/**
 * Writes the 2-D product op(A)·op(B) (f32 or bf16 operands) into `out`, an f32 [M, N] tensor or a
 * {@link Tensor.rows} window of a larger one, e.g. a block of a gradient written in place. Not
 * recorded on any tape; `out`'s previous contents are overwritten.
 */
export function matmulInto(a: Tensor, b: Tensor, out: Tensor, opts: MatmulOptions = {}): void {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  assertDType("matmulInto", ["f32", "bf16"], a, b);
  assertDType("matmulInto", ["f32"], ["out", out]);
  const p = plan(a, b, transA, transB);
  if (a.rank !== 2 || b.rank !== 2 || !shapesEqual(out.shape, p.outShape)) {
    throw new ShapeError(
      `matmulInto: needs 2-D operands and out ${fmtShape(p.outShape)}, got ${fmtShape(a.shape)}, ` +
        `${fmtShape(b.shape)} and out ${fmtShape(out.shape)}`,
    );
  }
  if (out.size > 0 && p.k === 0) throw new ShapeError("matmulInto: inner dimension 0");
  if (out.size > 0) multiplyInto(a, b, out, transA, transB, p);
}

/**
 * Matrix product op(A)·op(B) with op = identity or transpose per {@link MatmulOptions}, in f32.
 *
 * Shapes: A [..., M, K] (or [..., K, M] with `transA`), B [..., K, N] (or [..., N, K] with `transB`).
 * Leading (batch) dims must match, or one operand may be 2-D and is shared across the batch. A 2-D B
 * with an untransposed A of any rank multiplies the last axis: `x [B, T, D] · W [D, N] -> [B, T, N]`.
 *
 * Operands may be bf16 (weights): for now each is widened to a transient f32 copy per dispatch,
 * which is freed at once; the tape keeps the bf16 operand, and its gradient comes out f32 (a bf16
 * leaf's is stored as bf16 by the tape). 2-D products whose operands or output exceed one storage
 * binding run in blocks (see `multiplyInto` above); batched ones throw a DeviceLimitError.
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  assertDType("matmul", ["f32", "bf16"], a, b);
  const p = plan(a, b, transA, transB);
  const y = product(a, b, transA, transB, p);
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
