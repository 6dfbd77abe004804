/**
 * WGSL generator for the f32 matmul kernel family (NN, NT, TN, TT, batched).
 *
 * C[b] = op(A[b]) · op(B[b]) where op is identity or transpose.
 *
 * Binding convention (shared with the library dispatcher):
 *  - `@group(0) @binding(0)` A, read-only storage
 *  - `@binding(1)` B, read-only storage
 *  - `@binding(2)` C, read_write storage
 *  - `@binding(3)` uniform struct of u32: M, N, K, batch, strideA, strideB, strideC, pad
 *    (batch strides in elements; a stride of 0 broadcasts that operand across the batch).
 *
 * Layouts: A is [batch, M, K] (transA=false) or [batch, K, M] (transA=true); B is
 * [batch, K, N] (transB=false) or [batch, N, K] (transB=true); C is [batch, M, N].
 *
 * Two kernel styles:
 *  - `"reg"`: register tiling with no workgroup memory. Each invocation computes a
 *    tileM x tileN block of C, loads are vec4 where the operand's contiguous dimension allows it,
 *    the K loop is unrolled by 4. Edges are handled by clamping the row/column indices used for
 *    loads (so the loop body has no branches) and by guarding the stores. This is the fast kernel on
 *    llvmpipe/lavapipe, where every storage-buffer load is a per-lane scalar loop and the only
 *    lever is FLOPs per loaded element.
 *  - `"smem"`: the classic workgroup-memory tiled kernel for real GPUs (wgX x wgY threads, each
 *    computing tileM x tileN outputs, K tiles of 16 staged in workgroup memory).
 *
 * All dimensions come from the uniform, so one compiled pipeline serves every shape with the same
 * flags. The vec4 flags are shape-dependent (see {@link chooseMatmulConfig}).
 *
 * @module
 */

/** Configuration of one generated matmul shader. */
export interface MatmulShaderConfig {
  /** A is stored [batch, K, M] instead of [batch, M, K]. */
  transA: boolean;
  /** B is stored [batch, N, K] instead of [batch, K, N]. */
  transB: boolean;
  /** Output rows computed per invocation (multiple of 4). */
  tileM: number;
  /** Output columns computed per invocation (multiple of 4). */
  tileN: number;
  /** Workgroup size along N (x). */
  wgX: number;
  /** Workgroup size along M (y). */
  wgY: number;
  /**
   * Read A as `array<vec4<f32>>` along its contiguous dimension (K if !transA, M if transA).
   * Valid only if that dimension and strideA are multiples of 4.
   */
  vec4A: boolean;
  /**
   * Read B as `array<vec4<f32>>` along its contiguous dimension (N if !transB, K if transB).
   * Valid only if that dimension and strideB are multiples of 4.
   */
  vec4B: boolean;
  /** Write C as `array<vec4<f32>>`. Valid only if N and strideC are multiples of 4. */
  vec4C: boolean;
  /** Kernel style: register tiled (CPU adapters) or workgroup-memory tiled (real GPUs). */
  kind?: "reg" | "smem";
}

const COMP = ["x", "y", "z", "w"];

function checkConfig(cfg: MatmulShaderConfig): void {
  const { tileM, tileN, wgX, wgY } = cfg;
  if (tileM < 1 || tileN < 4 || tileN % 4 !== 0) {
    throw new Error(`matmul: tileN must be a positive multiple of 4 (got ${tileM}x${tileN})`);
  }
  if (cfg.transA && cfg.vec4A && tileM % 4 !== 0) {
    throw new Error("matmul: vec4A with transA needs tileM % 4 == 0");
  }
  if (wgX < 1 || wgY < 1 || wgX * wgY > 256) {
    throw new Error(`matmul: bad workgroup ${wgX}x${wgY}`);
  }
}

function header(vA: boolean, vB: boolean, vC: boolean): string {
  const t = (v: boolean) => (v ? "vec4<f32>" : "f32");
  return `struct Params {
  M: u32, N: u32, K: u32, batch: u32,
  strideA: u32, strideB: u32, strideC: u32, pad: u32,
};
@group(0) @binding(0) var<storage, read> A: array<${t(vA)}>;
@group(0) @binding(1) var<storage, read> B: array<${t(vB)}>;
@group(0) @binding(2) var<storage, read_write> C: array<${t(vC)}>;
@group(0) @binding(3) var<uniform> p: Params;
`;
}

/** Generate the WGSL source of one matmul kernel; entry point `main`. */
export function matmulShader(cfg: MatmulShaderConfig): string {
  checkConfig(cfg);
  return (cfg.kind ?? "reg") === "smem" ? smemShader(cfg) : regShader(cfg);
}

