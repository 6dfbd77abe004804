/**
 * Shared test helpers: device setup, float64 CPU references, finite differences and fast-check
 * arbitraries. Tolerances are stated where they are used.
 */
import fc from "fast-check";
import { fromBf16Bits, toBf16Bits } from "../core/bf16.ts";
import { gpuDevice, init } from "../core/device.ts";
import { readAll, type Tensor, tensor } from "../core/tensor.ts";
import { type BackwardOptions, Tape, valueAndGrad } from "../core/tape.ts";
import * as tree from "../core/tree.ts";
import { sizeOf } from "../core/shape.ts";
import { rowAlignment, setMaxWindowBytes } from "../core/windows.ts";
import { mul, sum } from "../ops/mod.ts";

/** Initializes the shared device once per test file. */
export async function setup(): Promise<void> {
  await init();
}

/** Default fast-check parameters: few runs, because every run costs GPU syncs (>= 11 ms each). */
export const FC = { numRuns: 15, seed: 42 } as const;

/** Row-major float64 data with a shape. */
export interface Arr {
  shape: number[];
  data: Float64Array;
}

/** Makes an Arr. */
export function arr(shape: number[], data: ArrayLike<number>): Arr {
  return { shape, data: Float64Array.from(data) };
}

/** Uploads an Arr as an f32 tensor. */
export function toTensor(a: Arr): Tensor {
  return tensor(Float32Array.from(a.data), a.shape);
}

/** The Arr with every value rounded to bf16 (what a bf16 tensor of it holds). */
export function roundBf16(a: Arr): Arr {
  return { shape: a.shape, data: a.data.map((x) => fromBf16Bits(toBf16Bits(x))) };
}

/** Arbitrary shape with `rank` dims each in [1, maxDim]. */
export function shapeArb(rank: number, maxDim = 9): fc.Arbitrary<number[]> {
  return fc.array(fc.integer({ min: 1, max: maxDim }), { minLength: rank, maxLength: rank });
}

/** Arbitrary float64 data for a shape (values in [lo, hi]), generated from a seed. */
export function randomArr(shape: number[], seed: number, lo = -2, hi = 2): Arr {
  let s = seed >>> 0 || 1;
  const n = sizeOf(shape);
  const d = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    // Round to f32 so the CPU reference sees exactly the values the GPU sees.
    d[i] = Math.fround(lo + (hi - lo) * ((s >>> 0) / 2 ** 32));
  }
  return { shape, data: d };
}

/**
 * Asserts |actual - expected| <= atol + rtol * |expected| elementwise, with a message naming the first
 * failing index.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: { atol?: number; rtol?: number; what?: string } = {},
): void {
  const { atol = 1e-5, rtol = 1e-4, what = "values" } = opts;
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (!(Math.abs(a - e) <= atol + rtol * Math.abs(e)) && !(Number.isNaN(a) && Number.isNaN(e))) {
      throw new Error(`${what}: index ${i}: got ${a}, expected ${e} (atol ${atol}, rtol ${rtol})`);
    }
  }
}

/**
 * Central finite differences of `sum(ref(inputs) * weights)` with respect to every input element,
 * in float64 (step `h`).
 */
export function finiteDiffGrads(
  ref: (inputs: Arr[]) => Arr,
  inputs: Arr[],
  weights: Float64Array,
  h = 1e-4,
): Float64Array[] {
  const loss = (ins: Arr[]) => {
    const out = ref(ins).data;
    let s = 0;
    for (let i = 0; i < out.length; i++) s += out[i] * weights[i];
    return s;
  };
  return inputs.map((x, k) => {
    const g = new Float64Array(x.data.length);
    for (let i = 0; i < x.data.length; i++) {
      const plus = inputs.map((a, j) => (j === k ? { shape: a.shape, data: a.data.slice() } : a));
      const minus = inputs.map((a, j) => (j === k ? { shape: a.shape, data: a.data.slice() } : a));
      plus[k].data[i] += h;
      minus[k].data[i] -= h;
      g[i] = (loss(plus) - loss(minus)) / (2 * h);
    }
    return g;
  });
}

/**
 * Checks an op forward against its float64 reference and its VJP against central finite differences
 * of that reference, using the scalar loss `sum(op(x) * w)` with random weights `w`.
 * `diff` selects which inputs are differentiated (default: all). `dtypes` uploads inputs as bf16
 * where given: the reference then sees the bf16-rounded values, and the gradients of those inputs
 * must come back as bf16 (compared after their own rounding: give `grad` a bf16 tolerance).
 */
