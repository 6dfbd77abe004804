"""Our AdamW (optim/adam_f32.ts, optim/adam8bit.ts) and learning-rate schedule in PyTorch.

The arithmetic of our kernels, in float32 with every per-step scalar rounded to float32 once:
m' = β1·m + (1 − β1)·g, v' = β2·v + (1 − β2)·g², u = stepSize·m'/(√v'·invSqrtBc2 + eps) + decay·p
with stepSize = −lr/(1 − β1ᵗ), invSqrtBc2 = 1/√(1 − β2ᵗ), decay = −lr·λ; u is stored in the
gradient's dtype and p ← p + u. The learning rate of update t (0-based) is schedule(t), the count of
updates living in the state, as in optim/adam_core.ts.

With `eight_bit`, tensors of at least 4096 elements keep both moments as bitsandbytes-style
block-wise codes (ops/quant_maps.ts): one byte per element indexing the signed (m) or unsigned (v)
dynamic map, times an f32 absmax per 256 elements; each step dequantizes, updates in f32 and
requantizes to the nearest code (ties to the lower code), so a run continues on the same codes.
"""

import math

import numpy as np
import torch

QUANT_BLOCK = 256
MIN_8BIT_SIZE = 4096


def warmup_cosine_multiplier(step, warmup, total, min_ratio=0.1):
    """s/warmup for s < warmup, else min + (1-min)·½(1 + cos(π(s-warmup)/(N-warmup)))."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_schedule(run):
    """Update index -> learning rate of one of our RunConfig dicts (runs without resets)."""
    return lambda s: run["lr"] * warmup_cosine_multiplier(s, run["warmup"], run["steps"],
                                                          run["minLrRatio"])


def dynamic_map(signed):
    """The 256 sorted codes of bitsandbytes' dynamic map, as ops/quant_maps.ts builds them."""
    data = []
    for i in range(7):
        k = 2**i if signed else 2 ** (i + 1)
        scale = 10.0 ** (i - 6)
        for j in range(k):
            mid = scale * (((0.1 + 0.9 * j / k) + (0.1 + 0.9 * (j + 1) / k)) / 2)
            data += [mid, -mid] if signed else [mid]
    data += [0.0, 1.0]
    return torch.tensor(np.array(sorted(data), dtype=np.float32))


MAP_SIGNED, MAP_UNSIGNED = dynamic_map(True), dynamic_map(False)


class Quantized:
    """A block-quantized moment: `codes` uint8 [n], `absmax` float32 [ceil(n / block)]."""

    def __init__(self, codes, absmax, block=QUANT_BLOCK):
        self.codes, self.absmax, self.block = codes, absmax, block

    @staticmethod
    def zeros(n, device=None):
        return Quantized(torch.zeros(n, dtype=torch.uint8, device=device),
                         torch.zeros(-(-n // QUANT_BLOCK), dtype=torch.float32, device=device))


def _blocks(x, block):
    n = x.numel()
    pad = (-n) % block
    return torch.nn.functional.pad(x.reshape(-1), (0, pad)).view(-1, block), n


def dequantize(q, qmap):
    """The float32 values [n] that `q` stands for under code book `qmap`."""
    vals = qmap.to(q.codes.device)[q.codes.long()]
    b, n = _blocks(vals, q.block)
    return (b * q.absmax[:, None]).reshape(-1)[:n]


def nearest_code(qmap, x):
    """Index of the code nearest to each x in the sorted `qmap`, ties to the lower index."""
    qmap = qmap.to(x.device)
    hi = torch.searchsorted(qmap, x.contiguous()).clamp(1, qmap.numel() - 1)
    lo = hi - 1
    return torch.where(x - qmap[lo] <= qmap[hi] - x, lo, hi).to(torch.uint8)


def quantize(x, qmap, block=QUANT_BLOCK):
    """Block-wise codes of float32 `x` (flat): absmax per block, codes of x·(1/absmax)."""
    b, n = _blocks(x.float(), block)
    absmax = b.abs().amax(1)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    codes = nearest_code(qmap, (b * inv[:, None]).reshape(-1))[:n]
    return Quantized(codes, absmax, block)


def _f32(x):
    return float(np.float32(x))


class AdamW:
    """AdamW over `params` (a list in our leaf order), f32 or 8-bit moments, our arithmetic.

    State: `count` (updates so far) and `m`, `v` (one per parameter: a float32 tensor, or
    `Quantized` with `eight_bit`). `schedule(count)` gives each update's learning rate."""

    def __init__(self, params, schedule, weight_decay=0.0, eight_bit=False, betas=(0.9, 0.999),
                 eps=1e-8):
        self.params, self.schedule, self.weight_decay = list(params), schedule, weight_decay
        self.eight_bit, self.betas, self.eps = eight_bit, betas, eps
        self.count = 0
        self.m = [self._zero(p) for p in self.params]
        self.v = [self._zero(p) for p in self.params]

    def _zero(self, p):
        if self.eight_bit and p.numel() >= MIN_8BIT_SIZE:
            return Quantized.zeros(p.numel(), p.device)
        return torch.zeros(p.shape, dtype=torch.float32, device=p.device)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        t = self.count + 1
        lr = self.schedule(self.count)
        step_size = _f32(-lr / (1 - b1**t))
        inv_sqrt_bc2 = _f32(1 / math.sqrt(1 - b2**t))
        decay = _f32(-lr * self.weight_decay)
        b1f, b2f, eps = _f32(b1), _f32(b2), _f32(self.eps)
        c1, c2 = float(np.float32(1) - np.float32(b1f)), float(np.float32(1) - np.float32(b2f))
        for i, p in enumerate(self.params):
            if p.grad is None:
                raise RuntimeError(f"AdamW: parameter {i} has no gradient")
            g = p.grad.float().reshape(-1)
            quant = isinstance(self.m[i], Quantized)
            m = dequantize(self.m[i], MAP_SIGNED) if quant else self.m[i].reshape(-1)
            v = dequantize(self.v[i], MAP_UNSIGNED) if quant else self.v[i].reshape(-1)
            m = m * b1f + g * c1
            v = v * b2f + (g * g) * c2
            u = (m * step_size) / (v.sqrt() * inv_sqrt_bc2 + eps)
            if decay != 0:
                u = u + p.float().reshape(-1) * decay
            u = u.to(p.grad.dtype).float()
            p.copy_((p.float().reshape(-1) + u).view(p.shape).to(p.dtype))
            if quant:
                self.m[i], self.v[i] = quantize(m, MAP_SIGNED), quantize(v, MAP_UNSIGNED)
            else:
                self.m[i], self.v[i] = m.view(p.shape), v.view(p.shape)
        self.count = t
