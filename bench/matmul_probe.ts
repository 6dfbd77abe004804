/**
 * Standalone raw-WebGPU probe for the matmul kernel family in `ops/matmul_wgsl.ts`.
 *
 * Uses `navigator.gpu` directly (no other project files). Two modes:
 *
 *   deno run -A bench/matmul_probe.ts [--configs=a,b] [--shapes=1024,2048x512x1376]
 *        [--layouts=NN,NT,TN] [--runs=5]
 *     compiles each candidate config, checks it against a float64 CPU reference (sampled outputs
 *     for big shapes) and prints median GFLOP/s per shape and layout.
 *
 *   deno run -A bench/matmul_probe.ts --check [--seed=1] [--cases=300] [--variants=a,b]
 *     correctness sweep over ragged, skinny and batched shapes in all layouts, every vec4 flag
 *     combination, the table's configs, each kernel family forced, and textured operands.
 *
 * Candidate names: see {@link parseCandidate}, plus `table` (the "cpu" table without subgroups)
 * and `table-sg` (with this device's subgroups). Shapes are `S` (S³), `MxKxN` or `BxMxKxN`
 * (batched), optionally with a layout suffix (`:NT`).
 *
 * All configs of one shape are compiled, checked and warmed first, then timed in alternating
 * rounds, so a busy machine slows them alike; the ratio to the first config is printed. Rounds
 * during which other processes used > 0.15 cores (from /proc/stat) are counted as contended and
 * cells where most were are starred in the summary table.
 *
 * Always run with DENO_WEBGPU_BACKEND=vulkan XDG_RUNTIME_DIR=<0700 dir> on the CPU machines.
 *
 * @module
 */
import {
  chooseMatmulConfig,
  type MatmulFamily,
  matmulShader,
  type MatmulShaderConfig,
  matmulTexLayout,
  matmulWorkgroups,
} from "../ops/matmul_wgsl.ts";

// ---------------------------------------------------------------------------------------------
// CLI

const argv = new Map<string, string>();
for (const a of Deno.args) {
  const m = /^--([^=]+)(?:=(.*))?$/.exec(a);
  if (m) argv.set(m[1], m[2] ?? "true");
}

// ---------------------------------------------------------------------------------------------
// Device

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const limits: Record<string, number> = {};
for (const k in adapter.limits) {
  const v = (adapter.limits as unknown as Record<string, unknown>)[k];
  if (typeof v === "number") limits[k] = v;
}
// Subgroups (for the subgroupA kernel) when the adapter can provide them; lavapipe does without
// advertising it, so ask and fall back on refusal. The kernel assumes a fixed subgroup size of 8.
let device: GPUDevice;
let subgroupSize: number | undefined;
try {
  device = await adapter.requestDevice({
    requiredFeatures: ["subgroups" as GPUFeatureName],
    requiredLimits: limits,
  });
  const info = adapter.info as GPUAdapterInfo & {
    subgroupMinSize?: number;
    subgroupMaxSize?: number;
  };
  if (info.subgroupMinSize && info.subgroupMinSize === info.subgroupMaxSize) {
    subgroupSize = info.subgroupMinSize;
  }
} catch {
  device = await adapter.requestDevice({ requiredLimits: limits });
}
device.addEventListener("uncapturederror", (ev) => {
  console.error("WebGPU error:", (ev as GPUUncapturedErrorEvent).error.message);
});

// ---------------------------------------------------------------------------------------------
// Helpers

