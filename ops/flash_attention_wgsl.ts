/**
 * WGSL generators of the fused causal attention kernels (see ops/flash_attention.ts): a RoPE
 * pre-pass over q and k, the forward (online softmax over key blocks, saving the per-row
 * log-sum-exp), and a FlashAttention-2 style backward in two kernels (dQ, which also stores
 * D_i = rowsum(dO·O); then dK and dV), each recomputing the probabilities block by block.
 *
 * Layouts: q, k, v, o and their gradients are [B, T, H, Dh] (the projections' [B, T, D] viewed per
 * head, so rows of one head are D apart); lse and D are [B, H, T]. The head dim is baked into the
 * source (every loop over it is unrolled into registers); T, H and the scale travel in the uniform.
 *
 * Two variants of each kernel share the arithmetic and differ in where a block of key (or query)
 * rows comes from:
 *  - `subgroup` (llvmpipe/lavapipe with subgroups of 8): a workgroup is one subgroup of 8 lanes,
 *    each owning `rows` query (key) rows; per block of 8 key (query) rows each lane loads one row
 *    and `subgroupBroadcast` hands it to the others, so a lane issues 1/8 of the block's loads (on
 *    llvmpipe every storage load is a per-lane scalar loop: loads by every lane measured 4-5x
 *    slower at Dh = 64). The broadcasts then cost most (~40% of the forward's CPU time at one row
 *    per lane), hence two rows per lane, each broadcast feeding both.
 *  - `workgroup` (real GPUs, and adapters without subgroups): a workgroup of `wg` threads, one row
 *    each, stages tiles of `wg` rows in workgroup memory between barriers and walks a tile's rows
 *    in a loop.
 * @module
 */
import { defineKernel, kernelFamily } from "../core/define_kernel.ts";
import { SINCOS_WGSL } from "./wgsl_math.ts";

/** Where a kernel gets the block of rows it shares across its threads. */
export type AttentionVariant = "subgroup" | "workgroup";

/** Configuration of one set of attention kernels. */
export interface AttentionKernelConfig {
  /** Head dim Dh (baked: registers per row). */
  dh: number;
  /** How rows are shared across threads. */
  variant: AttentionVariant;
  /** Threads per workgroup: 8 (one subgroup) for `subgroup`; a multiple of 8 for `workgroup`. */
  wg: number;
  /**
   * Own rows (queries, or keys in dK/dV) per thread, each an independent online softmax that
   * shares every broadcast key: FLOPs per broadcast, the cost that dominates the subgroup variant
   * (lavapipe broadcasts each component with a loop over the lanes). 1 for `workgroup`.
   */
  rows: number;
  /** Whether q and k come rotated by RoPE (the backward then rotates dq, dk back at the store). */
  rope: boolean;
}

/** Components per vector register: vec4 when Dh allows it. */
function vectorWidth(dh: number): 1 | 4 {
  return dh % 4 === 0 ? 4 : 1;
}

/** Largest head dim of the kernels: rows live in registers, and every loop over Dh is unrolled. */
export const MAX_ATTENTION_HEAD_DIM = 256;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

// Pairwise combination of terms (a balanced tree, for short dependency chains).
function tree(terms: string[], op: (a: string, b: string) => string): string {
  while (terms.length > 1) {
    const next: string[] = [];
    for (let i = 0; i < terms.length; i += 2) {
      next.push(i + 1 < terms.length ? op(terms[i], terms[i + 1]) : terms[i]);
    }
    terms = next;
  }
  return terms[0];
}

// Rows of one broadcast block: the subgroup size of llvmpipe.
const STEP = 8;

// A score that never wins a max and whose exp underflows to 0, without inf arithmetic.
const MASKED = "-1.0e30";

/**
 * Builds one kernel of a config: register names, the block loop and tile access of the variant,
 * and the own rows of each thread (row r of thread `lane` is `own0 + r * threads + lane`, its
 * registers carry the suffix `_r`).
 */
class Gen {
  readonly w: 1 | 4;
  readonly dv: number;
  readonly vt: "vec4f" | "f32";
  readonly sg: boolean;
  readonly lines: string[] = [];
  readonly shared: string[] = [];

