/**
 * Causal self-attention as fused kernels in the FlashAttention style: one forward kernel (online
 * softmax over key blocks, saving only the per-row log-sum-exp) and a two-kernel backward that
 * recomputes the probabilities block by block (dQ with D_i = rowsum(dO·O); then dK, dV). No
 * [B, H, T, T] tensor exists at any point, so memory grows with T, not T².
 *
 * q, k, v come in the layout the projections produce, [B, T, H, Dh] (a [B, T, D] activation viewed
 * per head), and the output goes out in it, so the model needs no transposes around attention.
 * RoPE is folded in: one pre-pass rotates q and k together (kept for backward), and the backward
 * kernels rotate dq and dk back as they store them. Kernels are in ./flash_attention_wgsl.ts;
 * the composition it replaces (ops/attention.ts) is its float64-checked reference in tests.
 * @module
 */
import { deviceInfo } from "../core/device.ts";
import { assertF32 } from "../core/dtype.ts";
import { DeviceLimitError, ShapeError } from "../core/errors.ts";
import { fmtShape, shapesEqual } from "../core/shape.ts";
import { isRecording, recordOp } from "../core/tape.ts";
import { Tensor } from "../core/tensor.ts";
import {
  attentionBackwardKVKernel,
  attentionBackwardQKernel,
  attentionForwardKernel,
  type AttentionKernelConfig,
  attentionWorkgroups,
  MAX_ATTENTION_HEAD_DIM,
  ropeQKKernel,
} from "./flash_attention_wgsl.ts";
import { fusedTarget } from "./fused_target.ts";
import { checkLoopBudget } from "./loop.ts";
import { ropeFrequencies } from "./rope.ts";

export {
  type AttentionKernelConfig,
  type AttentionVariant,
  MAX_ATTENTION_HEAD_DIM,
} from "./flash_attention_wgsl.ts";

/** Options of {@link flashAttention}. */
export interface FlashAttentionOptions {
  /**
   * Rotate q and k by rotate-half RoPE (HF LLaMA's convention, position t for row t) with this
   * base, e.g. 10000; omitted: no RoPE.
   */
  ropeBase?: number;
}

// Workgroup bytes of the largest kernel (dK/dV: q and dO tiles plus two scalars per row).
const tileBytes = (wg: number, dh: number) => wg * (2 * dh + 2) * 4;

/**
 * The kernel config for head dim `dh`: on software adapters with subgroups of 8 the subgroup
 * kernels; on real GPUs tiles in workgroup memory, as many rows (up to 64) as the device's
 * workgroup memory allows (`setFusedTarget("gpu")` forces this one); on software adapters without
 * subgroups (GL) tiles of 8 rows: llvmpipe's GL path turns dynamically indexed workgroup arrays
 * into branch ladders, and with 64-row tiles a Dh = 32 backward took 100 s to compile (8 rows:
 * 3 s; it then runs at 1.16x the composition's CPU time at the tiny model's shapes).
 */
export function attentionConfig(dh: number, rope: boolean): AttentionKernelConfig {
  const { subgroupSize, limits } = deviceInfo();
  const sg = subgroupSize === 8 && fusedTarget() === "cpu";
  // Two rows per lane at Dh <= 64, where they pay and four do not (bench/NOTES.md); one above,
  // where the unrolled shader would take long to compile.
  if (sg) return { dh, variant: "subgroup", wg: 8, rows: dh <= 64 ? 2 : 1, rope };
  const wg = (fusedTarget() === "cpu" ? [8] : [64, 32, 16, 8]).find((w) =>
    tileBytes(w, dh) <= limits.maxComputeWorkgroupStorageSize &&
    w <= limits.maxComputeInvocationsPerWorkgroup
  );
  if (wg === undefined) {
    throw new DeviceLimitError(
      `flashAttention: head dim ${dh} needs ${tileBytes(8, dh)} bytes of workgroup memory, over ` +
        `the device's maxComputeWorkgroupStorageSize of ${limits.maxComputeWorkgroupStorageSize}`,
    );
  }
  return { dh, variant: "workgroup", wg, rows: 1, rope };
}

