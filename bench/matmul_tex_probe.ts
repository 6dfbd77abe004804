/**
 * Raw-WebGPU probe: matmul operands read through rgba32float textures against the storage-buffer
 * kernel, interleaved in one process so that ratios survive a busy machine.
 *
 *   deno run -A bench/matmul_tex_probe.ts [--shapes=1024,2048x512x1376] [--layouts=NN,NT,TN]
 *        [--variants=storage,texA,texB,texAB] [--rounds=7] [--flops=3e9]
 *   deno run -A bench/matmul_tex_probe.ts --check [--cases=80]
 *     (every layout x texA/texB/texAB on ragged, batched and broadcast shapes, all outputs checked)
 *
 * Every timed texture run includes the copyBufferToTexture of its operands (recorded in the same
 * command encoder before each dispatch), so the ratios are end to end. Results are checked against
 * a float64 reference on sampled outputs.
 *
 * @module
 */
import {
  chooseMatmulConfig,
  matmulShader,
  type MatmulShaderConfig,
  type MatmulTexLayout,
  matmulTexLayout,
  matmulWorkgroups,
} from "../ops/matmul_wgsl.ts";

const argv = new Map<string, string>();
for (const a of Deno.args) {
  const m = /^--([^=]+)(?:=(.*))?$/.exec(a);
  if (m) argv.set(m[1], m[2] ?? "true");
}

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("no WebGPU adapter");
const device = await adapter.requestDevice({
  requiredLimits: {
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
    maxTextureDimension2D: adapter.limits.maxTextureDimension2D,
  },
});
device.addEventListener("uncapturederror", (ev) => {
  console.error("WebGPU error:", (ev as GPUUncapturedErrorEvent).error.message);
});
const maxDim = device.limits.maxTextureDimension2D;

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

function makeBuffer(data: Float32Array<ArrayBuffer>): GPUBuffer {
  const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
  const buf = device.createBuffer({
    size,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
  });
  device.queue.writeBuffer(buf, 0, data);
  return buf;
}

async function readBuffer(buf: GPUBuffer): Promise<Float32Array<ArrayBuffer>> {
  const staging = device.createBuffer({
    size: buf.size,
    usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
  });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buf, 0, staging, 0, buf.size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return out;
}

/** Records the copy of a whole row-major operand into its texture (full texture rows + remainder). */
function encodeToTexture(
  enc: GPUCommandEncoder,
  src: GPUBuffer,
  tex: GPUTexture,
  lay: MatmulTexLayout,
  rows: number,
  rowLen: number,
): void {
  const g = 2 ** lay.shift;
  const full = Math.floor(rows / g);
  if (full > 0) {
    enc.copyBufferToTexture(
      { buffer: src, bytesPerRow: lay.bytesPerRow, rowsPerImage: full },
      { texture: tex },
      { width: lay.width, height: full },
    );
  }
  const rest = rows - full * g;
  if (rest > 0) {
    enc.copyBufferToTexture(
      { buffer: src, offset: full * lay.bytesPerRow },
      { texture: tex, origin: { x: 0, y: full } },
      { width: (rest * rowLen) / 4, height: 1 },
    );
  }
}

interface Problem {
  M: number;
  N: number;
  K: number;
  batch: number;
  transA: boolean;
  transB: boolean;
  /** A (or B) is one matrix shared across the batch (stride 0). */
  bcastA: boolean;
  bcastB: boolean;
}

interface Variant {
  name: string;
  pipe: GPUComputePipeline;
  bg: GPUBindGroup;
  wg: [number, number, number];
  copies: ((enc: GPUCommandEncoder) => void)[];
  destroy: () => void;
  gf: number[];
}

/**
 * Pipeline, bindings and texture copies of one variant ("storage", "texA", "texB", "texAB"), or
 * null if an operand that should be textured cannot be.
 */