  constructor(readonly cfg: AttentionKernelConfig) {
    this.w = vectorWidth(cfg.dh);
    this.dv = cfg.dh / this.w;
    this.vt = this.w === 4 ? "vec4f" : "f32";
    this.sg = cfg.variant === "subgroup";
  }

  get own(): number[] {
    return range(this.cfg.rows);
  }

  /** The vector components c of one row. */
  get comps(): number[] {
    return range(this.dv);
  }

  /** Rows per step: a broadcast block of 8 (subgroup), or one row of a tile per loop trip. */
  get n(): number {
    return this.sg ? STEP : 1;
  }

  e(s: string): void {
    this.lines.push("  " + s);
  }

  splat(x: string): string {
    return this.w === 4 ? `vec4f(${x})` : x;
  }

  /** `let name = Σ_c a(c)·b(c)` over the head dim, as one FMA chain and a horizontal sum. */
  dot(name: string, a: (c: number) => string, b: (c: number) => string): void {
    const acc = `${name}_v`;
    this.e(`var ${acc} = ${a(0)} * ${b(0)};`);
    for (let c = 1; c < this.dv; c++) this.e(`${acc} = fma(${a(c)}, ${b(c)}, ${acc});`);
    this.e(
      `let ${name} = ${this.w === 4 ? `(${acc}.x + ${acc}.y) + (${acc}.z + ${acc}.w)` : acc};`,
    );
  }

  /** Index of vector 0 of row t of head h in a [B, T, H, Dh] tensor. */
  row(t: string): string {
    return `((b * T + ${t}) * H + h) * ${this.dv}u`;
  }

  /** Loads row `base` of `src` into registers `${reg}_c` (times `scale`). */
  load(reg: string, src: string, base: string, scale = ""): void {
    for (const c of this.comps) this.e(`let ${reg}_${c} = ${src}[${base} + ${c}u]${scale};`);
  }

  /** Declares `var ${reg}_c` = 0 for every component. */
  zeros(reg: string): void {
    for (const c of this.comps) this.e(`var ${reg}_${c} = ${this.splat("0.0")};`);
  }

  /** Puts this thread's row `base` of `src` into tile `name` (registers or workgroup memory). */
  tileRow(name: string, src: string, base: string, scale = ""): void {
    if (this.sg) {
      this.load(`${name}l`, src, base, scale);
      return;
    }
    this.shared.push(`var<workgroup> ${name}s: array<${this.vt}, ${this.cfg.wg * this.dv}>;`);
    for (const c of this.comps) {
      this.e(`${name}s[lane * ${this.dv}u + ${c}u] = ${src}[${base} + ${c}u]${scale};`);
    }
  }

  /** As {@link tileRow} for one f32 per row. */
  tileScalar(name: string, expr: string): void {
    if (this.sg) {
      this.e(`let ${name}l = ${expr};`);
      return;
    }
    this.shared.push(`var<workgroup> ${name}s: array<f32, ${this.cfg.wg}>;`);
    this.e(`${name}s[lane] = ${expr};`);
  }

  /** Vector c of row k of the current step of tile `name`. */
  at(name: string, k: number, c: number): string {
    return this.sg
      ? `subgroupBroadcast(${name}l_${c}, ${k}u)`
      : `${name}s[tj * ${this.dv}u + ${c}u]`;
  }

  /** The f32 of row k of the current step of scalar tile `name`. */
  atScalar(name: string, k: number): string {
    return this.sg ? `subgroupBroadcast(${name}l, ${k}u)` : `${name}s[tj]`;
  }

  /**
   * Binds row k of the current step of tile `name` to `let ${reg}_c` (one broadcast per
   * component, shared by all own rows).
   */
  fetch(reg: string, name: string, k: number): void {
    for (const c of this.comps) this.e(`let ${reg}_${c} = ${this.at(name, k, c)};`);
  }