/** Number of workgroups to dispatch for an [batch, M, N] output with this config. */
export function matmulWorkgroups(
  cfg: MatmulShaderConfig,
  M: number,
  N: number,
  batch: number,
): [number, number, number] {
  const tx = Math.ceil(N / cfg.tileN);
  const ty = Math.ceil(M / cfg.tileM);
  return [Math.max(1, Math.ceil(tx / cfg.wgX)), Math.max(1, Math.ceil(ty / cfg.wgY)), batch];
}

// ---------------------------------------------------------------------------------------------
// Register-tiled kernel

function regShader(cfg: MatmulShaderConfig): string {
  const { transA, transB, tileM: TM, tileN: TN, wgX, wgY } = cfg;
  const vA = cfg.vec4A, vB = cfg.vec4B, vC = cfg.vec4C;
  const TN4 = TN / 4;
  const L: string[] = [];
  const e = (s: string) => L.push("  " + s);

  // Per-thread constant index bases (clamped so that loads never need a branch).
  // A
  if (!transA) {
    for (let i = 0; i < TM; i++) {
      e(
        vA
          ? `let ar${i} = (aOff + min(m0 + ${i}u, M - 1u) * K) >> 2u;`
          : `let ar${i} = aOff + min(m0 + ${i}u, M - 1u) * K;`,
      );
    }
  } else if (vA) {
    e(`let M4 = M >> 2u;`);
    for (let j = 0; j < TM / 4; j++) {
      e(`let ac${j} = (aOff >> 2u) + min((m0 >> 2u) + ${j}u, M4 - 1u);`);
    }
  } else {
    for (let i = 0; i < TM; i++) e(`let ac${i} = aOff + min(m0 + ${i}u, M - 1u);`);
  }
  // B
  if (transB) {
    for (let n = 0; n < TN; n++) {
      e(
        vB
          ? `let br${n} = (bOff + min(n0 + ${n}u, N - 1u) * K) >> 2u;`
          : `let br${n} = bOff + min(n0 + ${n}u, N - 1u) * K;`,
      );
    }
  } else if (vB) {
    e(`let N4 = N >> 2u;`);
    for (let j = 0; j < TN4; j++) {
      e(`let bc${j} = (bOff >> 2u) + min((n0 >> 2u) + ${j}u, N4 - 1u);`);
    }
  } else {
    for (let n = 0; n < TN; n++) e(`let bc${n} = bOff + min(n0 + ${n}u, N - 1u);`);
  }
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) e(`var c${i}_${j} = vec4<f32>(0.0);`);
  }

  // Body for `nk` consecutive k values starting at `k` (nk = 4 in the main loop, 1 in the tail).
  const body = (nk: number): string[] => {
    const B_: string[] = [];
    const b = (s: string) => B_.push("    " + s);
    const aExpr: string[][] = []; // [i][kk]
    const bExpr: string[][] = []; // [kk][j] vec4 expressions
    for (let i = 0; i < TM; i++) aExpr.push([]);
    for (let kk = 0; kk < nk; kk++) bExpr.push([]);
    // A loads
    if (!transA) {
      if (vA) {
        // nk == 4 guaranteed (K % 4 == 0)
        for (let i = 0; i < TM; i++) {
          b(`let a${i} = A[ar${i} + kc];`);
          for (let kk = 0; kk < 4; kk++) aExpr[i].push(`a${i}.${COMP[kk]}`);
        }
      } else {
        for (let i = 0; i < TM; i++) {
          for (let kk = 0; kk < nk; kk++) {
            b(`let a${i}_${kk} = A[ar${i} + k + ${kk}u];`);
            aExpr[i].push(`a${i}_${kk}`);
          }
        }
      }
    } else {
      for (let kk = 0; kk < nk; kk++) {
        if (vA) {
          b(`let ak${kk} = (k + ${kk}u) * M4;`);
          for (let j = 0; j < TM / 4; j++) b(`let a${kk}_${j} = A[ak${kk} + ac${j}];`);
          for (let i = 0; i < TM; i++) aExpr[i].push(`a${kk}_${i >> 2}.${COMP[i & 3]}`);
        } else {
          b(`let ak${kk} = (k + ${kk}u) * M;`);
          for (let i = 0; i < TM; i++) {
            b(`let a${kk}_${i} = A[ak${kk} + ac${i}];`);
            aExpr[i].push(`a${kk}_${i}`);
          }
        }
      }
    }
    // B loads
    if (!transB) {
      for (let kk = 0; kk < nk; kk++) {
        if (vB) {
          b(`let bk${kk} = (k + ${kk}u) * N4;`);
          for (let j = 0; j < TN4; j++) {
            b(`let b${kk}_${j} = B[bk${kk} + bc${j}];`);
            bExpr[kk].push(`b${kk}_${j}`);
          }
        } else {
          b(`let bk${kk} = (k + ${kk}u) * N;`);
          for (let n = 0; n < TN; n++) b(`let b${kk}_${n} = B[bk${kk} + bc${n}];`);
          for (let j = 0; j < TN4; j++) {
            const q = [0, 1, 2, 3].map((t) => `b${kk}_${4 * j + t}`);
            bExpr[kk].push(`vec4<f32>(${q.join(", ")})`);
          }
        }
      }
    } else {
      if (vB) {
        for (let n = 0; n < TN; n++) b(`let b${n} = B[br${n} + kc];`);
        for (let kk = 0; kk < 4; kk++) {
          for (let j = 0; j < TN4; j++) {
            const q = [0, 1, 2, 3].map((t) => `b${4 * j + t}.${COMP[kk]}`);
            bExpr[kk].push(`vec4<f32>(${q.join(", ")})`);
          }
        }
      } else {
        for (let n = 0; n < TN; n++) {
          for (let kk = 0; kk < nk; kk++) b(`let b${n}_${kk} = B[br${n} + k + ${kk}u];`);
        }
        for (let kk = 0; kk < nk; kk++) {
          for (let j = 0; j < TN4; j++) {
            const q = [0, 1, 2, 3].map((t) => `b${4 * j + t}_${kk}`);
            bExpr[kk].push(`vec4<f32>(${q.join(", ")})`);
          }
        }
      }
    }
    // Name the B vectors once (free in SoA, keeps the FMA lines short).
    for (let kk = 0; kk < nk; kk++) {
      for (let j = 0; j < TN4; j++) {
        if (!/^b\d+_\d+$/.test(bExpr[kk][j])) {
          b(`let v${kk}_${j} = ${bExpr[kk][j]};`);
          bExpr[kk][j] = `v${kk}_${j}`;
        }
      }
    }
    for (let kk = 0; kk < nk; kk++) {
      for (let i = 0; i < TM; i++) {
        for (let j = 0; j < TN4; j++) {
          b(`c${i}_${j} = fma(vec4<f32>(${aExpr[i][kk]}), ${bExpr[kk][j]}, c${i}_${j});`);
        }
      }
    }
    return B_;
  };

  const kAlongVec4 = (!transA && vA) || (transB && vB); // implies K % 4 == 0: no tail
  L.push(`  let K4 = K >> 2u;`);
  L.push(`  for (var kc = 0u; kc < K4; kc = kc + 1u) {`);
  L.push(`    let k = kc << 2u;`);
  L.push(...body(4));
  L.push(`  }`);
  if (!kAlongVec4) {
    L.push(`  for (var k = K4 << 2u; k < K; k = k + 1u) {`);
    L.push(...body(1));
    L.push(`  }`);
  }

  // Stores
  for (let i = 0; i < TM; i++) {
    L.push(`  if (m0 + ${i}u < M) {`);
    L.push(`    let cr = cOff + (m0 + ${i}u) * N + n0;`);
    for (let j = 0; j < TN4; j++) {
      if (vC) {
        L.push(`    if (n0 + ${4 * j}u < N) { C[(cr >> 2u) + ${j}u] = c${i}_${j}; }`);
      } else {
        for (let t = 0; t < 4; t++) {
          L.push(
            `    if (n0 + ${4 * j + t}u < N) { C[cr + ${4 * j + t}u] = c${i}_${j}.${COMP[t]}; }`,
          );
        }
      }
    }
    L.push(`  }`);
  }

  return `${header(vA, vB, vC)}
@compute @workgroup_size(${wgX}, ${wgY}, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let M = p.M;
  let N = p.N;
  // K goes through arrayLength so that no loop bound is a pure uniform expression: lavapipe
  // would otherwise "inline" the uniform and re-specialize (recompile) the shader at bind time.
  let K = select(p.K, 0u, arrayLength(&C) == 0u);
  let m0 = gid.y * ${TM}u;
  let n0 = gid.x * ${TN}u;
  if (m0 >= M || n0 >= N) { return; }
  let aOff = gid.z * p.strideA;
  let bOff = gid.z * p.strideB;
  let cOff = gid.z * p.strideC;
${L.join("\n")}
}
`;
}

