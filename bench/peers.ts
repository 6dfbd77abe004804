/**
 * Peer-library matmul benchmarks on the same WebGPU adapter / CPU, in the same process.
 *
 * Peers:
 * * `tfjs-webgpu`: TF.js 4.22 `webgpu` backend on Deno's `navigator.gpu` (its own GPUDevice).
 * * `tfjs-wasm`: TF.js 4.22 `wasm` backend (XNNPACK, SIMD), loaded offline from
 *   `node_modules/@tensorflow/tfjs-backend-wasm/dist/` through a `file://` URL.
 * * `jax-js`: `@jax-js/jax` on its fastest device here (`wasm`, multi-threaded through Web Workers,
 *   or `webgpu`), picked once by a calibration run unless `opts.jaxDevice` says otherwise.
 *
 * Timing protocol (the same for every peer):
 * 1. One warmup matmul, forced to completion (compiles pipelines / kernels), timed, then read back
 *    and verified (see 5).
 * 2. If the warmup took ≤ maxSeconds/3, one timed probe matmul to estimate the per-matmul time `t`
 *    (else `t` = warmup time); when `inner` is 1 the probe also counts as a sample.
 * 3. Each rep issues `inner` independent matmuls on the same inputs, then forces completion once, so
 *    a per-sync floor (~11 ms on this adapter for a WebGPU readback) is amortized. Reps continue
 *    until `reps` samples or until the next rep (assumed as long as the last) would pass the budget.
 *    `inner = clamp(round(targetRepMs / t), 1, 16)`, also capped so the outputs fit in 512 MiB.
 *    The reported time is the median over reps of (rep time / inner).
 * 4. Completion is forced with minimal readback:
 *    * tfjs-webgpu: `backend.endComputePassEncoder(); backend.submitQueue()` then
 *      `await device.queue.onSubmittedWorkDone()` (no readback at all; the queue executes in order,
 *      so the last matmul done means all done).
 *    * tfjs-wasm: kernels run synchronously when called; `dataSync()` on the last output is a copy.
 *    * jax-js: `await blockUntilReady()` on every output (jax-js is lazy; this dispatches and waits).
 * 5. The warmup output and the last output of the last timed rep (read back after the clock stops)
 *    are checked on 16 sampled entries against a float64 CPU dot product (tolerance
 *    1e-3 · Σ|a·b| + 1e-5). A mismatch gives `error`, never a number.
 *
 * `maxSeconds` (default 10) caps one call: reps are cut to fit the remaining budget (at least one rep),
 * and if the warmup alone used more than the budget its time is reported as the only sample
 * (`note` says so; compile time is then included, typically < 1 s of a multi-second matmul).
 * A call can therefore take up to about maxSeconds + 1 matmul (≤ 2 × maxSeconds). To avoid
 * that for hopeless cells, pass `expectGflops` (e.g. the same peer's result at a smaller shape): a
 * cell predicted to exceed `maxSeconds` per matmul is skipped (`error: "skipped: …"`).
 *
 * Call {@link closePeers} at the end of a script: jax-js's wasm worker pool otherwise keeps Deno
 * from exiting.
 *
 * Calls must not overlap (TF.js has one global active backend); await each one. Library loading is
 * cached per process; inputs are created per call and freed at the end.
 *
 * Transposed layouts use each library's idiomatic API: tfjs `matMul(a, b, transposeA, transposeB)`,
 * jax-js `np.matmul(a.transpose(), b)` (lazy views; no explicit copy is requested).
 *
 * @module
 */

/** Matmul layout: `NN` C = A·B, `NT` C = A·Bᵀ, `TN` C = Aᵀ·B. */
export type Layout = "NN" | "NT" | "TN";

/** A peer library (and backend) that {@link benchPeerMatmul} can measure. */
export type PeerName = "tfjs-webgpu" | "tfjs-wasm" | "jax-js";

/** The list of all peers, in table order. */
export const PEERS: readonly PeerName[] = ["tfjs-webgpu", "tfjs-wasm", "jax-js"];

/** Result of one peer measurement: `gflops`/`medianMs` on success, `error` otherwise. */
export interface PeerResult {
  /** Which peer was measured. */
  peer: PeerName;
  /** 2·m·n·k / median time per matmul, in GFLOP/s. */
  gflops?: number;
  /** Median time of one matmul in milliseconds. */
  medianMs?: number;
  /** Short failure reason (load failure, runtime error, wrong result). */
  error?: string;
  /** Extra facts: backend used, reps × matmuls per rep, max relative error of sampled outputs. */
  note?: string;
  /** Number of timed reps actually run. */
  reps?: number;
  /** Matmuls issued per rep (between two completion waits). */
  inner?: number;
  /** Largest |c - ref| / Σ|a·b| over the sampled outputs. */
  maxRelErr?: number;
  /** Wall time of the whole call (load, warmup, reps, verification), in ms. */
  wallMs?: number;
}