  /**
   * The loop over blocks of rows from block `firstBlock` to row `last` (uniform over the
   * workgroup): per block, `load(r)` puts row `r` of this thread into the tile, then `step(r0)`
   * runs over the block's rows r0 + k, k < {@link n}: once per block of 8 in the subgroup variant
   * (unrolled, lanes are constants of the broadcasts), once per row of the tile in the workgroup
   * variant (a loop, which keeps the shader small: GPU compilers unroll what pays).
   */
  blocks(firstBlock: string, last: string, load: (r: string) => void, step: (r0: string) => void) {
    const B = this.sg ? STEP : this.cfg.wg;
    this.e(`for (var blk = ${firstBlock}; blk <= ${last} / ${B}u; blk++) {`);
    this.e(`let t0 = blk * ${B}u;`);
    this.e(`let tr = min(t0 + lane, T - 1u);`);
    load("tr");
    if (this.sg) {
      step("t0");
    } else {
      this.e(`workgroupBarrier();`);
      this.e(`let rows = min(${B}u, ${last} - t0 + 1u);`);
      this.e(`for (var tj = 0u; tj < rows; tj++) {`);
      step("(t0 + tj)");
      this.e(`}`);
      this.e(`workgroupBarrier();`);
    }
    this.e(`}`);
  }

  /**
   * Stores registers `${reg}_c` (a row at vector index `base`) into `dst`, rotated back by RoPE
   * at position `pos` when the config has RoPE (the transpose of the forward rotation).
   */
  storeRow(dst: string, reg: string, base: string, pos: string | null): void {
    const { w } = this;
    if (pos === null || !this.cfg.rope) {
      for (const c of this.comps) this.e(`${dst}[${base} + ${c}u] = ${reg}_${c};`);
      return;
    }
    const half = this.cfg.dh / 2;
    const comp = (d: number) => (w === 4 ? `${reg}_${d >> 2}[${d & 3}]` : `${reg}_${d}`);
    const y = (d: number) => `${reg}_y${d}`;
    this.e(`let ${reg}_pos = f32(${pos});`);
    for (let d = 0; d < half; d++) {
      this.e(`let ${reg}_sc${d} = sincos(${reg}_pos * u_freqs(${d}u));`);
      this.e(`let ${reg}_c${d} = ${reg}_sc${d}.y;`);
      this.e(`let ${reg}_s${d} = ${reg}_sc${d}.x;`);
      this.e(`let ${y(d)} = ${comp(d)} * ${reg}_c${d} + ${comp(d + half)} * ${reg}_s${d};`);
      this.e(`let ${y(d + half)} = ${comp(d + half)} * ${reg}_c${d} - ${comp(d)} * ${reg}_s${d};`);
    }
    for (const c of this.comps) {
      const v = w === 4 ? `vec4f(${range(4).map((e) => y(4 * c + e)).join(", ")})` : y(c);
      this.e(`${dst}[${base} + ${c}u] = ${v};`);
    }
  }

  /** Common lets: T, H, b, h, lane, own0 and per own row r: own_r, oc_r (clamped), lrow. */
  preamble(out: string): void {
    const { wg, rows } = this.cfg;
    this.e(`// T goes through arrayLength so that no loop bound is a pure uniform expression`);
    this.e(`// (lavapipe would re-specialize the shader per value; see ops/matmul_wgsl.ts).`);
    this.e(`let T = select(u.T, 0u, arrayLength(&${out}) == 0u);`);
    this.e(`let H = u.H;`);
    this.e(`let b = wid.z;`);
    this.e(`let h = wid.y;`);
    this.e(`let lane = ${this.sg ? "sgl" : "lid.x"};`);
    this.e(`let own0 = wid.x * ${wg * rows}u;`);
    for (const r of this.own) {
      this.e(`let own_${r} = own0 + ${r * wg}u + lane;`);
      this.e(`let oc_${r} = min(own_${r}, T - 1u);`);
    }
    this.e(`let lrow = (b * H + h) * T;`);
  }

