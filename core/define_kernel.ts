/**
 * One way to write a compute kernel: declare its bindings, uniforms and grid, write the body, and
 * get a function that checks its arguments and records the dispatch. The binding preamble
 * (`@group(0) @binding(k)` lines, read vs read_write), the uniform struct and its byte packing
 * (WGSL's uniform layout rules, arrays as `array<vec4<T>, Q>`), typed accessors and the entry point
 * are generated, so binding indices and uniform offsets are never counted by hand.
 *
 * @example
 * ```ts
 * const scaleRows = defineKernel({
 *   name: "scale_rows",
 *   inputs: { x: "f32" },
 *   outputs: { y: "f32" },
 *   uniforms: { d: "u32", scale: "f32" },
 *   grid: "row", // one invocation per row: the body sees `r`, already checked against u.rows
 *   body: `for (var j = 0u; j < u.d; j++) { store_y(r * u.d + j, u.scale * load_x(r * u.d + j)); }`,
 * });
 * scaleRows({ x, y }, { rows: 8, d: 64, scale: 0.5 });
 * ```
 *
 * Values travel in the uniform buffer and never in the source: pipelines are cached by source,
 * and a value baked into it would compile a new pipeline per value (lavapipe even re-specializes a
 * shader per value of a uniform used as a loop bound; see ops/matmul_wgsl.ts for the trick that
 * keeps such bounds opaque).
 *
 * Meant to grow, without touching the kernels that use the accessors:
 * - more element types: a packed dtype (bf16 two per u32, 8-bit codes four per u32) declares an
 *   `array<u32>` binding and generates `load_x(i) -> f32` / `store_y(i, v)` that unpack/pack, so
 *   a body written against the accessors serves every dtype. (A packed store writes a whole word:
 *   kernels that store packed outputs must give each invocation whole words.) Extend
 *   {@link StorageType}, `accessors` and `checkBinding` below.
 * - windows of large buffers: a {@link Binding} may carry a byte `offset` and `size`, so a tensor
 *   over `maxStorageBufferBindingSize` can be processed in several dispatches, each binding one
 *   window (element indices inside a body are then relative to the window).
 * @module
 */
import type { DType } from "./dtype.ts";
import { DTypeError } from "./errors.ts";
import { type Binding, dispatch, grid1d, registerCache, WGSL_FLAT_INDEX } from "./kernel.ts";
import { fmtShape } from "./shape.ts";

/**
 * Element type of a storage binding: a tensor dtype, `vec4f` (an f32 tensor read four at a time)
 * or `atomic<u32>`. The packed dtypes `bf16` and `u8` are bound as `array<u32>` and used through
 * accessors only: `load_x(i)` (bf16 → f32, u8 → the code as u32) and, for outputs, whole-word
 * stores `store_x_pair(j, a, b)` (bf16 elements 2j, 2j+1, rounded to nearest even) or
 * `store_x_word(j, w)` (u8 elements 4j…4j+3, element 4j in the lowest byte), so invocations never
 * race on a shared word.
 */
export type StorageType = "f32" | "i32" | "u32" | "bf16" | "u8" | "vec4f" | "atomic<u32>";

// f32 → bf16 bits, round to nearest even (NaN stays a quiet NaN), as core/bf16.ts does on the CPU.
const BF16_ROUND = `fn bf16_bits(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  if ((b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u) { return (b >> 16u) | 0x40u; }
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}`;

/** A WGSL scalar a uniform field holds. */
export type UniformScalar = "f32" | "i32" | "u32";

/** A uniform field: a scalar, or `[scalar, length]` for a fixed-length array. */
export type UniformType = UniformScalar | readonly [UniformScalar, number];

/** Kind of a sampled-texture binding (bound after the uniform). */
export type TextureType = "texture_2d<f32>";