/** Options for {@link benchPeerMatmul}. */
export interface PeerBenchOptions {
  /** Timed reps (default 5); fewer are run when `maxSeconds` would be exceeded. */
  reps?: number;
  /** Soft time cap for the whole call including warmup, in seconds (default 10). */
  maxSeconds?: number;
  /** Target wall time of one rep in ms, used to choose matmuls per rep (default 150). */
  targetRepMs?: number;
  /** jax-js device: `auto` (default: fastest of wasm/webgpu at 512³ NN, decided once), or forced. */
  jaxDevice?: "auto" | "wasm" | "webgpu";
  /**
   * Expected GFLOP/s (e.g. this peer's result at a smaller shape). When 2·m·n·k at this rate would
   * take longer than `maxSeconds`, the call returns `{ error: "skipped: …" }` without running.
   */
  expectGflops?: number;
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

// deno-lint-ignore no-explicit-any
type Any = any;

const MAX_INNER = 16;
const MAX_INNER_BYTES = 512 * 2 ** 20;

function shortError(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const line = msg.split("\n")[0].trim();
  return line.length > 160 ? line.slice(0, 157) + "..." : line;
}

/** Deterministic uniform [-1, 1) values (xorshift32). */
function randomArray(len: number, seed: number): Float32Array {
  const out = new Float32Array(len);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s / 2147483648 - 1;
  }
  return out;
}

interface Problem {
  m: number;
  k: number;
  n: number;
  layout: Layout;
  a: Float32Array; // [m,k] or [k,m] for TN
  b: Float32Array; // [k,n] or [n,k] for NT
  aShape: [number, number];
  bShape: [number, number];
}

function makeProblem(m: number, k: number, n: number, layout: Layout): Problem {
  const aShape: [number, number] = layout === "TN" ? [k, m] : [m, k];
  const bShape: [number, number] = layout === "NT" ? [n, k] : [k, n];
  return {
    m,
    k,
    n,
    layout,
    a: randomArray(m * k, 1234 + m + 7 * k),
    b: randomArray(k * n, 4321 + n + 3 * k),
    aShape,
    bShape,
  };
}

/** Checks 16 sampled outputs (plus the corners) against a float64 dot product. */
function verify(p: Problem, c: ArrayLike<number>): { ok: boolean; maxRel: number; msg: string } {
  const { m, k, n, a, b, layout } = p;
  if (c.length < m * n) {
    return { ok: false, maxRel: Infinity, msg: `output has ${c.length} values` };
  }
  const idx: [number, number][] = [[0, 0], [m - 1, n - 1], [0, n - 1], [m - 1, 0]];
  let s = 99991;
  for (let t = 0; t < 12; t++) {
    s = (s * 1103515245 + 12345) >>> 0;
    const i = s % m;
    s = (s * 1103515245 + 12345) >>> 0;
    idx.push([i, s % n]);
  }
  let maxRel = 0;
  for (const [i, j] of idx) {
    let ref = 0, mag = 0;
    for (let q = 0; q < k; q++) {
      const av = layout === "TN" ? a[q * m + i] : a[i * k + q];
      const bv = layout === "NT" ? b[j * k + q] : b[q * n + j];
      ref += av * bv;
      mag += Math.abs(av * bv);
    }
    const got = c[i * n + j];
    const err = Math.abs(got - ref);
    const rel = err / (mag + 1e-30);
    if (!(rel <= maxRel)) maxRel = Number.isNaN(rel) ? Infinity : Math.max(maxRel, rel);
    if (!(err <= 1e-3 * mag + 1e-5)) {
      return { ok: false, maxRel, msg: `wrong result at [${i},${j}]: got ${got}, want ${ref}` };
    }
  }
  return { ok: true, maxRel, msg: "" };
}

/** One peer-specific runner: issue `count` matmuls, wait for completion, return the last output. */
interface Runner {
  /**
   * Issue `count` matmuls and force completion of all of them (this is what gets timed). With
   * `keepLast`, the last output is kept alive for {@link Runner.readKept}.
   */
  run(count: number, keepLast?: boolean): Promise<void>;
  /** Read back (and free) the output kept by the last `run(_, true)`. */
  readKept(): Promise<ArrayLike<number>>;
  /** Free inputs. */
  dispose(): void;
  /** Backend description for the note. */
  label: string;
}