  kernel(
    name: string,
    inputs: Record<string, "f32" | "vec4f">,
    outputs: Record<string, "f32" | "vec4f">,
  ) {
    const { cfg } = this;
    return defineKernel({
      name: `${name}_${this.sg ? "sg" : "wg"}`,
      inputs,
      outputs,
      uniforms: {
        T: "u32",
        H: "u32",
        scale: "f32",
        // RoPE frequencies (unused without RoPE; WGSL has no empty arrays).
        freqs: ["f32", Math.max(1, Math.floor(cfg.dh / 2))],
      },
      grid: {
        workgroupSize: [cfg.wg],
        builtins: this.sg
          ? { wid: "workgroup_id", sgl: "subgroup_invocation_id" }
          : { wid: "workgroup_id", lid: "local_invocation_id" },
      },
      helpers: [...this.shared, ...(cfg.rope ? [SINCOS_WGSL] : [])].join("\n"),
      body: this.lines.join("\n"),
    });
  }
}

function checkConfig(cfg: AttentionKernelConfig): void {
  const ok = Number.isInteger(cfg.dh) && cfg.dh >= 1 && Number.isInteger(cfg.rows) &&
    (cfg.variant === "subgroup"
      ? cfg.wg === STEP && cfg.rows >= 1
      : cfg.wg >= STEP && cfg.wg % STEP === 0 && cfg.rows === 1) &&
    (!cfg.rope || cfg.dh % 2 === 0);
  if (!ok) throw new Error(`flash attention: bad kernel config ${JSON.stringify(cfg)}`);
}

/** Workgroups of every attention kernel: [ceil(T / rows per workgroup), H, B]. */
export function attentionWorkgroups(
  cfg: AttentionKernelConfig,
  b: number,
  t: number,
  h: number,
): [number, number, number] {
  return [Math.ceil(t / (cfg.wg * cfg.rows)), h, b];
}

/**
 * Forward: inputs q, k (RoPE already applied when `rope`), v; outputs o and lse = m + log(l) per
 * query row. One thread per query row (or `rows` of them); an online softmax over blocks of keys
 * 0..i, rescaling the running output once per step.
 */
export const attentionForwardKernel = kernelFamily((cfg: AttentionKernelConfig) => {
  checkConfig(cfg);
  const g = new Gen(cfg);
  const { own, comps } = g;
  const ks = range(g.n);
  g.preamble("o");
  for (const r of own) {
    g.load(`q${r}`, "q", g.row(`oc_${r}`), " * u.scale");
    g.zeros(`o${r}`);
    g.e(`var m_${r} = ${MASKED};`);
    g.e(`var l_${r} = 0.0;`);
  }
  g.e(`let last = min(own0 + ${cfg.wg * cfg.rows - 1}u, T - 1u);`);
  g.blocks("0u", "last", (t) => {
    g.e(`let kb = ${g.row(t)};`);
    g.tileRow("k", "k", "kb");
    g.tileRow("v", "v", "kb");
  }, (j0) => {
    for (const k of ks) {
      g.fetch(`kk${k}`, "k", k);
      for (const r of own) {
        g.dot(`d${r}_${k}`, (c) => `q${r}_${c}`, (c) => `kk${k}_${c}`);
        g.e(`let s${r}_${k} = select(${MASKED}, d${r}_${k}, ${j0} + ${k}u <= oc_${r});`);
      }
    }
    for (const r of own) {
      const mx = tree(ks.map((k) => `s${r}_${k}`), (a, b) => `max(${a}, ${b})`);
      g.e(`let mx${r} = max(m_${r}, ${mx});`);
      g.e(`let al${r} = exp(m_${r} - mx${r});`);
      for (const k of ks) g.e(`let p${r}_${k} = exp(s${r}_${k} - mx${r});`);
      const sum = tree(ks.map((k) => `p${r}_${k}`), (a, b) => `(${a} + ${b})`);
      g.e(`l_${r} = fma(l_${r}, al${r}, ${sum});`);
      g.e(`m_${r} = mx${r};`);
      for (const c of comps) g.e(`o${r}_${c} = o${r}_${c} * al${r};`);
    }
    for (const k of ks) {
      g.fetch(`vv${k}`, "v", k);
      for (const r of own) {
        for (const c of comps) {
          g.e(`o${r}_${c} = fma(${g.splat(`p${r}_${k}`)}, vv${k}_${c}, o${r}_${c});`);
        }
      }
    }
  });
  for (const r of own) {
    g.e(`if (own_${r} < T) {`);
    g.e(`let inv${r} = 1.0 / l_${r};`);
    g.e(`let ob${r} = ${g.row(`own_${r}`)};`);
    for (const c of comps) g.e(`o[ob${r} + ${c}u] = o${r}_${c} * inv${r};`);
    g.e(`lse[lrow + own_${r}] = m_${r} + log(l_${r});`);
    g.e(`}`);
  }
  return g.kernel("attention_forward", { q: g.vt, k: g.vt, v: g.vt }, { o: g.vt, lse: "f32" });
});