/** Small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pad16 = (bytes: number) => Math.max(16, Math.ceil(bytes / 16) * 16);

function makeBuffer(data: Float32Array, extraUsage = 0): GPUBuffer {
  const size = pad16(data.byteLength);
  const buf = device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | extraUsage,
  });
  const padded = new Float32Array(size / 4);
  padded.set(data);
  device.queue.writeBuffer(buf, 0, padded);
  return buf;
}

async function readBuffer(buf: GPUBuffer): Promise<Float32Array> {
  const staging = device.createBuffer({
    size: buf.size,
    usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, staging, 0, buf.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(staging.getMappedRange().slice(0));
  staging.unmap();
  staging.destroy();
  return out;
}

const pipelineCache = new Map<string, GPUComputePipeline>();
function pipelineFor(cfg: MatmulShaderConfig): { pipe: GPUComputePipeline; fresh: boolean } {
  const src = matmulShader(cfg);
  let pipe = pipelineCache.get(src);
  if (pipe) return { pipe, fresh: false };
  const module = device.createShaderModule({ code: src });
  pipe = device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
  pipelineCache.set(src, pipe);
  return { pipe, fresh: true };
}

interface Problem {
  M: number;
  N: number;
  K: number;
  batch: number;
  transA: boolean;
  transB: boolean;
  broadcastA: boolean;
  broadcastB: boolean;
}

interface Operands {
  a: Float32Array;
  b: Float32Array;
  A: GPUBuffer;
  B: GPUBuffer;
  C: GPUBuffer;
  U: GPUBuffer;
  pr: Problem;
  /** Operands copied into rgba32float textures (made on first use), with their row shifts. */
  tex?: { A: GPUTexture | null; B: GPUTexture | null; U: GPUBuffer };
  strideA: number;
  strideB: number;
  strideC: number;
  cNumel: number;
}

const SENTINEL = 12345.5;

