/**
 * Rotary position embedding (RoPE) in the rotate-half convention of HF LLaMA, on `[..., T, Dh]`
 * tensors (attention uses `[B, H, T, Dh]`). One element-wise kernel rotates each pair
 * `(x[i], x[i + Dh/2])`; the VJP is the same kernel rotating the other way.
 * @module
 */
import { defineKernel } from "../core/define_kernel.ts";
import { assertF32 } from "../core/dtype.ts";
import { ShapeError } from "../core/errors.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import { SINCOS_WGSL } from "./wgsl_math.ts";

/** Options of {@link rope}. */
export interface RopeOptions {
  /** Base of the frequencies `base^(-2i/Dh)` (default 10000). */
  base?: number;
  /** Position of the first row along T (default 0), e.g. for decoding after a prefix. */
  offset?: number;
}

// Frequencies travel in the uniform (cached by content): computed in float64 on the CPU and rounded
// to f32 once, like HF's `inv_freq`, and no per-call upload.
const MAX_HALF = 512;

const KERNEL = defineKernel({
  name: "rope",
  inputs: { x: "f32" },
  outputs: { y: "f32" },
  uniforms: { t: "u32", half: "u32", offset: "u32", sign: "f32", freqs: ["f32", MAX_HALF] },
  grid: "flat", // one invocation per pair
  helpers: SINCOS_WGSL,
  body: `  let row = i / u.half;
  let j = i - row * u.half;
  let pos = f32(row % u.t + u.offset);
  let sc = sincos(pos * u_freqs(j));
  let c = sc.y;
  let s = u.sign * sc.x;
  let a = row * 2u * u.half + j;
  let b = a + u.half;
  let x1 = load_x(a);
  let x2 = load_x(b);
  store_y(a, x1 * c - x2 * s);
  store_y(b, x2 * c + x1 * s);`,
});

/**
 * RoPE frequencies `base^(-2i/Dh)` for pairs i < half (Dh = 2·half), in float64 like HF's
 * `inv_freq` (rounded to f32 once, in the uniform).
 */
export function ropeFrequencies(half: number, base: number): number[] {
  return Array.from({ length: half }, (_, i) => Math.pow(base, (-2 * i) / (2 * half)));
}

function apply(
  x: Tensor,
  half: number,
  t: number,
  offset: number,
  base: number,
  sign: number,
): Tensor {
  const y = Tensor.empty(x.shape);
  KERNEL({ x, y }, { n: x.size / 2, t, half, offset, sign, freqs: ropeFrequencies(half, base) });
  return y;
}

/**
 * Applies rotary position embeddings to `x` [..., T, Dh] (f32; e.g. `[B, H, T, Dh]`), position
 * `offset + t` for row t: `x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`
 * over the halves of Dh and frequency `base^(-2i/Dh)` for pair i. Dh must be even (at most 1024).
 */
export function rope(x: Tensor, opts: RopeOptions = {}): Tensor {
  const { base = 10000, offset = 0 } = opts;
  assertF32("rope", ["x", x]);
  if (x.rank < 2) throw new ShapeError(`rope: x must be [..., T, Dh], got ${fmtShape(x.shape)}`);
  const dh = x.shape[x.rank - 1];
  const t = x.shape[x.rank - 2];
  if (dh % 2 !== 0) {
    throw new ShapeError(`rope: head dim Dh must be even, got x ${fmtShape(x.shape)}`);
  }
  if (dh > 2 * MAX_HALF) {
    throw new ShapeError(
      `rope: head dim Dh must be at most ${2 * MAX_HALF}, got x ${fmtShape(x.shape)}`,
    );
  }
  if (!Number.isInteger(offset) || offset < 0 || offset + t > 2 ** 24) {
    throw new ShapeError(`rope: offset must be an integer in [0, 2^24 - T], got ${offset}`);
  }
  if (!(base > 0)) throw new ShapeError(`rope: base must be positive, got ${base}`);
  const y = apply(x, dh / 2, t, offset, base, 1);
  if (isRecording()) recordOp("rope", [x], y, (g) => [apply(g, dh / 2, t, offset, base, -1)]);
  return y;
}