function makeVariant(
  pr: Problem,
  A: GPUBuffer,
  B: GPUBuffer,
  C: GPUBuffer,
  name: string,
): Variant | null {
  const { M, N, K, batch, transA, transB } = pr;
  const texA = name === "texA" || name === "texAB";
  const texB = name === "texB" || name === "texAB";
  // Rows and row length of each operand as stored, batches stacked.
  const aRows = (pr.bcastA ? 1 : batch) * (transA ? K : M), aLen = transA ? M : K;
  const bRows = (pr.bcastB ? 1 : batch) * (transB ? N : K), bLen = transB ? K : N;
  const layA = texA ? matmulTexLayout(aRows, aLen, maxDim) : null;
  const layB = texB ? matmulTexLayout(bRows, bLen, maxDim) : null;
  if ((texA && !layA) || (texB && !layB)) return null;
  const cfg: MatmulShaderConfig = {
    ...chooseMatmulConfig(M, N, K, transA, transB, "cpu"),
    texA,
    texB,
  };
  const module = device.createShaderModule({ code: matmulShader(cfg) });
  const pipe = device.createComputePipeline({
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const uni = new Uint32Array(texA || texB ? 12 : 8);
  uni.set([M, N, K, batch, pr.bcastA ? 0 : M * K, pr.bcastB ? 0 : K * N, M * N, 0]);
  if (texA || texB) uni.set([layA?.shift ?? 0, layB?.shift ?? 0], 8);
  const U = device.createBuffer({
    size: uni.byteLength,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(U, 0, uni);
  const resources: GPUBindingResource[] = [];
  if (!texA) resources.push({ buffer: A });
  if (!texB) resources.push({ buffer: B });
  resources.push({ buffer: C }, { buffer: U });
  const copies: ((enc: GPUCommandEncoder) => void)[] = [];
  const textures: GPUTexture[] = [];
  const addTex = (src: GPUBuffer, l: MatmulTexLayout, rows: number, len: number) => {
    const tex = device.createTexture({
      size: [l.width, l.height],
      format: "rgba32float",
      usage: GPUTextureUsage.COPY_DST | GPUTextureUsage.TEXTURE_BINDING,
    });
    textures.push(tex);
    resources.push(tex.createView());
    copies.push((enc) => encodeToTexture(enc, src, tex, l, rows, len));
  };
  if (layA) addTex(A, layA, aRows, aLen);
  if (layB) addTex(B, layB, bRows, bLen);
  const bg = device.createBindGroup({
    layout: pipe.getBindGroupLayout(0),
    entries: resources.map((resource, binding) => ({ binding, resource })),
  });
  return {
    name,
    pipe,
    bg,
    wg: matmulWorkgroups(cfg, M, N, batch),
    copies,
    destroy: () => {
      U.destroy();
      textures.forEach((t) => t.destroy());
    },
    gf: [],
  };
}

/** Records `n` times (copies + dispatch), submits, waits; returns the wall time in ms. */
async function run(v: Variant, n: number, copiesOnly = false): Promise<number> {
  const enc = device.createCommandEncoder();
  for (let i = 0; i < n; i++) {
    for (const c of v.copies) c(enc);
    if (!copiesOnly) {
      const pass = enc.beginComputePass();
      pass.setPipeline(v.pipe);
      pass.setBindGroup(0, v.bg);
      pass.dispatchWorkgroups(...v.wg);
      pass.end();
    }
  }
  const t0 = performance.now();
  device.queue.submit([enc.finish()]);
  await device.queue.onSubmittedWorkDone();
  return performance.now() - t0;
}

/** Max relative error |c - ref| / sum|a_k b_k| over `samples` outputs (all if <= 0). */
function verify(
  pr: Problem,
  a: Float32Array,
  b: Float32Array,
  c: Float32Array,
  samples: number,
): number {
  const { M, N, K, batch, transA, transB } = pr;
  const sA = pr.bcastA ? 0 : M * K, sB = pr.bcastB ? 0 : K * N;
  let worst = 0;
  const at = (z: number, m: number, n: number) => {
    let r = 0, ra = 0;
    for (let k = 0; k < K; k++) {
      const av = a[z * sA + (transA ? k * M + m : m * K + k)];
      const bv = b[z * sB + (transB ? n * K + k : k * N + n)];
      r += av * bv;
      ra += Math.abs(av * bv);
    }
    const e = Math.abs(c[(z * M + m) * N + n] - r) / Math.max(ra, 1e-30);
    if (!(e <= worst)) worst = e;
  };
  if (samples <= 0) {
    for (let z = 0; z < batch; z++) {
      for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) at(z, m, n);
    }
  } else {
    at(batch - 1, M - 1, N - 1);
    for (let s = 0; s < samples; s++) {
      at(
        Math.floor(rand() * batch),
        Math.floor(rand() * M),
        Math.floor(rand() * N),
      );
    }
  }
  return worst;
}

interface Operands {
  a: Float32Array<ArrayBuffer>;
  b: Float32Array<ArrayBuffer>;
  A: GPUBuffer;
  B: GPUBuffer;
  C: GPUBuffer;
}

function operands(pr: Problem): Operands {
  const a = new Float32Array((pr.bcastA ? 1 : pr.batch) * pr.M * pr.K).map(() => rand() * 2 - 1);
  const b = new Float32Array((pr.bcastB ? 1 : pr.batch) * pr.K * pr.N).map(() => rand() * 2 - 1);
  return {
    a,
    b,
    A: makeBuffer(a),
    B: makeBuffer(b),
    C: makeBuffer(new Float32Array(pr.batch * pr.M * pr.N)),
  };
}

async function fillAndRun(v: Variant, pr: Problem, C: GPUBuffer): Promise<Float32Array> {
  device.queue.writeBuffer(C, 0, new Float32Array(pr.batch * pr.M * pr.N).fill(NaN));
  await run(v, 1);
  return await readBuffer(C);
}

function parseShape(s: string): [number, number, number] {
  const p = s.split("x").map(Number);
  return p.length === 1 ? [p[0], p[0], p[0]] : [p[0], p[1], p[2]];
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

const rand = rng(7);

async function bench(): Promise<void> {
  const shapes = (argv.get("shapes") ?? "1024,2048x512x1376").split(",");
  const layouts = (argv.get("layouts") ?? "NN,NT,TN").split(",");
  const variantNames = (argv.get("variants") ?? "storage,texA,texB,texAB").split(",");
  const rounds = Number(argv.get("rounds") ?? 7);
  const targetFlops = Number(argv.get("flops") ?? 3e9);
  console.log(
    `device: ${adapter!.info.description}; maxTextureDimension2D=${maxDim}; rounds=${rounds}`,
  );
  const summary: string[] = [];
  for (const shape of shapes) {
    const [M, K, N] = parseShape(shape);
    for (const lay of layouts) {
      const pr: Problem = {
        M,
        N,
        K,
        batch: 1,
        transA: lay[0] === "T",
        transB: lay[1] === "T",
        bcastA: false,
        bcastB: false,
      };
      const { a, b, A, B, C } = operands(pr);
      const variants: Variant[] = [];
      for (const name of variantNames) {
        const v = makeVariant(pr, A, B, C, name);
        if (v) variants.push(v);
        else console.log(`  ${shape} ${lay} ${name}: not texturable, skipped`);
      }
      // Compile, check, warm.
      for (const v of variants) {
        const worst = verify(pr, a, b, await fillAndRun(v, pr, C), 256);
        if (!(worst < 1e-5)) console.error(`  WRONG ${shape} ${lay} ${v.name}: max rel ${worst}`);
        await run(v, 1);
      }
      const flops = 2 * M * N * K;
      const times = Math.max(1, Math.min(32, Math.round(targetFlops / flops)));
      for (let r = 0; r < rounds; r++) {
        for (const v of variants) v.gf.push((flops * times) / ((await run(v, times)) * 1e6));
      }
      // Copy cost per call: 16 copy sets in one submit, minus an empty submit (the sync alone
      // costs >= 11 ms here).
      const copyMs: string[] = [];
      const e: number[] = [];
      for (let i = 0; i < 3; i++) e.push(await run(variants[0], 0));
      const empty = median(e);
      for (const v of variants) {
        if (!v.copies.length) continue;
        const t: number[] = [];
        for (let i = 0; i < 3; i++) t.push(await run(v, 16, true));
        copyMs.push(`${v.name} ${((median(t) - empty) / 16).toFixed(2)}ms`);
      }
      const line = `${shape.padEnd(14)} ${lay}  ` + variants.map((v) => {
        const ratios = v.gf.map((g, i) => g / variants[0].gf[i]);
        return `${v.name} ${median(v.gf).toFixed(1)} (x${median(ratios).toFixed(2)})`;
      }).join("  ") + `  | copy/call: ${copyMs.join(", ")}`;
      console.log(line);
      summary.push(line);
      for (const v of variants) v.destroy();
      A.destroy();
      B.destroy();
      C.destroy();
    }
  }
  console.log("\n" + summary.join("\n"));
}

/** Every layout x texA/texB/texAB on ragged, batched and broadcast shapes, all outputs checked. */
async function check(): Promise<void> {
  const ri = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const cases: Problem[] = [];
  const fixed: [number, number, number][] = [
    [1, 1, 4],
    [4, 4, 4],
    [37, 20, 40],
    [130, 129, 64],
    [33, 17, 44],
    [50, 20, 1376],
    [17000, 4, 64],
    [4, 17000, 64],
  ];
  for (const [M, N, K] of fixed) {
    for (const lay of ["NN", "NT", "TN", "TT"]) {
      const transA = lay[0] === "T", transB = lay[1] === "T";
      cases.push({ M, N, K, batch: 1, transA, transB, bcastA: false, bcastB: false });
    }
  }
  const nCases = Number(argv.get("cases") ?? 80);
  while (cases.length < nCases) {
    const batch = rand() < 0.4 ? ri(2, 4) : 1;
    cases.push({
      M: rand() < 0.5 ? 4 * ri(1, 20) : ri(1, 70),
      N: rand() < 0.5 ? 4 * ri(1, 20) : ri(1, 70),
      K: rand() < 0.5 ? 4 * ri(1, 20) : ri(1, 70),
      batch,
      transA: rand() < 0.5,
      transB: rand() < 0.5,
      bcastA: batch > 1 && rand() < 0.3,
      bcastB: batch > 1 && rand() < 0.3,
    });
  }
  let runs = 0, failures = 0, worst = 0;
  for (const pr of cases) {
    const { a, b, A, B, C } = operands(pr);
    for (const name of ["texA", "texB", "texAB"]) {
      const v = makeVariant(pr, A, B, C, name);
      if (!v) continue;
      const e = verify(pr, a, b, await fillAndRun(v, pr, C), pr.M * pr.N > 1 << 16 ? 2000 : 0);
      runs++;
      worst = Math.max(worst, e);
      if (!(e < 2e-5)) {
        failures++;
        console.error(`FAIL ${name} ${JSON.stringify(pr)}: max rel err ${e}`);
      }
      v.destroy();
    }
    A.destroy();
    B.destroy();
    C.destroy();
  }
  console.log(
    `check: ${cases.length} shapes, ${runs} texture runs, ${failures} failures, ` +
      `max rel err ${worst.toExponential(2)}`,
  );
  if (failures) Deno.exit(1);
}

if (argv.has("check")) await check();
else await bench();
device.destroy();