function makeOperands(pr: Problem, rand: () => number): Operands {
  const { M, N, K, batch } = pr;
  const strideA = pr.broadcastA ? 0 : M * K;
  const strideB = pr.broadcastB ? 0 : K * N;
  const strideC = M * N;
  const a = new Float32Array((pr.broadcastA ? 1 : batch) * M * K).map(() => rand() * 2 - 1);
  const b = new Float32Array((pr.broadcastB ? 1 : batch) * K * N).map(() => rand() * 2 - 1);
  const cNumel = batch * M * N;
  const c0 = new Float32Array(pad16(cNumel * 4) / 4).fill(SENTINEL);
  const u = new Uint32Array([M, N, K, batch, strideA, strideB, strideC, 0]);
  const U = device.createBuffer({
    size: 32,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(U, 0, u);
  return {
    a,
    b,
    A: makeBuffer(a),
    B: makeBuffer(b),
    C: makeBuffer(c0),
    U,
    pr,
    strideA,
    strideB,
    strideC,
    cNumel,
  };
}

function destroyOperands(o: Operands): void {
  o.A.destroy();
  o.B.destroy();
  o.C.destroy();
  o.U.destroy();
  o.tex?.A?.destroy();
  o.tex?.B?.destroy();
  o.tex?.U.destroy();
}

/** The operand (rows x rowLen f32 in `buf`) as a texture laid out by matmulTexLayout. */
function toTexture(buf: GPUBuffer, rows: number, rowLen: number): [GPUTexture, number] {
  const lay = matmulTexLayout(rows, rowLen, device.limits.maxTextureDimension2D);
  if (!lay) throw new Error(`no texture layout for ${rows}x${rowLen}`);
  const texture = device.createTexture({
    size: [lay.width, lay.height],
    format: "rgba32float",
    usage: GPUTextureUsage.COPY_DST | GPUTextureUsage.TEXTURE_BINDING,
  });
  const enc = device.createCommandEncoder();
  const g = 2 ** lay.shift;
  const full = Math.floor(rows / g);
  if (full > 0) {
    enc.copyBufferToTexture({ buffer: buf, bytesPerRow: lay.bytesPerRow, rowsPerImage: full }, {
      texture,
    }, [lay.width, full]);
  }
  const rest = rows - full * g;
  if (rest > 0) {
    enc.copyBufferToTexture(
      { buffer: buf, offset: full * lay.bytesPerRow },
      { texture, origin: [0, full] },
      [(rest * rowLen) / 4, 1],
    );
  }
  device.queue.submit([enc.finish()]);
  return [texture, lay.shift];
}

function textures(o: Operands): NonNullable<Operands["tex"]> {
  if (o.tex) return o.tex;
  const { M, N, K, batch } = o.pr;
  const nA = o.pr.broadcastA ? 1 : batch, nB = o.pr.broadcastB ? 1 : batch;
  const [A, shiftA] = (o.pr.transA ? M : K) % 4 === 0
    ? toTexture(o.A, nA * (o.pr.transA ? K : M), o.pr.transA ? M : K)
    : [null, 0];
  const [B, shiftB] = (o.pr.transB ? K : N) % 4 === 0
    ? toTexture(o.B, nB * (o.pr.transB ? N : K), o.pr.transB ? K : N)
    : [null, 0];
  const U = device.createBuffer({
    size: 48,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(
    U,
    0,
    new Uint32Array([M, N, K, batch, o.strideA, o.strideB, o.strideC, shiftA, shiftB, 0, 0, 0]),
  );
  o.tex = { A, B, U };
  return o.tex;
}

function bindGroup(pipe: GPUComputePipeline, o: Operands, cfg: MatmulShaderConfig): GPUBindGroup {
  if (cfg.texA || cfg.texB) {
    const t = textures(o);
    const entries: GPUBindGroupEntry[] = [];
    if (!cfg.texA) entries.push({ binding: 0, resource: { buffer: o.A } });
    if (!cfg.texB) entries.push({ binding: entries.length, resource: { buffer: o.B } });
    entries.push({ binding: entries.length, resource: { buffer: o.C } });
    entries.push({ binding: entries.length, resource: { buffer: t.U } });
    if (cfg.texA) entries.push({ binding: entries.length, resource: t.A!.createView() });
    if (cfg.texB) entries.push({ binding: entries.length, resource: t.B!.createView() });
    return device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
  }
  return device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: [
      { binding: 0, resource: { buffer: o.A } },
      { binding: 1, resource: { buffer: o.B } },
      { binding: 2, resource: { buffer: o.C } },
      { binding: 3, resource: { buffer: o.U } },
    ],
  });
}

function encode(
  pipe: GPUComputePipeline,
  bg: GPUBindGroup,
  wg: [number, number, number],
  times: number,
): GPUCommandBuffer {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, bg);
  for (let i = 0; i < times; i++) pass.dispatchWorkgroups(wg[0], wg[1], wg[2]);
  pass.end();
  return enc.finish();
}

/** f64 reference of one output element, plus sum |a_k b_k| for a relative error scale. */
function refAt(pr: Problem, o: Operands, bi: number, m: number, n: number): [number, number] {
  const { M, N, K } = pr;
  const aO = bi * o.strideA, bO = bi * o.strideB;
  let s = 0, sa = 0;
  for (let k = 0; k < K; k++) {
    const av = pr.transA ? o.a[aO + k * M + m] : o.a[aO + m * K + k];
    const bv = pr.transB ? o.b[bO + n * K + k] : o.b[bO + k * N + n];
    s += av * bv;
    sa += Math.abs(av * bv);
  }
  return [s, sa];
}

/** Max relative error (|c-ref| / sum|a_k b_k|) over all or `samples` random outputs; NaN if bad. */
function verify(
  pr: Problem,
  o: Operands,
  c: Float32Array,
  samples: number,
  rand: () => number,
): { maxRel: number; bad: string | null } {
  const { M, N, batch } = pr;
  let maxRel = 0;
  let bad: string | null = null;
  const check = (bi: number, m: number, n: number) => {
    const [r, sa] = refAt(pr, o, bi, m, n);
    const got = c[bi * o.strideC + m * N + n];
    const rel = Math.abs(got - r) / Math.max(sa, 1e-30);
    if (!(rel <= 2e-5) && bad === null) bad = `C[${bi},${m},${n}] = ${got}, want ${r}`;
    if (!(rel <= maxRel)) maxRel = rel;
  };
  if (samples <= 0 || samples >= batch * M * N) {
    for (let bi = 0; bi < batch; bi++) {
      for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) check(bi, m, n);
    }
  } else {
    // Always include the corners, then random points.
    for (const [m, n] of [[0, 0], [M - 1, N - 1], [0, N - 1], [M - 1, 0]]) check(batch - 1, m, n);
    for (let s = 0; s < samples; s++) {
      check(
        Math.floor(rand() * batch),
        Math.floor(rand() * M),
        Math.floor(rand() * N),
      );
    }
  }
  for (let i = o.cNumel; i < c.length; i++) {
    if (c[i] !== SENTINEL && bad === null) bad = `wrote past the end of C at ${i}`;
  }
  return { maxRel, bad };
}