function check(op: string, q: Tensor, k: Tensor, v: Tensor, ropeBase: number | undefined): void {
  assertF32(op, ["q", q], ["k", k], ["v", v]);
  if (q.rank !== 4 || !shapesEqual(q.shape, k.shape) || !shapesEqual(q.shape, v.shape)) {
    throw new ShapeError(
      `${op}: q, k, v must have equal shapes [B, T, H, Dh], got ${fmtShape(q.shape)}, ${
        fmtShape(k.shape)
      }, ${fmtShape(v.shape)}`,
    );
  }
  const dh = q.shape[3];
  if (dh > MAX_ATTENTION_HEAD_DIM) {
    throw new ShapeError(
      `${op}: head dim ${dh} is over the supported ${MAX_ATTENTION_HEAD_DIM} (q ${
        fmtShape(q.shape)
      })`,
    );
  }
  if (ropeBase !== undefined) {
    if (!(ropeBase > 0)) throw new ShapeError(`${op}: ropeBase must be positive, got ${ropeBase}`);
    if (dh % 2 !== 0) {
      throw new ShapeError(`${op}: RoPE needs an even head dim, got q ${fmtShape(q.shape)}`);
    }
  }
}

/**
 * Causal self-attention of `q`, `k`, `v` [B, T, H, Dh] (f32, equal shapes, Dh <= 256):
 * `softmax(q·kᵀ / sqrt(Dh) + causal mask) · v` per batch and head -> [B, T, H, Dh]; with
 * `ropeBase`, q and k are first rotated by RoPE (positions 0..T-1). Equals
 * `causalSelfAttention(rope(q'), rope(k'), v')` on the [B, H, T, Dh] transposes, without forming
 * the [B, H, T, T] scores. Differentiable with respect to q, k, v.
 */
export function flashAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  opts: FlashAttentionOptions = {},
): Tensor {
  const op = "flashAttention";
  const { ropeBase } = opts;
  check(op, q, k, v, ropeBase);
  const [b, t, h, dh] = q.shape;
  const o = Tensor.empty(q.shape);
  if (o.size === 0) return o;
  const rope = ropeBase !== undefined;
  const cfg = attentionConfig(dh, rope);
  checkLoopBudget(op, Math.ceil(t / 8) + Math.ceil(t / cfg.wg) + 1, `a sequence of ${t}`);
  const freqs = rope ? ropeFrequencies(dh / 2, ropeBase) : [];
  const uniforms = { T: t, H: h, scale: 1 / Math.sqrt(dh), freqs };
  const wgs = attentionWorkgroups(cfg, b, t, h);
  let [qr, kr] = [q, k];
  if (rope) {
    [qr, kr] = [Tensor.empty(q.shape), Tensor.empty(k.shape)];
    ropeQKKernel({ q, k, qr, kr }, { n: q.size / 2, T: t, H: h, half: dh / 2, freqs });
  }
  const lse = Tensor.empty([b, h, t]);
  attentionForwardKernel(cfg)({ q: qr, k: kr, v, o, lse }, uniforms, wgs);
  if (!isRecording()) {
    lse.dispose();
    if (rope) [qr, kr].forEach((x) => x.dispose());
    return o;
  }
  recordOp(op, [q, k, v], o, (g) => {
    const [dq, dk, dv] = [q, k, v].map((x) => Tensor.empty(x.shape));
    const dd = Tensor.empty([b, h, t]);
    attentionBackwardQKernel(cfg)({ q: qr, k: kr, v, o, dout: g, lse, dq, dd }, uniforms, wgs);
    attentionBackwardKVKernel(cfg)({ q: qr, k: kr, v, dout: g, lse, dd, dk, dv }, uniforms, wgs);
    dd.dispose();
    return [dq, dk, dv];
  }, rope ? [qr, kr, lse] : [lse]);
  return o;
}