/** Entry-point builtins a custom grid may ask for. */
export type Builtin =
  | "global_invocation_id"
  | "local_invocation_id"
  | "workgroup_id"
  | "num_workgroups"
  | "local_invocation_index"
  | "subgroup_invocation_id"
  | "subgroup_size";

/** A grid for kernels that are neither flat nor per-row: the caller passes workgroup counts. */
export interface CustomGrid {
  /** `@workgroup_size` of the entry point. */
  workgroupSize: readonly [number, number?, number?];
  /** Entry-point parameters by name (default `{ gid: "global_invocation_id" }`). */
  builtins?: Readonly<Record<string, Builtin>>;
}

/**
 * How invocations map onto the work:
 * - `"flat"`: one invocation per element of a 1-D range of `n` (a uniform the helper adds); the
 *   body sees the index `i < u.n`. Large `n` is split over a 2-D grid (see `grid1d`).
 * - `"row"`: one invocation per row of `rows` (a uniform the helper adds); the body sees `r < u.rows`.
 * - a {@link CustomGrid}: the body is the whole entry point; the call passes the workgroup counts.
 */
export type Grid = "flat" | "row" | CustomGrid;

/** Declaration of a kernel; see {@link defineKernel}. */
export interface KernelSpec<
  I extends Record<string, StorageType>,
  O extends Record<string, StorageType>,
  U extends Record<string, UniformType>,
  T extends Record<string, TextureType>,
  G extends Grid,
> {
  /** Op name for errors and profiles (not part of the source, so equal kernels share a pipeline). */
  name: string;
  /** Read-only storage bindings, bound first in this order. */
  inputs?: I;
  /** Read-write storage bindings, bound after the inputs. */
  outputs?: O;
  /** Fields of the uniform struct `u` (`u.name`; arrays also through `u_name(j)`). */
  uniforms?: U;
  /** Sampled textures, bound last. */
  textures?: T;
  /** How invocations map onto the work. */
  grid: G;
  /** Invocations per workgroup of a flat (default 256) or row (default 16) grid. */
  workgroupSize?: number;
  /** Module-scope WGSL placed before the entry point: constants, functions, workgroup variables. */
  helpers?: string;
  /** WGSL body of the entry point. */
  body: string;
}

/** Anything a kernel can bind: a tensor (dtype checked against the declaration) or a raw binding. */
export type Bindable = {
  readonly dtype: DType;
  readonly shape: readonly number[];
  binding(): Binding;
} | Binding;

/** Uniform values of a call: the declared fields, plus `n` for a flat grid or `rows` for a row grid. */
export type UniformArgs<U, G> =
  & { [K in keyof U]: U[K] extends readonly unknown[] ? readonly number[] : number }
  & (G extends "flat" ? { n: number } : G extends "row" ? { rows: number } : unknown);

/** Bindings of a call, by declared name. */
export type BindingArgs<I, O, T> =
  & { [K in keyof I]: Bindable }
  & { [K in keyof O]: Bindable }
  & { [K in keyof T]: GPUTextureView };

/** Workgroup counts; a call passes them only for a {@link CustomGrid}. */
export type Workgroups = readonly [number, number?, number?];

/** A defined kernel: call it to check the arguments and record one dispatch. */
export type Kernel<I, O, U, T, G> =
  & ((
    bindings: BindingArgs<I, O, T>,
    uniforms: UniformArgs<U, G>,
    ...grid: G extends "flat" | "row" ? [] : [workgroups: Workgroups]
  ) => void)
  & {
    /** The generated WGSL (pipelines are cached by it). */
    readonly code: string;
    /** The op name given at definition. */
    readonly kernelName: string;
  };

/** Default invocations per workgroup of a flat grid. */
export const FLAT_WG = 256;

/**
 * Default invocations per workgroup of a row grid. A workgroup runs on one CPU thread on software
 * adapters, so keep it small enough that a few long rows still spread over the cores.
 */
export const ROW_WG = 16;

