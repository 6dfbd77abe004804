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
 * With `texA`/`texB` (register kernel only) that operand is read through an rgba32float
 * `texture_2d<f32>` instead: its storage binding is left out (the later bindings move up by one),
 * the texture is bound after the uniform (tA, then tB), and the uniform gains
 * `shiftA, shiftB, pad, pad` (see {@link matmulTexLayout}). This matches the dispatcher's order:
 * storage inputs, outputs, uniform, textures. On llvmpipe, where a storage load is a per-lane
 * scalar loop, textureLoad measured faster for operands each invocation reads by its own rows.
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
 *    lever is FLOPs per loaded element; with subgroups of 8 one operand's loads are shared across
 *    the subgroup (`subgroupA`, `subgroupB`).
 *  - `"smem"`: the workgroup-memory tiled kernel for real GPUs (wgX x wgY threads, each computing
 *    tileM x tileN outputs in registers, K tiles of 16 staged in workgroup memory, vec4 global
 *    loads where the layout allows them).
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
  /**
   * Workgroup size along N (x); along M with `subgroupB`. llvmpipe packs invocations into its 8
   * SIMD lanes along x only (a wgX of 1 measured ~10x slower), so keep it a multiple of 8 there.
   */
  wgX: number;
  /** Workgroup size along M (y); 1 with the subgroup kernels. */
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
  /**
   * Read A through an rgba32float texture instead of storage (register kernel only; needs vec4A).
   * See {@link matmulTexLayout} for the texture layout and the module doc for the bindings.
   */
  texA?: boolean;
  /** Read B through an rgba32float texture instead of storage (register kernel only; needs vec4B). */
  texB?: boolean;
  /**
   * Share the A loads across a subgroup (register kernel, storage A, vec4A, tileM a multiple of 8,
   * wgY 1; needs the `subgroups` feature and a subgroup size of exactly 8). All invocations of a
   * workgroup row share m0, so the tileM A vec4 a thread needs per K step are the same for every
   * lane: each lane loads tileM / 8 of them and `subgroupBroadcast` hands all of them to every lane.
   * Lanes past N are kept alive (clamped loads, guarded stores) since broadcasting from an exited
   * lane is undefined.
   */
  subgroupA?: boolean;
  /**
   * Share the B loads across a subgroup: the mirror of `subgroupA` with the lanes along M (storage
   * vec4 B, tileN a multiple of 8, wgY 1). Naga accepts subgroup builtins only in 1-D workgroups,
   * so here the x dimension of the grid runs along M and y along N.
   */
  subgroupB?: boolean;
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
  if ((cfg.texA && !cfg.vec4A) || (cfg.texB && !cfg.vec4B)) {
    throw new Error("matmul: a texture operand must be vec4 along its contiguous dimension");
  }
  if ((cfg.texA || cfg.texB) && (cfg.kind ?? "reg") !== "reg") {
    throw new Error("matmul: texture operands exist only in the register kernel");
  }
  if (
    cfg.subgroupA &&
    ((cfg.kind ?? "reg") !== "reg" || cfg.texA || !cfg.vec4A || tileM % 8 !== 0 || wgY !== 1 ||
      cfg.subgroupB)
  ) {
    throw new Error(
      "matmul: subgroupA needs the register kernel, storage vec4 A, tileM % 8 == 0, wgY 1",
    );
  }
  if (
    cfg.subgroupB &&
    ((cfg.kind ?? "reg") !== "reg" || cfg.texB || !cfg.vec4B || tileN % 8 !== 0 || wgY !== 1)
  ) {
    throw new Error(
      "matmul: subgroupB needs the register kernel, storage vec4 B, tileN % 8 == 0, wgY 1",
    );
  }
}