async function timeIt(f: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

async function measure(
  peer: PeerName,
  p: Problem,
  runner: Runner,
  opts: PeerBenchOptions,
): Promise<PeerResult> {
  const flop = 2 * p.m * p.n * p.k;
  const budgetMs = (opts.maxSeconds ?? 10) * 1000;
  const targetRepMs = opts.targetRepMs ?? 150;
  const wantReps = Math.max(1, Math.floor(opts.reps ?? 5));
  const t0 = performance.now();

  // Warmup (includes compile and first upload), checked for correctness right away.
  const warm = await timeIt(() => runner.run(1, true));
  const v0 = verify(p, await runner.readKept());
  if (!v0.ok) return { peer, error: v0.msg, note: runner.label };

  const result = (samples: number[], inner: number, maxRel: number, extra = ""): PeerResult => {
    const sorted = [...samples].sort((x, y) => x - y);
    const mid = sorted.length >> 1;
    const med = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    return {
      peer,
      gflops: flop / med / 1e6,
      medianMs: med,
      reps: samples.length,
      inner,
      maxRelErr: maxRel,
      note: `${runner.label}; ${samples.length}x${inner} matmuls${extra}`,
    };
  };

  if (warm > budgetMs) {
    return result([warm], 1, v0.maxRel, "; single run incl. warmup (slow)");
  }

  // Estimate per-matmul time.
  // The warmup includes compile time, so re-time one matmul unless that would eat the budget.
  let est = warm;
  let probe: number | undefined;
  if (warm <= budgetMs / 3) est = probe = await timeIt(() => runner.run(1));
  const bytesOut = p.m * p.n * 4;
  const inner = Math.max(
    1,
    Math.min(MAX_INNER, Math.round(targetRepMs / est), Math.floor(MAX_INNER_BYTES / bytesOut)),
  );
  const samples: number[] = inner === 1 && probe !== undefined ? [probe] : [];
  // At least one rep; more while the next one (assumed as long as the last) fits the budget.
  for (;;) {
    const dt = await timeIt(() => runner.run(inner, true));
    samples.push(dt / inner);
    if (samples.length >= wantReps || performance.now() - t0 + dt > budgetMs) break;
  }
  // Verify the last output of the last timed rep (read back after the clock stopped).
  const v1 = verify(p, await runner.readKept());
  if (!v1.ok) return { peer, error: v1.msg, note: runner.label };
  return result(samples, inner, Math.max(v0.maxRel, v1.maxRel));
}

// ---------------------------------------------------------------------------------------------
// TF.js (shared core, two backends)
// ---------------------------------------------------------------------------------------------

let tfPromise: Promise<Any> | undefined;
const tfBackendReady = new Map<string, Promise<void>>();

function loadTf(): Promise<Any> {
  tfPromise ??= import("@tensorflow/tfjs-core");
  return tfPromise;
}

function wasmDistUrl(): string {
  // bench/node_modules (bench/deno.json), else the working directory.
  const candidates = [
    new URL("./node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url),
    new URL("node_modules/@tensorflow/tfjs-backend-wasm/dist/", `file://${Deno.cwd()}/`),
  ];
  for (const u of candidates) {
    try {
      Deno.statSync(new URL("tfjs-backend-wasm-simd.wasm", u));
      return u.href;
    } catch { /* try next */ }
  }
  throw new Error(
    "tfjs-backend-wasm dist/ not found under bench/node_modules (run `deno install --config bench/deno.json`)",
  );
}

/** Loads (once) and activates a TF.js backend; returns the tf namespace. */
async function tfUse(backend: "webgpu" | "wasm"): Promise<Any> {
  const tf = await loadTf();
  let ready = tfBackendReady.get(backend);
  if (!ready) {
    ready = (async () => {
      if (backend === "webgpu") {
        if (!("gpu" in navigator)) throw new Error("navigator.gpu is not available");
        await import("@tensorflow/tfjs-backend-webgpu");
      } else {
        const wasm = await import("@tensorflow/tfjs-backend-wasm");
        wasm.setWasmPaths(wasmDistUrl());
      }
    })();
    tfBackendReady.set(backend, ready);
  }
  await ready;
  if (tf.getBackend() !== backend) {
    const ok = await tf.setBackend(backend);
    if (!ok) throw new Error(`tf.setBackend('${backend}') failed`);
  }
  await tf.ready();
  if (tf.getBackend() !== backend) throw new Error(`tfjs backend is ${tf.getBackend()}`);
  return tf;
}

async function tfRunner(backend: "webgpu" | "wasm", p: Problem): Promise<Runner> {
  const tf = await tfUse(backend);
  const be = tf.backend();
  const A = tf.tensor2d(p.a, p.aShape, "float32");
  const B = tf.tensor2d(p.b, p.bShape, "float32");
  const ta = p.layout === "TN", tb = p.layout === "NT";
  const mm = () => tf.matMul(A, B, ta, tb);
  const sync = async (last: Any) => {
    if (backend === "webgpu") {
      // WebGPUBackend.submitQueue() finishes the command encoder but does not end an open compute
      // pass (its own callers do that first); skipping endComputePassEncoder() silently drops the
      // recorded dispatches (reads then return stale buffers — caught by verify()).
      be.ensureCommandEncoderReady();
      be.endComputePassEncoder();
      be.submitQueue();
      await be.device.queue.onSubmittedWorkDone();
    } else {
      last.dataSync();
    }
  };
  let kept: Any;
  let threads = "";
  if (backend === "wasm") {
    const wasm = await import("@tensorflow/tfjs-backend-wasm");
    threads = `, ${wasm.getThreadsCount()} thread(s)`;
  }
  return {
    label: `tfjs ${tf.version_core} ${backend}${threads}`,
    async run(count, keepLast) {
      const outs: Any[] = [];
      for (let i = 0; i < count; i++) outs.push(mm());
      await sync(outs[outs.length - 1]);
      if (keepLast) {
        kept?.dispose();
        kept = outs.pop();
      }
      for (const o of outs) o.dispose();
    },
    async readKept() {
      const c = kept;
      kept = undefined;
      try {
        return await c.data();
      } finally {
        c.dispose();
      }
    },
    dispose() {
      kept?.dispose();
      A.dispose();
      B.dispose();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// jax-js
// ---------------------------------------------------------------------------------------------

let jaxPromise: Promise<{ jax: Any; devices: string[] }> | undefined;
let jaxAutoDevice: Promise<string> | undefined;
let peersClosed = false;

// jax-js's wasm device dispatches to a pool of Web Workers that it never terminates, which keeps
// Deno alive after main() returns. The pool is created lazily on the first wasm dispatch, so while
// jax-js loads and runs its first wasm kernel we swap in a Worker subclass that records instances;
// closePeers() terminates them. The global is restored right after that first run.
const trappedWorkers: Worker[] = [];
let originalWorker: typeof Worker | undefined;

function installWorkerTrap(): void {
  if (originalWorker || typeof Worker === "undefined") return;
  const Orig = Worker;
  originalWorker = Orig;
  globalThis.Worker = class TrackedWorker extends Orig {
    constructor(url: string | URL, options?: WorkerOptions) {
      super(url, options);
      trappedWorkers.push(this);
    }
  };
}

function releaseWorkerTrap(): void {
  if (originalWorker) globalThis.Worker = originalWorker;
  originalWorker = undefined;
}

function loadJax(): Promise<{ jax: Any; devices: string[] }> {
  if (peersClosed) return Promise.reject(new Error("peers closed (closePeers() was called)"));
  jaxPromise ??= (async () => {
    installWorkerTrap();
    const jax = await import("@jax-js/jax");
    const devices: string[] = await jax.init();
    return { jax, devices };
  })();
  return jaxPromise;
}

function jaxRunner(jax: Any, device: string, p: Problem): Runner {
  const np = jax.numpy;
  const A = jax.numpy.array(p.a, { device }).reshape(p.aShape);
  const B = jax.numpy.array(p.b, { device }).reshape(p.bShape);
  let kept: Any;
  // Ownership: every op consumes its arguments, so pass `.ref` to keep A and B alive.
  const mm = () => {
    const a = p.layout === "TN" ? A.ref.transpose() : A.ref;
    const b = p.layout === "NT" ? B.ref.transpose() : B.ref;
    return np.matmul(a, b);
  };
  return {
    label: device === "wasm"
      ? `jax-js ${device} (worker pool of ${navigator.hardwareConcurrency || 4})`
      : `jax-js ${device}`,
    async run(count, keepLast) {
      const outs: Any[] = [];
      for (let i = 0; i < count; i++) outs.push(mm());
      await jax.blockUntilReady(outs);
      if (keepLast) {
        kept?.dispose();
        kept = outs.pop();
      }
      for (const o of outs) o.dispose();
      if (device === "wasm") releaseWorkerTrap();
    },
    async readKept() {
      const c = kept;
      kept = undefined;
      return await c.data(); // data() consumes c
    },
    dispose() {
      kept?.dispose();
      A.dispose();
      B.dispose();
    },
  };
}

async function jaxPickDevice(opts: PeerBenchOptions): Promise<string> {
  const { jax, devices } = await loadJax();
  const cands = ["wasm", "webgpu"].filter((d) => devices.includes(d));
  if (opts.jaxDevice && opts.jaxDevice !== "auto") {
    if (!devices.includes(opts.jaxDevice)) {
      throw new Error(`jax-js device ${opts.jaxDevice} unavailable (have ${devices.join(",")})`);
    }
    return opts.jaxDevice;
  }
  if (cands.length === 0) throw new Error(`jax-js: no wasm/webgpu device (have ${devices})`);
  if (cands.length === 1) return cands[0];
  jaxAutoDevice ??= (async () => {
    let best = cands[0], bestMs = Infinity;
    const p = makeProblem(512, 512, 512, "NN");
    for (const d of cands) {
      const r = jaxRunner(jax, d, p);
      try {
        await r.run(1);
        const ms = (await timeIt(() => r.run(4))) / 4;
        if (ms < bestMs) [best, bestMs] = [d, ms];
      } catch {
        /* device unusable: skip */
      } finally {
        r.dispose();
      }
    }
    return best;
  })();
  return await jaxAutoDevice;
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/**
 * Measures the matmul throughput of a peer library: C[m,n] = A·B (`NN`), A·Bᵀ (`NT`) or Aᵀ·B (`TN`),
 * A stored [m,k] ([k,m] for TN), B stored [k,n] ([n,k] for NT). Median over `reps` (default 5)
 * after one warmup; every result is checked on sampled outputs against a float64 dot product.
 * Never throws: load/run failures and wrong results come back as `{ peer, error }`.
 */
export async function benchPeerMatmul(
  peer: PeerName,
  m: number,
  k: number,
  n: number,
  layout: Layout,
  opts: PeerBenchOptions = {},
): Promise<PeerResult> {
  const t0 = performance.now();
  const res = await benchPeerMatmulInner(peer, m, k, n, layout, opts);
  return { ...res, wallMs: performance.now() - t0 };
}

async function benchPeerMatmulInner(
  peer: PeerName,
  m: number,
  k: number,
  n: number,
  layout: Layout,
  opts: PeerBenchOptions,
): Promise<PeerResult> {
  const maxSeconds = opts.maxSeconds ?? 10;
  if (opts.expectGflops && opts.expectGflops > 0) {
    const estS = (2 * m * n * k) / (opts.expectGflops * 1e9);
    if (estS > maxSeconds) {
      return {
        peer,
        error: `skipped: ~${estS.toFixed(0)} s per matmul at ${
          opts.expectGflops.toFixed(2)
        } GFLOP/s > maxSeconds ${maxSeconds}`,
      };
    }
  }
  let runner: Runner | undefined;
  try {
    const p = makeProblem(m, k, n, layout);
    if (peer === "tfjs-webgpu") runner = await tfRunner("webgpu", p);
    else if (peer === "tfjs-wasm") runner = await tfRunner("wasm", p);
    else if (peer === "jax-js") {
      const { jax } = await loadJax();
      runner = jaxRunner(jax, await jaxPickDevice(opts), p);
    } else return { peer, error: `unknown peer ${peer}` };
    return await measure(peer, p, runner, opts);
  } catch (e) {
    return { peer, error: shortError(e), note: runner?.label };
  } finally {
    try {
      runner?.dispose();
    } catch { /* ignore */ }
  }
}

/** Versions of the peer packages (read from their installed package.json) and of Deno. */
export async function peerVersions(): Promise<Record<string, string>> {
  const out: Record<string, string> = { deno: Deno.version.deno };
  const pkgs = [
    "@tensorflow/tfjs-core",
    "@tensorflow/tfjs-backend-webgpu",
    "@tensorflow/tfjs-backend-wasm",
    "@jax-js/jax",
  ];
  for (const name of pkgs) {
    try {
      const url = new URL(`../node_modules/${name}/package.json`, import.meta.url);
      out[name] = JSON.parse(await Deno.readTextFile(url)).version;
    } catch (e) {
      out[name] = `unknown (${shortError(e)})`;
    }
  }
  return out;
}

/**
 * Releases peer resources that would keep the process alive: terminates jax-js's wasm worker pool
 * (jax-js has no API for it). Call once at the end of a bench; jax-js cannot be used afterwards.
 */
export function closePeers(): void {
  peersClosed = true;
  releaseWorkerTrap();
  for (const w of trappedWorkers.splice(0)) w.terminate();
}