const layoutName = (ta: boolean, tb: boolean) => (ta ? "T" : "N") + (tb ? "T" : "N");

/** Complete a base config for a layout and shape (vec4 flags from the shape). */
function withShape(
  base: Partial<MatmulShaderConfig>,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
): MatmulShaderConfig {
  const vec4A = (transA ? M : K) % 4 === 0 && (!transA || (base.tileM ?? 16) % 4 === 0);
  const vec4B = (transB ? K : N) % 4 === 0;
  const vec4C = N % 4 === 0;
  return {
    tileM: 16,
    tileN: 16,
    wgX: 8,
    wgY: 2,
    kind: "reg",
    ...base,
    transA,
    transB,
    vec4A: base.vec4A === false ? false : vec4A,
    vec4B: base.vec4B === false ? false : vec4B,
    vec4C: base.vec4C === false ? false : vec4C,
  };
}

// ---------------------------------------------------------------------------------------------
// Candidates for the benchmark

/**
 * Candidates by name: `sgA32x16` (A shared across the subgroup, 32x16 per invocation, wg 8x1),
 * `sgB8x32` (B shared, wg 8x1 along M), `r16x16_wg8x2` (no subgroup, wg 8x2 by default); a suffix
 * `_tA` / `_tB` reads that operand through a texture.
 */
function parseCandidate(name: string): Partial<MatmulShaderConfig> | undefined {
  const m = /^(r|sgA|sgB)(\d+)x(\d+)(?:_wg(\d+)x(\d+))?(_tA)?(_tB)?$/.exec(name);
  if (!m) return undefined;
  const [tileM, tileN] = [Number(m[2]), Number(m[3])];
  const wg = m[4] ? [Number(m[4]), Number(m[5])] : m[1] === "r" ? [8, 2] : [8, 1];
  return {
    tileM,
    tileN,
    wgX: wg[0],
    wgY: wg[1],
    subgroupA: m[1] === "sgA",
    subgroupB: m[1] === "sgB",
    texA: !!m[6],
    texB: !!m[7],
  };
}

/** `S` (S³), `MxKxN` or `BxMxKxN` (batched) as [batch, M, K, N]. */
function parseShape(s: string): [number, number, number, number] {
  const parts = s.split("x").map(Number);
  if (parts.length === 1) return [1, parts[0], parts[0], parts[0]];
  if (parts.length === 3) return [1, parts[0], parts[1], parts[2]];
  if (parts.length === 4) return [parts[0], parts[1], parts[2], parts[3]];
  throw new Error(`bad shape ${s}`);
}

/** CPU time of this process and of the whole machine, in clock ticks (Linux /proc). */
function cpuSample(): { self: number; busy: number; total: number } {
  try {
    const st = Deno.readTextFileSync("/proc/self/stat");
    const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
    const self = Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15)
    const cpu = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1)
      .map(Number);
    const total = cpu.reduce((x, y) => x + y, 0);
    const idle = cpu[3] + (cpu[4] ?? 0);
    return { self, busy: total - idle, total };
  } catch {
    return { self: 0, busy: 0, total: 0 };
  }
}