function header(vA: boolean, vB: boolean, vC: boolean, texA = false, texB = false): string {
  const t = (v: boolean) => (v ? "vec4<f32>" : "f32");
  const L: string[] = [];
  let i = 0;
  const bind = (decl: string) => L.push(`@group(0) @binding(${i++}) ${decl};`);
  if (!texA) bind(`var<storage, read> A: array<${t(vA)}>`);
  if (!texB) bind(`var<storage, read> B: array<${t(vB)}>`);
  bind(`var<storage, read_write> C: array<${t(vC)}>`);
  bind("var<uniform> p: Params");
  if (texA) bind("var tA: texture_2d<f32>");
  if (texB) bind("var tB: texture_2d<f32>");
  const tex = texA || texB ? "\n  shiftA: u32, shiftB: u32, pad1: u32, pad2: u32," : "";
  return `struct Params {
  M: u32, N: u32, K: u32, batch: u32,
  strideA: u32, strideB: u32, strideC: u32, pad: u32,${tex}
};
${L.join("\n")}
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
  if (cfg.subgroupB) return [Math.ceil(ty / cfg.wgX), tx, batch];
  return [Math.max(1, Math.ceil(tx / cfg.wgX)), Math.max(1, Math.ceil(ty / cfg.wgY)), batch];
}

/** Placement of a row-major operand in an rgba32float texture (see {@link matmulTexLayout}). */
export interface MatmulTexLayout {
  /** log2 of the operand rows packed side by side into one texture row (the uniform shiftA/B). */
  shift: number;
  /** Texture width in texels (2^shift · rowLen / 4). */
  width: number;
  /** Texture height in texels (ceil(rows / 2^shift)). */
  height: number;
  /** Bytes of one texture row in the source buffer (a multiple of 256, as copies require). */
  bytesPerRow: number;
}

/**
 * Texture layout for an operand of `rows` rows of `rowLen` f32 (all batches stacked), or null if it
 * cannot be textured: rowLen must be a multiple of 4 and the texture must fit in `maxDim`².
 *
 * copyBufferToTexture needs bytesPerRow to be a multiple of 256, i.e. 64 floats, which a row such as
 * 1376 floats is not; packing 2^shift consecutive rows into one texture row fixes that with a single
 * copy and costs the kernel only a mask and a shift per row index. The smallest such shift is used,
 * raised while the height exceeds maxDim.
 */
export function matmulTexLayout(
  rows: number,
  rowLen: number,
  maxDim: number,
): MatmulTexLayout | null {
  if (rows < 1 || rowLen < 4 || rowLen % 4 !== 0) return null;
  let shift = 0;
  while (((rowLen << shift) * 4) % 256 !== 0) shift++;
  while (Math.ceil(rows / 2 ** shift) > maxDim && (rowLen << shift) / 4 <= maxDim) shift++;
  const width = (rowLen << shift) / 4;
  const height = Math.ceil(rows / 2 ** shift);
  if (width > maxDim || height > maxDim) return null;
  return { shift, width, height, bytesPerRow: width * 16 };
}

// ---------------------------------------------------------------------------------------------
// Register-tiled kernel

function regShader(cfg: MatmulShaderConfig): string {
  const { transA, transB, tileM: TM, tileN: TN, wgX, wgY } = cfg;
  const vA = cfg.vec4A, vB = cfg.vec4B, vC = cfg.vec4C;
  const tA = cfg.texA ?? false, tB = cfg.texB ?? false;
  const sgA = cfg.subgroupA ?? false;
  const sgB = cfg.subgroupB ?? false;
  const TN4 = TN / 4;
  const L: string[] = [];
  const e = (s: string) => L.push("  " + s);

  // Per-thread constant index bases (clamped so that loads never need a branch). A texture operand
  // is addressed by (row, vec4 column) and rows are packed 2^shift per texture row (see
  // matmulTexLayout), so its bases are (x, y) texel pairs.
  e(`let K4 = K >> 2u;`);
  // A
  if (sgA && !transA) {
    // Lane l loads rows m0 + l, m0 + 8 + l, ... of the tile.
    for (let r = 0; r < TM / 8; r++) {
      e(`let arl${r} = (aOff + min(m0 + ${8 * r}u + sgl, M - 1u) * K) >> 2u;`);
    }
  } else if (sgA) {
    // Lane l loads k offset l & 3 of column blocks l >> 2, 2 + (l >> 2), ...
    e(`let M4 = M >> 2u;`);
    e(`let lkk = sgl & 3u;`);
    for (let r = 0; r < TM / 8; r++) {
      e(`let acl${r} = (aOff >> 2u) + min((m0 >> 2u) + ${2 * r}u + (sgl >> 2u), M4 - 1u);`);
    }
    // Per-lane bases for the K tail (no broadcast there).
    for (let j = 0; j < TM / 4; j++) {
      e(`let ac${j} = (aOff >> 2u) + min((m0 >> 2u) + ${j}u, M4 - 1u);`);
    }
  } else if (!transA) {
    if (tA) {
      e(`let aRow = gid.z * (p.strideA / max(K, 1u));`);
      e(`let aMask = (1u << p.shiftA) - 1u;`);
    }
    for (let i = 0; i < TM; i++) {
      if (tA) {
        e(`let ar${i} = aRow + min(m0 + ${i}u, M - 1u);`);
        e(`let ax${i} = (ar${i} & aMask) * K4;`);
        e(`let ay${i} = ar${i} >> p.shiftA;`);
      } else {
        e(
          vA
            ? `let ar${i} = (aOff + min(m0 + ${i}u, M - 1u) * K) >> 2u;`
            : `let ar${i} = aOff + min(m0 + ${i}u, M - 1u) * K;`,
        );
      }
    }
  } else if (vA) {
    e(`let M4 = M >> 2u;`);
    if (tA) {
      e(`let aRow = gid.z * (p.strideA / max(M, 1u));`);
      e(`let aMask = (1u << p.shiftA) - 1u;`);
    }
    const base = tA ? "" : "(aOff >> 2u) + ";
    for (let j = 0; j < TM / 4; j++) {
      e(`let ac${j} = ${base}min((m0 >> 2u) + ${j}u, M4 - 1u);`);
    }
  } else {
    for (let i = 0; i < TM; i++) e(`let ac${i} = aOff + min(m0 + ${i}u, M - 1u);`);
  }
  // B
  if (sgB && transB) {
    for (let r = 0; r < TN / 8; r++) {
      e(`let brl${r} = (bOff + min(n0 + ${8 * r}u + sgl, N - 1u) * K) >> 2u;`);
    }
  } else if (sgB) {
    e(`let N4 = N >> 2u;`);
    e(`let lkk = sgl & 3u;`);
    for (let r = 0; r < TN / 8; r++) {
      e(`let bcl${r} = (bOff >> 2u) + min((n0 >> 2u) + ${2 * r}u + (sgl >> 2u), N4 - 1u);`);
    }
    for (let j = 0; j < TN4; j++) {
      e(`let bc${j} = (bOff >> 2u) + min((n0 >> 2u) + ${j}u, N4 - 1u);`);
    }
  } else if (transB) {
    if (tB) {
      e(`let bRow = gid.z * (p.strideB / max(K, 1u));`);
      e(`let bMask = (1u << p.shiftB) - 1u;`);
    }
    for (let n = 0; n < TN; n++) {
      if (tB) {
        e(`let br${n} = bRow + min(n0 + ${n}u, N - 1u);`);
        e(`let bx${n} = (br${n} & bMask) * K4;`);
        e(`let by${n} = br${n} >> p.shiftB;`);
      } else {
        e(
          vB
            ? `let br${n} = (bOff + min(n0 + ${n}u, N - 1u) * K) >> 2u;`
            : `let br${n} = bOff + min(n0 + ${n}u, N - 1u) * K;`,
        );
      }
    }
  } else if (vB) {
    e(`let N4 = N >> 2u;`);
    if (tB) {
      e(`let bRow = gid.z * (p.strideB / max(N, 1u));`);
      e(`let bMask = (1u << p.shiftB) - 1u;`);
    }
    const base = tB ? "" : "(bOff >> 2u) + ";
    for (let j = 0; j < TN4; j++) {
      e(`let bc${j} = ${base}min((n0 >> 2u) + ${j}u, N4 - 1u);`);
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
      if (sgA) {
        // nk == 4 guaranteed (K % 4 == 0)
        for (let r = 0; r < TM / 8; r++) b(`let al${r} = A[arl${r} + kc];`);
        for (let i = 0; i < TM; i++) {
          b(`let a${i} = subgroupBroadcast(al${i >> 3}, ${i & 7}u);`);
          for (let kk = 0; kk < 4; kk++) aExpr[i].push(`a${i}.${COMP[kk]}`);
        }
      } else if (vA) {
        // nk == 4 guaranteed (K % 4 == 0)
        for (let i = 0; i < TM; i++) {
          b(
            tA
              ? `let a${i} = textureLoad(tA, vec2u(ax${i} + kc, ay${i}), 0);`
              : `let a${i} = A[ar${i} + kc];`,
          );
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
    } else if (sgA && nk === 4) {
      b(`let akl = (k + lkk) * M4;`);
      for (let r = 0; r < TM / 8; r++) b(`let al${r} = A[akl + acl${r}];`);
      for (let kk = 0; kk < 4; kk++) {
        for (let j = 0; j < TM / 4; j++) {
          b(`let a${kk}_${j} = subgroupBroadcast(al${j >> 1}, ${kk + 4 * (j & 1)}u);`);
        }
        for (let i = 0; i < TM; i++) aExpr[i].push(`a${kk}_${i >> 2}.${COMP[i & 3]}`);
      }
    } else {
      for (let kk = 0; kk < nk; kk++) {
        if (vA && tA) {
          b(`let ak${kk} = aRow + k + ${kk}u;`);
          b(`let akx${kk} = (ak${kk} & aMask) * M4;`);
          b(`let aky${kk} = ak${kk} >> p.shiftA;`);
          for (let j = 0; j < TM / 4; j++) {
            b(`let a${kk}_${j} = textureLoad(tA, vec2u(akx${kk} + ac${j}, aky${kk}), 0);`);
          }
          for (let i = 0; i < TM; i++) aExpr[i].push(`a${kk}_${i >> 2}.${COMP[i & 3]}`);
        } else if (vA) {
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
    if (sgB && !transB && nk === 4) {
      b(`let bkl = (k + lkk) * N4;`);
      for (let r = 0; r < TN / 8; r++) b(`let bl${r} = B[bkl + bcl${r}];`);
      for (let kk = 0; kk < 4; kk++) {
        for (let j = 0; j < TN4; j++) {
          b(`let b${kk}_${j} = subgroupBroadcast(bl${j >> 1}, ${kk + 4 * (j & 1)}u);`);
          bExpr[kk].push(`b${kk}_${j}`);
        }
      }
    } else if (sgB && transB) {
      // nk == 4 guaranteed (K % 4 == 0)
      for (let r = 0; r < TN / 8; r++) b(`let bl${r} = B[brl${r} + kc];`);
      for (let n = 0; n < TN; n++) b(`let b${n} = subgroupBroadcast(bl${n >> 3}, ${n & 7}u);`);
      for (let kk = 0; kk < 4; kk++) {
        for (let j = 0; j < TN4; j++) {
          const q = [0, 1, 2, 3].map((t) => `b${4 * j + t}.${COMP[kk]}`);
          bExpr[kk].push(`vec4<f32>(${q.join(", ")})`);
        }
      }
    } else if (!transB) {
      for (let kk = 0; kk < nk; kk++) {
        if (vB && tB) {
          b(`let bk${kk} = bRow + k + ${kk}u;`);
          b(`let bkx${kk} = (bk${kk} & bMask) * N4;`);
          b(`let bky${kk} = bk${kk} >> p.shiftB;`);
          for (let j = 0; j < TN4; j++) {
            b(`let b${kk}_${j} = textureLoad(tB, vec2u(bkx${kk} + bc${j}, bky${kk}), 0);`);
            bExpr[kk].push(`b${kk}_${j}`);
          }
        } else if (vB) {
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
        for (let n = 0; n < TN; n++) {
          b(
            tB
              ? `let b${n} = textureLoad(tB, vec2u(bx${n} + kc, by${n}), 0);`
              : `let b${n} = B[br${n} + kc];`,
          );
        }
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
    const fmaLine = (i: number, j: number, kk: number) =>
      b(`c${i}_${j} = fma(vec4<f32>(${aExpr[i][kk]}), ${bExpr[kk][j]}, c${i}_${j});`);
    // Accumulator by accumulator, its nk FMAs back to back: LLVM then loads and stores each
    // (spilled) accumulator once per k step instead of once per k, measured 1.3-1.4x faster on
    // lavapipe than the k-outer order.
    for (let i = 0; i < TM; i++) {
      for (let j = 0; j < TN4; j++) for (let kk = 0; kk < nk; kk++) fmaLine(i, j, kk);
    }
    return B_;
  };

  const kAlongVec4 = (!transA && vA) || (transB && vB); // implies K % 4 == 0: no tail
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

  return `${header(vA, vB, vC, tA, tB)}
@compute @workgroup_size(${wgX}, ${wgY}, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>${
    sgA || sgB ? ", @builtin(subgroup_invocation_id) sgl: u32" : ""
  }) {
  let M = p.M;
  let N = p.N;
  // K goes through arrayLength so that no loop bound is a pure uniform expression: lavapipe
  // would otherwise "inline" the uniform and re-specialize (recompile) the shader at bind time.
  let K = select(p.K, 0u, arrayLength(&C) == 0u);
  let m0 = gid.${sgB ? "x" : "y"} * ${TM}u;
  let n0 = gid.${sgB ? "y" : "x"} * ${TN}u;
  ${
    sgA
      // m0 is uniform over the (1-D) workgroup; lanes past N stay for the broadcasts.
      ? "if (m0 >= M) { return; }"
      : sgB
      ? "if (n0 >= N) { return; }"
      : "if (m0 >= M || n0 >= N) { return; }"
  }
  let aOff = gid.z * p.strideA;
  let bOff = gid.z * p.strideB;
  let cOff = gid.z * p.strideC;
${L.join("\n")}
}
`;
}

// ---------------------------------------------------------------------------------------------
// Workgroup-memory tiled kernel (for real GPUs): a (tileM·wgY) x (tileN·wgX) block of C per
// workgroup, K staged through workgroup memory SMEM_BK at a time, tileM x tileN accumulators per
// thread in registers. Global loads are vec4 where the operand's contiguous dimension allows it.
// Thread (x, y) owns rows y + i·wgY and vec4 columns x + j·wgX of the block, so neighbouring
// threads read neighbouring workgroup-memory words (no bank conflicts) and the B reads are vec4.

const SMEM_BK = 16;

function smemShader(cfg: MatmulShaderConfig): string {
  const { transA, transB, tileM: TM, tileN: TN, wgX, wgY } = cfg;
  const vA = cfg.vec4A, vB = cfg.vec4B, vC = cfg.vec4C;
  const BM = TM * wgY, BN = TN * wgX, BK = SMEM_BK, BN4 = BN / 4, TN4 = TN / 4;
  const nThreads = wgX * wgY;
  const L: string[] = [];
  const e = (s: string) => L.push("    " + s);

  // Stage A as As[k][m] (f32) and B as Bs[k][n / 4] (vec4), zero-filled past the edges.
  // One "unit" is one global load: a vec4 along the contiguous dimension, or a scalar.
  const stage = (
    units: number,
    decode: string[],
    cond: string,
    load: string,
    zero: string,
    store: string[],
  ) => {
    e(`for (var u = tid; u < ${units}u; u = u + ${nThreads}u) {`);
    for (const d of decode) e(`  ${d}`);
    e(`  var v = ${zero};`);
    e(`  if (${cond}) { v = ${load}; }`);
    for (const st of store) e(`  ${st}`);
    e(`}`);
  };
  const spread = (idx: (t: number) => string) =>
    [0, 1, 2, 3].map((t) => `${idx(t)} = v.${COMP[t]};`);
  if (!transA && vA) {
    stage(
      (BM * BK) / 4,
      [
        `let m = u / ${BK / 4}u;`,
        `let kv = (u % ${BK / 4}u) * 4u;`,
        `let gm = mBase + m;`,
        `let gk = k0 + kv;`,
      ],
      "gm < M && gk < K",
      "A[(aOff + gm * K + gk) >> 2u]",
      "vec4<f32>(0.0)",
      spread((t) => `As[(kv + ${t}u) * ${BM}u + m]`),
    );
  } else if (vA) {
    stage(
      (BM * BK) / 4,
      [
        `let k = u / ${BM / 4}u;`,
        `let mv = (u % ${BM / 4}u) * 4u;`,
        `let gm = mBase + mv;`,
        `let gk = k0 + k;`,
      ],
      "gm < M && gk < K",
      "A[(aOff + gk * M + gm) >> 2u]",
      "vec4<f32>(0.0)",
      spread((t) => `As[k * ${BM}u + mv + ${t}u]`),
    );
  } else {
    stage(
      BM * BK,
      [`let m = u % ${BM}u;`, `let k = u / ${BM}u;`, `let gm = mBase + m;`, `let gk = k0 + k;`],
      "gm < M && gk < K",
      transA ? "A[aOff + gk * M + gm]" : "A[aOff + gm * K + gk]",
      "0.0",
      [`As[k * ${BM}u + m] = v;`],
    );
  }
  if (!transB && vB) {
    stage(
      (BN * BK) / 4,
      [
        `let k = u / ${BN4}u;`,
        `let nv = u % ${BN4}u;`,
        `let gn = nBase + nv * 4u;`,
        `let gk = k0 + k;`,
      ],
      "gn < N && gk < K",
      "B[(bOff + gk * N + gn) >> 2u]",
      "vec4<f32>(0.0)",
      [`Bs[k * ${BN4}u + nv] = v;`],
    );
  } else if (vB) {
    stage(
      (BN * BK) / 4,
      [
        `let n = u / ${BK / 4}u;`,
        `let kv = (u % ${BK / 4}u) * 4u;`,
        `let gn = nBase + n;`,
        `let gk = k0 + kv;`,
      ],
      "gn < N && gk < K",
      "B[(bOff + gn * K + gk) >> 2u]",
      "vec4<f32>(0.0)",
      spread((t) => `Bs[(kv + ${t}u) * ${BN4}u + (n >> 2u)][n & 3u]`),
    );
  } else {
    stage(
      BN * BK,
      [`let n = u % ${BN}u;`, `let k = u / ${BN}u;`, `let gn = nBase + n;`, `let gk = k0 + k;`],
      "gn < N && gk < K",
      transB ? "B[bOff + gn * K + gk]" : "B[bOff + gk * N + gn]",
      "0.0",
      [`Bs[k * ${BN4}u + (n >> 2u)][n & 3u] = v;`],
    );
  }
  e(`workgroupBarrier();`);
  e(`for (var kk = 0u; kk < ${BK}u; kk = kk + 1u) {`);
  for (let i = 0; i < TM; i++) e(`  let a${i} = As[kk * ${BM}u + ${i * wgY}u + lid.y];`);
  for (let j = 0; j < TN4; j++) e(`  let b${j} = Bs[kk * ${BN4}u + ${j * wgX}u + lid.x];`);
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) e(`  c${i}_${j} = fma(vec4<f32>(a${i}), b${j}, c${i}_${j});`);
  }
  e(`}`);
  e(`workgroupBarrier();`);

  const S: string[] = [];
  for (let i = 0; i < TM; i++) {
    S.push(`  let m${i} = mBase + ${i * wgY}u + lid.y;`);
    S.push(`  if (m${i} < M) {`);
    for (let j = 0; j < TN4; j++) {
      S.push(`    let n${i}_${j} = nBase + ${4 * j * wgX}u + 4u * lid.x;`);
      S.push(`    let o${i}_${j} = cOff + m${i} * N + n${i}_${j};`);
      if (vC) {
        S.push(`    if (n${i}_${j} < N) { C[o${i}_${j} >> 2u] = c${i}_${j}; }`);
      } else {
        for (let t = 0; t < 4; t++) {
          S.push(
            `    if (n${i}_${j} + ${t}u < N) { C[o${i}_${j} + ${t}u] = c${i}_${j}.${COMP[t]}; }`,
          );
        }
      }
    }
    S.push(`  }`);
  }
  const accs: string[] = [];
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN4; j++) accs.push(`  var c${i}_${j} = vec4<f32>(0.0);`);
  }
  return `${header(vA, vB, vC)}
var<workgroup> As: array<f32, ${BM * BK}>;
var<workgroup> Bs: array<vec4<f32>, ${BK * BN4}>;

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
${accs.join("\n")}
  for (var k0 = 0u; k0 < K; k0 = k0 + ${BK}u) {
${L.join("\n")}
  }
${S.join("\n")}
}
`;
}

// ---------------------------------------------------------------------------------------------
// Config table

/**
 * Kernel families of {@link chooseMatmulConfig}: `"auto"` picks per adapter and shape; the others
 * force one family where the shape and device allow it (else the next one down the "auto" chain),
 * for tests and same-run comparisons in bench/.
 *  - `"subgroupB"`: register tiles, B loads shared across a subgroup of 8 (cpu, subgroups of 8).
 *  - `"subgroupA"`: register tiles, A loads shared across a subgroup of 8.
 *  - `"register"`: register tiles, every invocation loads its own operands.
 *  - `"workgroupMemory"`: the workgroup-memory tiled kernel (the "gpu" adapter default).
 */
export type MatmulKernel = "auto" | "subgroupB" | "subgroupA" | "register" | "workgroupMemory";

/** Options for {@link chooseMatmulConfig}. */
export interface MatmulChooseOptions {
  /**
   * The device has the `subgroups` feature and a fixed subgroup size (adapter subgroupMinSize ==
   * subgroupMaxSize), or undefined. The subgroup kernels need a size of exactly 8.
   */
  subgroupSize?: number;
  /** Kernel family to use where possible (default `"auto"`). */
  kernel?: MatmulKernel;
}

/**
 * Pick the kernel config for a shape (a fixed table, measured on lavapipe; no runtime autotuning,
 * which would cost a cold compile per candidate).
 *
 * The vec4 flags assume contiguous operands: batch strides equal to the matrix size (or 0).
 * For "cpu" (llvmpipe/lavapipe) this returns register-tiled configs; for "gpu" the
 * workgroup-memory tiled one.
 *
 * On lavapipe every storage load is a scalar loop over the 8 SIMD lanes (about 100 cycles per
 * vec4 for the subgroup), while the FMAs of a 256-accumulator tile run near the FMA peak when the
 * loads are taken out (measured ~190 GFLOP/s), so the table minimizes loads per FMA:
 *  - subgroupB 8x32 (lanes along M, each 8 rows x 32 columns, B shared): per 4 k a lane loads 8
 *    A vec4 of its own rows and 4 of the B vec4 the whole subgroup needs, 12 loads per 256 vec4
 *    FMAs. Its 64x32 subgroup tile is the squarest for 256 accumulators per lane; 512 (8x64,
 *    16x32) measured no faster.
 *  - subgroupA 16x16 (lanes along N, A shared) where B is not vec4-able: 18 loads per 256 FMAs.
 *  - register 16x16 otherwise: 32 loads per 256 FMAs.
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
  const vec4A = (transA ? M : K) % 4 === 0;
  const vec4B = (transB ? K : N) % 4 === 0;
  const vec4C = N % 4 === 0;
  const base = { transA, transB, vec4A, vec4B, vec4C };
  const want = opts.kernel ?? "auto";
  if (want === "workgroupMemory" || (want === "auto" && adapterKind === "gpu")) {
    // 128x128 blocks (8x8 per thread) once both output dimensions fill them, else 64x64.
    const t = M >= 512 && N >= 512 ? 8 : 4;
    return { ...base, tileM: t, tileN: t, wgX: 16, wgY: 16, kind: "smem" };
  }
  const sg8 = opts.subgroupSize === 8;
  if (sg8 && vec4B && (want === "auto" || want === "subgroupB")) {
    return { ...base, tileM: 8, tileN: 32, wgX: 8, wgY: 1, kind: "reg", subgroupB: true };
  }
  if (sg8 && vec4A && want !== "register") {
    return { ...base, tileM: 16, tileN: 16, wgX: 8, wgY: 1, kind: "reg", subgroupA: true };
  }
  return { ...base, tileM: 16, tileN: 16, wgX: 8, wgY: 2, kind: "reg" };
}
