/**
 * Rotary position embedding (RoPE) in the rotate-half convention of HF LLaMA, on `[..., T, Dh]`
 * tensors (attention uses `[B, H, T, Dh]`). One element-wise kernel rotates each pair
 * `(x[i], x[i + Dh/2])`; the VJP is the same kernel rotating the other way.
 * @module
 */
import { DTypeError, ShapeError } from "../core/errors.ts";
import { dispatch, grid1d } from "../core/kernel.ts";
import { fmtShape } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";

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

const KERNEL = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
struct U { pairs: u32, t: u32, half: u32, offset: u32, sign: f32, freqs: array<vec4<f32>, ${
  MAX_HALF / 4
}> }
@group(0) @binding(2) var<uniform> u: U;
const WG = 256u;
@compute @workgroup_size(WG) fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = gid.x + gid.y * (nwg.x * WG);
  if (p >= u.pairs) { return; }
  let row = p / u.half;
  let i = p - row * u.half;
  let pos = f32(row % u.t + u.offset);
  let angle = pos * u.freqs[i / 4u][i % 4u];
  let c = cos(angle);
  let s = u.sign * sin(angle);
  let a = row * 2u * u.half + i;
  let b = a + u.half;
  let x1 = x[a];
  let x2 = x[b];
  y[a] = x1 * c - x2 * s;
  y[b] = x2 * c + x1 * s;
}`;

function apply(
  x: Tensor,
  half: number,
  t: number,
  offset: number,
  base: number,
  sign: number,
): Tensor {
  const y = Tensor.empty(x.shape);
  const pairs = x.size / 2;
  if (pairs === 0) return y;
  // Layout: pairs, t, half, offset (u32), sign (f32), 3 words of padding, then the vec4 array.
  const u = new Uint32Array(8 + MAX_HALF);
  const f = new Float32Array(u.buffer);
  u.set([pairs, t, half, offset]);
  f[4] = sign;
  for (let i = 0; i < half; i++) f[8 + i] = Math.pow(base, (-2 * i) / (2 * half));
  dispatch({
    name: "rope",
    code: KERNEL,
    inputs: [x.binding()],
    outputs: [y.binding()],
    uniforms: u,
    workgroups: grid1d(pairs, 256),
  });
  return y;
}

/**
 * Applies rotary position embeddings to `x` [..., T, Dh] (f32; e.g. `[B, H, T, Dh]`), position
 * `offset + t` for row t: `x * cos + rotate_half(x) * sin` with `rotate_half([x1, x2]) = [-x2, x1]`
 * over the halves of Dh and frequency `base^(-2i/Dh)` for pair i. Dh must be even (at most 1024).
 */
export function rope(x: Tensor, opts: RopeOptions = {}): Tensor {
  const { base = 10000, offset = 0 } = opts;
  if (x.dtype !== "f32") {
    throw new DTypeError(`rope: x must be f32, got ${x.dtype} ${fmtShape(x.shape)}`);
  }
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