/**
 * Backward, queries: dq_i = scale · Σ_j P_ij (dP_ij - D_i) k_j with P recomputed from lse and
 * dP_ij = dO_i · v_j; also stores D_i = dO_i · O_i for {@link attentionBackwardKVKernel}. dq is
 * rotated back by RoPE when `rope`.
 */
export const attentionBackwardQKernel = kernelFamily((cfg: AttentionKernelConfig) => {
  checkConfig(cfg);
  const g = new Gen(cfg);
  const { own, comps } = g;
  g.preamble("dq");
  for (const r of own) {
    g.e(`let qb${r} = ${g.row(`oc_${r}`)};`);
    g.load(`q${r}`, "q", `qb${r}`, " * u.scale");
    g.load(`g${r}`, "dout", `qb${r}`);
    g.dot(`di${r}`, (c) => `g${r}_${c}`, (c) => `o[qb${r} + ${c}u]`);
    g.e(`let li${r} = lse[lrow + oc_${r}];`);
    g.zeros(`dq${r}`);
  }
  g.e(`let last = min(own0 + ${cfg.wg * cfg.rows - 1}u, T - 1u);`);
  g.blocks("0u", "last", (t) => {
    g.e(`let kb = ${g.row(t)};`);
    g.tileRow("k", "k", "kb");
    g.tileRow("v", "v", "kb");
  }, (j0) => {
    for (let k = 0; k < g.n; k++) {
      g.fetch(`kk${k}`, "k", k);
      g.fetch(`vv${k}`, "v", k);
      for (const r of own) {
        g.dot(`s${r}_${k}`, (c) => `q${r}_${c}`, (c) => `kk${k}_${c}`);
        g.e(`let p${r}_${k} = select(0.0, exp(s${r}_${k} - li${r}), ${j0} + ${k}u <= oc_${r});`);
        g.dot(`dp${r}_${k}`, (c) => `g${r}_${c}`, (c) => `vv${k}_${c}`);
        g.e(`let ds${r}_${k} = p${r}_${k} * (dp${r}_${k} - di${r});`);
        for (const c of comps) {
          g.e(`dq${r}_${c} = fma(${g.splat(`ds${r}_${k}`)}, kk${k}_${c}, dq${r}_${c});`);
        }
      }
    }
  });
  for (const r of own) {
    g.e(`if (own_${r} < T) {`);
    g.e(`dd[lrow + own_${r}] = di${r};`);
    for (const c of comps) g.e(`let dqs${r}_${c} = dq${r}_${c} * u.scale;`);
    g.storeRow("dq", `dqs${r}`, g.row(`own_${r}`), `own_${r}`);
    g.e(`}`);
  }
  return g.kernel(
    "attention_backward_q",
    { q: g.vt, k: g.vt, v: g.vt, o: g.vt, dout: g.vt, lse: "f32" },
    { dq: g.vt, dd: "f32" },
  );
});

/**
 * Backward, keys and values: one thread per key row j (or `rows` of them) over the queries i >= j:
 * dv_j = Σ_i P_ij dO_i and dk_j = scale · Σ_i P_ij (dP_ij - D_i) q_i, P recomputed from lse; dk is
 * rotated back by RoPE when `rope`.
 */