const BUILTIN_TYPES: Record<Builtin, string> = {
  global_invocation_id: "vec3u",
  local_invocation_id: "vec3u",
  workgroup_id: "vec3u",
  num_workgroups: "vec3u",
  local_invocation_index: "u32",
  subgroup_invocation_id: "u32",
  subgroup_size: "u32",
};

interface Field {
  name: string;
  type: UniformScalar;
  /** Offset in 4-byte words. */
  word: number;
  /** Declared array length, or 0 for a scalar. */
  length: number;
}

/**
 * WGSL uniform layout: scalars take 4 bytes at 4-byte alignment; an array of `n` scalars is
 * declared `array<vec4<T>, ceil(n / 4)>` (uniform arrays need a 16-byte stride) at 16-byte
 * alignment; the struct is padded to 16 bytes.
 */
function layoutUniforms(fields: [string, UniformType][]): { fields: Field[]; words: number } {
  const out: Field[] = [];
  let word = 0;
  for (const [name, t] of fields) {
    if (typeof t === "string") {
      out.push({ name, type: t, word, length: 0 });
      word += 1;
    } else {
      const [type, length] = t;
      if (!Number.isInteger(length) || length < 1) {
        throw new RangeError(`uniform array ${name} needs a positive length, got ${length}`);
      }
      word = Math.ceil(word / 4) * 4;
      out.push({ name, type, word, length });
      word += 4 * Math.ceil(length / 4);
    }
  }
  return { fields: out, words: Math.max(4, Math.ceil(word / 4) * 4) };
}

const VEC4 = { f32: "vec4f", i32: "vec4i", u32: "vec4u" } as const;

function uniformDecl(fields: Field[]): string {
  const members = fields.map((f) =>
    f.length === 0
      ? `${f.name}: ${f.type}`
      : `${f.name}: array<${VEC4[f.type]}, ${Math.ceil(f.length / 4)}>`
  );
  const arrays = fields.filter((f) => f.length > 0).map((f) =>
    `fn u_${f.name}(j: u32) -> ${f.type} { return u.${f.name}[j >> 2u][j & 3u]; }`
  );
  return [`struct U { ${members.join(", ")} }`, ...arrays].join("\n");
}

// Typed element accessors of scalar bindings: `load_x(i)` and, for outputs, `store_x(i, v)`.
function accessors(name: string, type: StorageType, writable: boolean): string[] {
  if (type === "bf16") {
    const out = [
      `fn load_${name}(i: u32) -> f32 { let w = ${name}[i >> 1u]; ` +
      `return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u)); }`,
    ];
    if (writable) {
      out.push(
        `fn store_${name}_pair(j: u32, a: f32, b: f32) { ${name}[j] = bf16_bits(a) | (bf16_bits(b) << 16u); }`,
      );
    }
    return out;
  }
  if (type === "u8") {
    const out = [
      `fn load_${name}(i: u32) -> u32 { return (${name}[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu; }`,
    ];
    if (writable) out.push(`fn store_${name}_word(j: u32, w: u32) { ${name}[j] = w; }`);
    return out;
  }
  if (type !== "f32" && type !== "i32" && type !== "u32") return [];
  const out = [`fn load_${name}(i: u32) -> ${type} { return ${name}[i]; }`];
  if (writable) out.push(`fn store_${name}(i: u32, v: ${type}) { ${name}[i] = v; }`);
  return out;
}

function entryPoint(grid: Grid, wg: number | undefined, body: string): string {
  if (grid === "flat" || grid === "row") {
    const size = wg ?? (grid === "flat" ? FLAT_WG : ROW_WG);
    const [v, bound] = grid === "flat" ? ["i", "u.n"] : ["r", "u.rows"];
    return `const WG = ${size}u;
@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let ${v} = ${WGSL_FLAT_INDEX};
  if (${v} >= ${bound}) { return; }
${body}
}`;
  }
  const builtins: Readonly<Record<string, Builtin>> = grid.builtins ??
    { gid: "global_invocation_id" };
  const params = (Object.entries(builtins) as [string, Builtin][])
    .map(([name, b]) => `@builtin(${b}) ${name}: ${BUILTIN_TYPES[b]}`);
  const [x, y = 1, z = 1] = grid.workgroupSize;
  return `@compute @workgroup_size(${x}, ${y}, ${z})
fn main(${params.join(", ")}) {
${body}
}`;
}