export async function checkOp(opts: {
  op: (inputs: Tensor[]) => Tensor;
  ref: (inputs: Arr[]) => Arr;
  inputs: Arr[];
  seed?: number;
  diff?: boolean[];
  dtypes?: ("f32" | "bf16")[];
  fwd?: { atol?: number; rtol?: number };
  grad?: { atol?: number; rtol?: number };
  extra?: Tensor[];
}): Promise<void> {
  const { op, ref, seed = 7 } = opts;
  const dtypes = opts.dtypes ?? opts.inputs.map(() => "f32" as const);
  const inputs = opts.inputs.map((a, i) => (dtypes[i] === "bf16" ? roundBf16(a) : a));
  const expected = ref(inputs);
  const w = randomArr(expected.shape, seed, -1, 1);
  const diff = opts.diff ?? inputs.map(() => true);
  const xs = inputs.map((a, i) => tensor(Float32Array.from(a.data), a.shape, dtypes[i]));
  const wt = toTensor(w);
  const f = valueAndGrad((ps: Tensor[]) => {
    const all = xs.map((x, i) => (diff[i] ? ps[diff.slice(0, i).filter(Boolean).length] : x));
    return sum(mul(op(all), wt));
  });
  const y = op(xs);
  const { value, grads } = f(xs.filter((_, i) => diff[i]));
  grads.forEach((g, k) => {
    const want = dtypes.filter((_, i) => diff[i])[k];
    if (g.dtype !== want) throw new Error(`grad ${k} is ${g.dtype}, expected ${want}`);
  });
  const [yd, ...gd] = await readAll([y, ...grads]);
  for (const t of [y, value, wt, ...grads, ...xs]) t.dispose();
  assertClose(yd, expected.data, { atol: 1e-5, rtol: 1e-4, what: "forward", ...opts.fwd });
  const fd = finiteDiffGrads(ref, inputs, w.data);
  let gi = 0;
  inputs.forEach((_, i) => {
    if (!diff[i]) return;
    assertClose(gd[gi++], fd[i], {
      atol: 1e-3,
      rtol: 1e-3,
      what: `grad of input ${i}`,
      ...opts.grad,
    });
  });
}

/** C = A·B for row-major A [m, k], B [k, n] (ta/tb: use the transpose of a stored operand). */
export function mm(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
  ta = false,
  tb = false,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) {
        s += (ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
      }
      c[i * n + j] = s;
    }
  }
  return c;
}

/**
 * Float64 rotate-half RoPE of the rows of `x` (last axis Dh): row `row` is at position
 * `posOf(row)`; pair (i, i + Dh/2) rotates by position · base^(-2i/Dh), the frequency rounded to
 * f32 like HF's `inv_freq`.
 */
export function ropeRows(x: Arr, base: number, posOf: (row: number) => number): Arr {
  const dh = x.shape[x.shape.length - 1];
  const half = dh / 2;
  const out = new Float64Array(x.data.length);
  for (let row = 0; row * dh < x.data.length; row++) {
    const p = posOf(row);
    for (let i = 0; i < half; i++) {
      const a = p * Math.fround(Math.pow(base, (-2 * i) / dh));
      const [c, s] = [Math.cos(a), Math.sin(a)];
      const x1 = x.data[row * dh + i], x2 = x.data[row * dh + half + i];
      out[row * dh + i] = x1 * c - x2 * s;
      out[row * dh + half + i] = x2 * c + x1 * s;
    }
  }
  return { shape: x.shape, data: out };
}

/** Frobenius norm of a flat array. */
export function frob(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/**
 * Gradients of `lossOf(params)` with respect to every tensor of `params` (leaf order), through a
 * tape; with `onGrad`, each goes to the hook instead as soon as it is final (per-layer updates),
 * and with backward options `onGradRows` too.
 */
export function backward<P>(
  params: P,
  lossOf: (p: P) => Tensor,
  hooks?: ((grad: Tensor, index: number) => void) | BackwardOptions,
): Tensor[] {
  const tape = new Tape();
  const leaves = tree.flatten(params);
  tape.watch(...leaves);
  const value = tape.run(() => lossOf(params));
  const grads = tape.backward(
    value,
    leaves,
    typeof hooks === "function" ? { onGrad: hooks } : hooks,
  );
  value.dispose();
  return grads as Tensor[];
}

/**
 * Runs `fn` with windows planned as if a storage binding held only `bytes` (see
 * `setMaxWindowBytes`), so window-by-window code paths run on tiny tensors.
 */
export async function withWindowBytes<T>(bytes: number, fn: () => Promise<T>): Promise<T> {
  const prev = setMaxWindowBytes(bytes);
  try {
    return await fn();
  } finally {
    setMaxWindowBytes(prev);
  }
}

/**
 * Runs `fn(bytes)` with "one storage binding" meaning `bytes`: the device's own binding limit where
 * a buffer can be larger (software adapters: 128 MiB bindings in 2 GiB buffers) and it is at most
 * 256 MiB (so tests stay small), else a forced 4 MiB window (Chromium binds 1 GiB, as much as one
 * buffer holds: no tensor could be past one binding). `real` tells which.
 */
export async function withBindingWindow<T>(
  fn: (bytes: number, real: boolean) => Promise<T>,
): Promise<T> {
  const { maxStorageBufferBindingSize: binding, maxBufferSize: buffer } = gpuDevice().limits;
  if (binding < buffer - (1 << 20) && binding <= 256 << 20) return await fn(binding, true);
  const bytes = 4 << 20;
  return await withWindowBytes(bytes, () => fn(bytes, false));
}

/** Bytes of the smallest aligned window holding a whole number of `rowBytes`-byte rows. */
export function alignedRowsBytes(rowBytes: number): number {
  return rowAlignment(rowBytes) * rowBytes;
}