/** Average number of cores used by other processes between two samples. */
function otherCores(a: ReturnType<typeof cpuSample>, b: ReturnType<typeof cpuSample>): number {
  const ncpu = navigator.hardwareConcurrency || 1;
  const dt = (b.total - a.total) / ncpu; // elapsed ticks per core
  if (dt <= 0) return 0;
  return Math.max(0, (b.busy - a.busy) - (b.self - a.self)) / dt;
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

async function bench(): Promise<void> {
  const cfgNames = (argv.get("configs") ?? "table-sg,sgA16x16,r16x16").split(",");
  // Shapes are given as M x K x N (the training shape 2048x512x1376 is M=2048, K=512, N=1376).
  // A shape may carry a layout suffix (":NT") to run only that layout. "train" expands to the
  // three matmuls of one linear layer x[2048,512]·W[1376,512]ᵀ: forward y (NT), dX (NN), dW (TN).
  const TRAIN = "2048x512x1376:NT,2048x1376x512:NN,1376x2048x512:TN";
  const shapes = (argv.get("shapes") ?? `256,512,1024,2048,2048x512x1376,${TRAIN}`)
    .replace("train", TRAIN).split(",");
  const layouts = (argv.get("layouts") ?? "NN,NT,TN").split(",");
  const runs = Number(argv.get("runs") ?? 5);
  const targetFlops = Number(argv.get("flops") ?? 3e9);
  const rand = rng(42);
  const table: Record<string, Record<string, string>> = {};
  console.log(`device: ${adapter!.info.description || adapter!.info.vendor}; runs=${runs}`);
  for (const spec of shapes) {
    const [shape, only] = spec.split(":");
    const [batch, M, K, N] = parseShape(shape);
    for (const lay of only ? [only] : layouts) {
      const transA = lay[0] === "T", transB = lay[1] === "T";
      const pr: Problem = {
        M,
        N,
        K,
        batch,
        transA,
        transB,
        broadcastA: false,
        broadcastB: false,
      };
      const o = makeOperands(pr, rand);
      const flops = 2 * M * N * K * batch;
      // Compile, check and warm every config, then time them in alternating rounds so that a busy
      // machine slows all of them alike.
      const runsOf: {
        tag: string;
        go: (times: number) => GPUCommandBuffer;
        gf: number[];
        dirty: number;
        line: string;
        bad: string | null;
      }[] = [];
      for (const name of cfgNames) {
        const base = name.startsWith("table") ? {} : parseCandidate(name);
        if (!base) throw new Error(`unknown config ${name}`);
        const cfg = name === "table"
          ? chooseMatmulConfig(M, N, K, transA, transB, "cpu")
          : name === "table-sg"
          ? chooseMatmulConfig(M, N, K, transA, transB, "cpu", { subgroupSize })
          : withShape(base, M, N, K, transA, transB);
        const { pipe, fresh } = pipelineFor(cfg);
        const bg = bindGroup(pipe, o, cfg);
        const wg = matmulWorkgroups(cfg, M, N, batch);
        const t0 = performance.now();
        device.queue.submit([encode(pipe, bg, wg, 1)]);
        await device.queue.onSubmittedWorkDone();
        const first = performance.now() - t0;
        const c = await readBuffer(o.C);
        const samples = batch * M * N <= 256 * 256 ? 0 : 512;
        const { maxRel, bad } = verify(pr, o, c, samples, rand);
        if (bad) console.error(`  WRONG ${name} ${shape} ${lay}: ${bad}`);
        const tag = name.startsWith("table")
          ? `${name}(${
            cfg.subgroupA ? "sgA" : cfg.subgroupB ? "sgB" : "r"
          }${cfg.tileM}x${cfg.tileN})`
          : name;
        runsOf.push({
          tag,
          go: (times) => encode(pipe, bg, wg, times),
          gf: [],
          dirty: 0,
          bad,
          line: `first=${first.toFixed(0)}ms${fresh ? " (compile)" : ""}  maxrel=${
            maxRel.toExponential(1)
          }`,
        });
      }
      const times = Math.max(1, Math.min(64, Math.round(targetFlops / flops)));
      for (const r of runsOf) {
        device.queue.submit([r.go(times)]);
        await device.queue.onSubmittedWorkDone();
      }
      for (let round = 0; round < runs; round++) {
        for (const r of runsOf) {
          const c0 = cpuSample();
          const t0 = performance.now();
          device.queue.submit([r.go(times)]);
          await device.queue.onSubmittedWorkDone();
          r.gf.push((flops * times) / ((performance.now() - t0) * 1e6));
          if (otherCores(c0, cpuSample()) > 0.15) r.dirty++;
        }
      }
      const ref = median(runsOf[0].gf);
      for (const r of runsOf) {
        const med = median(r.gf);
        const line =
          `${r.tag.padEnd(26)} ${shape.padEnd(14)} ${lay}  ${med.toFixed(2).padStart(6)} GFLOP/s (${
            (med / ref).toFixed(2)
          }x)  [${Math.min(...r.gf).toFixed(2)}..${
            Math.max(...r.gf).toFixed(2)
          }] x${times}  ${r.line}` + (r.dirty ? `  (${r.dirty} contended runs)` : "") +
          (r.bad ? "  WRONG" : "");
        console.log(line);
        (table[r.tag] ??= {})[`${shape} ${lay}`] = r.bad
          ? "WRONG"
          : med.toFixed(1) + (r.dirty * 2 > runs ? "*" : "");
      }
      destroyOperands(o);
    }
  }
  // Summary table: configs x (shape layout)
  const cols = shapes.flatMap((spec) => {
    const [s, only] = spec.split(":");
    return (only ? [only] : layouts).map((l) => `${s} ${l}`);
  });
  console.log("\n| config | " + cols.join(" | ") + " |");
  console.log("|---|" + cols.map(() => "---").join("|") + "|");
  for (const [tag, r] of Object.entries(table)) {
    console.log(`| ${tag} | ` + cols.map((c) => r[c] ?? "–").join(" | ") + " |");
  }
}

// ---------------------------------------------------------------------------------------------
// Correctness sweep

async function check(): Promise<void> {
  const seed = Number(argv.get("seed") ?? 1);
  const nCases = Number(argv.get("cases") ?? 300);
  const rand = rng(seed);
  const ri = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const cases: Problem[] = [];
  const layouts: [boolean, boolean][] = [[false, false], [false, true], [true, false], [
    true,
    true,
  ]];
  // Fixed edge cases.
  const fixed: [number, number, number][] = [
    [1, 1, 1],
    [1, 37, 5],
    [1, 64, 64],
    [37, 1, 5],
    [5, 5, 1],
    [1376, 8, 3],
    [8, 1376, 3],
    [3, 1376, 8],
    [1376, 3, 8],
    [64, 64, 1],
    [17, 33, 65],
    [16, 16, 16],
    [128, 96, 40],
    [100, 8, 512],
    [4, 4, 4],
    [2, 3, 4],
  ];
  for (const [M, N, K] of fixed) {
    for (const [transA, transB] of layouts) {
      cases.push({ M, N, K, batch: 1, transA, transB, broadcastA: false, broadcastB: false });
    }
  }
  // Batched (attention-like) cases.
  for (const [transA, transB] of layouts) {
    cases.push({
      M: 24,
      N: 24,
      K: 64,
      batch: 6,
      transA,
      transB,
      broadcastA: false,
      broadcastB: false,
    });
    cases.push({
      M: 13,
      N: 20,
      K: 7,
      batch: 3,
      transA,
      transB,
      broadcastA: true,
      broadcastB: false,
    });
    cases.push({
      M: 9,
      N: 12,
      K: 16,
      batch: 4,
      transA,
      transB,
      broadcastA: false,
      broadcastB: true,
    });
  }
  // Random ragged.
  while (cases.length < nCases) {
    const [transA, transB] = layouts[ri(0, 3)];
    const batch = rand() < 0.25 ? ri(2, 4) : 1;
    const M = rand() < 0.5 ? 4 * ri(1, 17) : ri(1, 70);
    const N = rand() < 0.5 ? 4 * ri(1, 17) : ri(1, 70);
    const K = rand() < 0.5 ? 4 * ri(1, 17) : ri(1, 70);
    cases.push({
      M,
      N,
      K,
      batch,
      transA,
      transB,
      broadcastA: batch > 1 && rand() < 0.4,
      broadcastB: batch > 1 && rand() < 0.2,
    });
  }
  // Config variants checked per case.
  const table = (kernel: MatmulFamily, kind: "cpu" | "gpu" = "cpu") => (pr: Problem) =>
    chooseMatmulConfig(pr.M, pr.N, pr.K, pr.transA, pr.transB, kind, {
      subgroupSize,
      family: kernel,
    });
  const shaped = (base: Partial<MatmulShaderConfig>) => (pr: Problem) =>
    withShape(base, pr.M, pr.N, pr.K, pr.transA, pr.transB);
  const variants: [string, (pr: Problem) => MatmulShaderConfig][] = [
    // The table, and each family forced (each falls back down the table where it cannot apply,
    // e.g. subgroupB without vec4-able B or without subgroups of 8).
    ["table-cpu", table("auto")],
    ["table-gpu", table("auto", "gpu")],
    ["subgroupA", table("subgroupA")],
    ["register", table("register")],
    ["smem8x8", shaped({ kind: "smem", tileM: 8, tileN: 8, wgX: 16, wgY: 16 })],
    ["scalar16x16", shaped({ vec4A: false, vec4B: false, vec4C: false })],
    ["vec4-8x16", shaped({ tileM: 8, tileN: 16, wgX: 8, wgY: 8 })],
    ["tex16x16", shaped({ texA: true, texB: true })],
  ];
  const extra = argv.get("variants");
  const useVariants = extra ? variants.filter(([n]) => extra.split(",").includes(n)) : variants;
  let worst = 0, failures = 0, n = 0, sgRuns = 0;
  const t0 = performance.now();
  const perVariant = new Map<string, number>();
  for (const pr of cases) {
    const o = makeOperands(pr, rand);
    for (const [vname, mk] of useVariants) {
      const cfg = mk(pr);
      if (cfg.texA && !cfg.vec4A) cfg.texA = false;
      if (cfg.texB && !cfg.vec4B) cfg.texB = false;
      if (cfg.subgroupA || cfg.subgroupB) sgRuns++;
      const { pipe } = pipelineFor(cfg);
      // reset C to the sentinel
      device.queue.writeBuffer(o.C, 0, new Float32Array(o.C.size / 4).fill(SENTINEL));
      const bg = bindGroup(pipe, o, cfg);
      device.queue.submit([encode(pipe, bg, matmulWorkgroups(cfg, pr.M, pr.N, pr.batch), 1)]);
      const c = await readBuffer(o.C);
      const { maxRel, bad } = verify(pr, o, c, 0, rand);
      n++;
      worst = Math.max(worst, maxRel);
      perVariant.set(vname, Math.max(perVariant.get(vname) ?? 0, maxRel));
      if (bad) {
        failures++;
        console.error(
          `FAIL ${vname} ${layoutName(pr.transA, pr.transB)} M=${pr.M} N=${pr.N} K=${pr.K} ` +
            `batch=${pr.batch} bA=${pr.broadcastA} bB=${pr.broadcastB} ` +
            `cfg=${JSON.stringify(cfg)}: ${bad}`,
        );
      }
    }
    destroyOperands(o);
  }
  console.log(
    `check: ${cases.length} shapes x ${useVariants.length} variants = ${n} runs, ${failures} failures, ` +
      `max rel err ${worst.toExponential(2)}, ${pipelineCache.size} pipelines, ` +
      `${((performance.now() - t0) / 1000).toFixed(1)} s, ${sgRuns} subgroup-kernel runs ` +
      `(subgroup size ${subgroupSize ?? "n/a"})`,
  );
  for (const [v, e] of perVariant) {
    console.log(`  ${v.padEnd(12)} max rel err ${e.toExponential(2)}`);
  }
  if (failures) Deno.exit(1);
}

if (argv.has("check")) await check();
else await bench();
device.destroy();