// ---------------------------------------------------------------------------------------------
// Workgroup-memory tiled kernel (for real GPUs). Scalar bindings; any shape.

const SMEM_BK = 16;

function smemShader(cfg: MatmulShaderConfig): string {
  const { transA, transB, tileM: TM, tileN: TN, wgX, wgY } = cfg;
  const BM = TM * wgY, BN = TN * wgX, BK = SMEM_BK;
  const nThreads = wgX * wgY;
  const aIdx = transA ? "aOff + k * M + m" : "aOff + m * K + k";
  const bIdx = transB ? "bOff + n * K + k" : "bOff + k * N + n";
  const accs: string[] = [];
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN; j++) accs.push(`acc[${i * TN + j}]`);
  }
  return `${header(false, false, false)}
var<workgroup> As: array<f32, ${BM * BK}>;
var<workgroup> Bs: array<f32, ${BK * BN}>;

@compute @workgroup_size(${wgX}, ${wgY}, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = p.M;
  let N = p.N;
  // K goes through arrayLength so that no loop bound is a pure uniform expression: lavapipe
  // would otherwise "inline" the uniform and re-specialize (recompile) the shader at bind time.
  let K = select(p.K, 0u, arrayLength(&C) == 0u);
  let aOff = wid.z * p.strideA;
  let bOff = wid.z * p.strideB;
  let cOff = wid.z * p.strideC;
  let mBase = wid.y * ${BM}u;
  let nBase = wid.x * ${BN}u;
  let tid = lid.y * ${wgX}u + lid.x;
  var acc: array<f32, ${TM * TN}>;
  for (var i = 0u; i < ${TM * TN}u; i = i + 1u) { acc[i] = 0.0; }
  for (var k0 = 0u; k0 < K; k0 = k0 + ${BK}u) {
    for (var e = tid; e < ${BM * BK}u; e = e + ${nThreads}u) {
      let m = mBase + e / ${BK}u;
      let k = k0 + e % ${BK}u;
      var v = 0.0;
      if (m < M && k < K) { v = A[${aIdx}]; }
      As[e] = v;
    }
    for (var e = tid; e < ${BK * BN}u; e = e + ${nThreads}u) {
      let k = k0 + e / ${BN}u;
      let n = nBase + e % ${BN}u;
      var v = 0.0;
      if (n < N && k < K) { v = B[${bIdx}]; }
      Bs[e] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk = kk + 1u) {
      for (var i = 0u; i < ${TM}u; i = i + 1u) {
        let a = As[(lid.y * ${TM}u + i) * ${BK}u + kk];
        for (var j = 0u; j < ${TN}u; j = j + 1u) {
          acc[i * ${TN}u + j] = fma(a, Bs[kk * ${BN}u + lid.x * ${TN}u + j], acc[i * ${TN}u + j]);
        }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${TM}u; i = i + 1u) {
    let m = mBase + lid.y * ${TM}u + i;
    for (var j = 0u; j < ${TN}u; j = j + 1u) {
      let n = nBase + lid.x * ${TN}u + j;
      if (m < M && n < N) { C[cOff + m * N + n] = acc[i * ${TN}u + j]; }
    }
  }
}
`;
}