function packUniforms(
  op: string,
  layout: { fields: Field[]; words: number },
  values: Record<string, number | readonly number[]>,
): Uint32Array {
  const data = new ArrayBuffer(layout.words * 4);
  const views = {
    u32: new Uint32Array(data),
    i32: new Int32Array(data),
    f32: new Float32Array(data),
  };
  for (const f of layout.fields) {
    const v = values[f.name];
    if (f.length === 0) {
      views[f.type][f.word] = checkValue(op, f.name, f.type, v);
    } else if (Array.isArray(v) && v.length <= f.length) {
      v.forEach((
        x,
        j,
      ) => (views[f.type][f.word + j] = checkValue(op, `${f.name}[${j}]`, f.type, x)));
    } else {
      throw new RangeError(`${op}: uniform ${f.name} needs at most ${f.length} numbers, got ${v}`);
    }
  }
  return views.u32;
}

const INT_RANGE = { u32: [0, 2 ** 32 - 1], i32: [-(2 ** 31), 2 ** 31 - 1] } as const;

function checkValue(op: string, name: string, type: UniformScalar, v: unknown): number {
  if (typeof v !== "number") {
    throw new TypeError(`${op}: uniform ${name} must be a number, got ${typeof v}`);
  }
  if (type !== "f32") {
    const [lo, hi] = INT_RANGE[type];
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new RangeError(`${op}: uniform ${name} = ${v} is not a valid ${type}`);
    }
  }
  return v;
}

function checkBinding(
  op: string,
  name: string,
  type: StorageType,
  b: Bindable | undefined,
): Binding {
  if (b === undefined) throw new TypeError(`${op}: missing binding ${name}`);
  if (!("binding" in b)) return b;
  const want = type === "f32" || type === "vec4f"
    ? ["f32"]
    : type === "bf16" || type === "u8"
    ? [type]
    : ["i32", "u32"];
  if (!want.includes(b.dtype)) {
    throw new DTypeError(
      `${op}: ${name} is declared ${type} but got a ${b.dtype} tensor ${fmtShape(b.shape)}`,
    );
  }
  return b.binding();
}

/**
 * Defines a compute kernel from its declaration (see the module doc for an example) and returns a
 * function that checks its arguments (every binding present, tensor dtypes matching the declared
 * element types, uniform values in range) and records one dispatch. Flat and row grids take their
 * size from the `n` / `rows` uniform and dispatch nothing for 0.
 *
 * The generated source declares, in this order: `struct U` and `var<uniform> u: U` (when there are
 * uniforms), the storage bindings (inputs `read`, then outputs `read_write`), the textures,
 * `load_x(i)` / `store_y(i, v)` accessors for f32/i32/u32 bindings, `u_name(j)` for uniform
 * arrays, the helpers, then `main`.
 */
export function defineKernel<
  const I extends Record<string, StorageType> = Record<never, never>,
  const O extends Record<string, StorageType> = Record<never, never>,
  const U extends Record<string, UniformType> = Record<never, never>,
  const T extends Record<string, TextureType> = Record<never, never>,
  const G extends Grid = Grid,