export const attentionBackwardKVKernel = kernelFamily((cfg: AttentionKernelConfig) => {
  checkConfig(cfg);
  const g = new Gen(cfg);
  const { own, comps } = g;
  g.preamble("dk");
  for (const r of own) {
    g.e(`let kb${r} = ${g.row(`oc_${r}`)};`);
    g.load(`k${r}`, "k", `kb${r}`);
    g.load(`v${r}`, "v", `kb${r}`);
    g.zeros(`dk${r}`);
    g.zeros(`dv${r}`);
  }
  g.e(`let last = T - 1u;`);
  // Queries before own0 see none of this workgroup's keys.
  g.blocks(`own0 / ${g.sg ? STEP : cfg.wg}u`, "last", (t) => {
    g.e(`let qb = ${g.row(t)};`);
    g.tileRow("q", "q", "qb", " * u.scale");
    g.tileRow("g", "dout", "qb");
    g.tileScalar("ls", `lse[lrow + ${t}]`);
    g.tileScalar("dd", `dd[lrow + ${t}]`);
  }, (i0) => {
    for (let k = 0; k < g.n; k++) {
      g.fetch(`qq${k}`, "q", k);
      g.fetch(`gg${k}`, "g", k);
      g.e(`let li${k} = ${g.atScalar("ls", k)};`);
      g.e(`let di${k} = ${g.atScalar("dd", k)};`);
      g.e(`let i${k} = ${i0} + ${k}u;`);
      for (const r of own) {
        g.dot(`s${r}_${k}`, (c) => `qq${k}_${c}`, (c) => `k${r}_${c}`);
        g.e(
          `let p${r}_${k} = select(0.0, exp(s${r}_${k} - li${k}), i${k} >= oc_${r} && i${k} < T);`,
        );
        g.dot(`dp${r}_${k}`, (c) => `gg${k}_${c}`, (c) => `v${r}_${c}`);
        g.e(`let ds${r}_${k} = p${r}_${k} * (dp${r}_${k} - di${k});`);
        for (const c of comps) {
          g.e(`dv${r}_${c} = fma(${g.splat(`p${r}_${k}`)}, gg${k}_${c}, dv${r}_${c});`);
          g.e(`dk${r}_${c} = fma(${g.splat(`ds${r}_${k}`)}, qq${k}_${c}, dk${r}_${c});`);
        }
      }
    }
  });
  for (const r of own) {
    g.e(`if (own_${r} < T) {`);
    g.e(`let ob${r} = ${g.row(`own_${r}`)};`);
    g.storeRow("dv", `dv${r}`, `ob${r}`, null);
    g.storeRow("dk", `dk${r}`, `ob${r}`, `own_${r}`);
    g.e(`}`);
  }
  return g.kernel(
    "attention_backward_kv",
    { q: g.vt, k: g.vt, v: g.vt, dout: g.vt, lse: "f32", dd: "f32" },
    { dk: g.vt, dv: g.vt },
  );
});

/**
 * RoPE (rotate-half) of q and k [B, T, H, Dh] in one pass: one invocation per pair
 * (x[d], x[d + Dh/2]) of one row of both, position t of the row.
 */
export const ropeQKKernel = defineKernel({
  name: "rope_qk",
  inputs: { q: "f32", k: "f32" },
  outputs: { qr: "f32", kr: "f32" },
  uniforms: { T: "u32", H: "u32", half: "u32", freqs: ["f32", MAX_ATTENTION_HEAD_DIM / 2] },
  grid: "flat",
  helpers: SINCOS_WGSL,
  body: `  let row = i / u.half;
  let j = i - row * u.half;
  let sc = sincos(f32((row / u.H) % u.T) * u_freqs(j));
  let c = sc.y;
  let s = sc.x;
  let a = row * 2u * u.half + j;
  let b = a + u.half;
  let q1 = load_q(a);
  let q2 = load_q(b);
  store_qr(a, q1 * c - q2 * s);
  store_qr(b, q2 * c + q1 * s);
  let k1 = load_k(a);
  let k2 = load_k(b);
  store_kr(a, k1 * c - k2 * s);
  store_kr(b, k2 * c + k1 * s);`,
});