// ---------------------------------------------------------------------------------------------
// Config table

/** Options for {@link chooseMatmulConfig}. */
export interface MatmulChooseOptions {
  /**
   * Allow 32x32-per-invocation tiles for large NN/TN problems (2·M·N·K >= 2^31, M, N >= 256, all
   * operands vec4-able) on "cpu" adapters: about 15 % faster than 16x16 there (NT gains nothing), but
   * a cold compile costs ~7 s per pipeline instead of ~0.7 s (Mesa's disk cache makes later runs
   * cheap). Off by default.
   */
  largeTiles?: boolean;
}

/**
 * Pick the kernel config for a shape (a fixed table, no runtime autotuning).
 *
 * The vec4 flags assume contiguous operands: batch strides equal to the matrix size (or 0).
 * For "cpu" (llvmpipe/lavapipe) this returns register-tiled configs; for "gpu" a classic
 * workgroup-memory tiled config.
 */
export function chooseMatmulConfig(
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  adapterKind: "cpu" | "gpu",
  opts: MatmulChooseOptions = {},
): MatmulShaderConfig {
  if (adapterKind === "gpu") {
    return {
      transA,
      transB,
      tileM: 4,
      tileN: 4,
      wgX: 16,
      wgY: 16,
      vec4A: false,
      vec4B: false,
      vec4C: false,
      kind: "smem",
    };
  }
  const vec4A = (transA ? M : K) % 4 === 0;
  const vec4B = (transB ? K : N) % 4 === 0;
  const vec4C = N % 4 === 0;
  if (
    opts.largeTiles && !transB && vec4A && vec4B && vec4C && M >= 256 && N >= 256 &&
    2 * M * N * K >= 2 ** 31
  ) {
    return {
      transA,
      transB,
      tileM: 32,
      tileN: 32,
      wgX: 8,
      wgY: 1,
      vec4A,
      vec4B,
      vec4C,
      kind: "reg",
    };
  }
  return { transA, transB, tileM: 16, tileN: 16, wgX: 8, wgY: 2, vec4A, vec4B, vec4C, kind: "reg" };
}