>(spec: KernelSpec<I, O, U, T, G>): Kernel<I, O, U, T, G> {
  const { name: op, grid } = spec;
  const entries = (r: Record<string, StorageType> | undefined, writable: boolean) =>
    Object.entries(r ?? {}).map(([n, t]): [string, StorageType, boolean] => [n, t, writable]);
  const storage = [...entries(spec.inputs, false), ...entries(spec.outputs, true)];
  const textures = Object.entries(spec.textures ?? {});
  const auto: [string, UniformType][] = grid === "flat"
    ? [["n", "u32"]]
    : grid === "row"
    ? [["rows", "u32"]]
    : [];
  const declared = Object.entries(spec.uniforms ?? {}) as [string, UniformType][];
  for (const [name] of declared) {
    if (auto.some(([a]) => a === name)) {
      throw new TypeError(`${op}: uniform ${name} is added by the ${grid} grid; do not declare it`);
    }
  }
  const layout = layoutUniforms([...auto, ...declared]);
  const hasUniform = layout.fields.length > 0;

  const lines: string[] = [];
  if (hasUniform) lines.push(uniformDecl(layout.fields));
  storage.forEach(([name, type, writable], k) => {
    const access = writable ? "read_write" : "read";
    const elem = type === "bf16" || type === "u8" ? "u32" : type;
    lines.push(`@group(0) @binding(${k}) var<storage, ${access}> ${name}: array<${elem}>;`);
  });
  let next = storage.length;
  if (hasUniform) lines.push(`@group(0) @binding(${next++}) var<uniform> u: U;`);
  for (const [name, type] of textures) {
    lines.push(`@group(0) @binding(${next++}) var ${name}: ${type};`);
  }
  if (storage.some(([, type, writable]) => type === "bf16" && writable)) lines.push(BF16_ROUND);
  for (const [name, type, writable] of storage) lines.push(...accessors(name, type, writable));
  if (spec.helpers) lines.push(spec.helpers.trim());
  lines.push(entryPoint(grid, spec.workgroupSize, spec.body));
  const code = lines.join("\n") + "\n";
  const wgSize = spec.workgroupSize ?? (grid === "row" ? ROW_WG : FLAT_WG);

  const run = (
    bindings: Record<string, Bindable | GPUTextureView>,
    values: Record<string, number | readonly number[]>,
    workgroups?: Workgroups,
  ): void => {
    const data = hasUniform ? packUniforms(op, layout, values) : undefined;
    let wg: Workgroups;
    if (grid === "flat" || grid === "row") {
      wg = grid1d(grid === "flat" ? values.n as number : values.rows as number, wgSize);
    } else if (workgroups) {
      wg = workgroups;
    } else {
      throw new TypeError(`${op}: a custom grid needs workgroup counts`);
    }
    const inputs: Binding[] = [];
    const outputs: Binding[] = [];
    for (const [name, type, writable] of storage) {
      (writable ? outputs : inputs).push(
        checkBinding(op, name, type, bindings[name] as Bindable | undefined),
      );
    }
    dispatch({
      name: op,
      code,
      inputs,
      outputs,
      uniforms: data,
      textures: textures.map(([name]) => {
        const view = bindings[name];
        if (view === undefined) throw new TypeError(`${op}: missing texture ${name}`);
        return view as GPUTextureView;
      }),
      workgroups: wg,
    });
  };
  return Object.assign(run, { code, kernelName: op }) as unknown as Kernel<I, O, U, T, G>;
}

const families: Map<string, unknown>[] = [];
registerCache("kernelVariants", () => families.reduce((n, f) => n + f.size, 0));

/**
 * Memoizes a kernel generator by its arguments (compared as JSON), for kernels whose source
 * depends on a few parameters (a rank, dtypes, an unroll factor): each variant is generated once,
 * not on every call.
 *
 * @example
 * ```ts
 * const sumOfRank = kernelFamily((rank: number) => defineKernel({ ... }));
 * sumOfRank(3)({ x, y }, { n, dims: [2, 3, 4] });
 * ```
 */
export function kernelFamily<A extends unknown[], K>(make: (...args: A) => K): (...args: A) => K {
  const cache = new Map<string, K>();
  families.push(cache);
  return (...args: A) => {
    const key = JSON.stringify(args);
    let k = cache.get(key);
    if (k === undefined) cache.set(key, k = make(...args));
    return k;
  };
}
