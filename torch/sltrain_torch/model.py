"""Our LLaMA (models/llama.ts) and its block-linear parameterizations in PyTorch.

The same math as our kernels: pre-norm RMSNorm (eps inside the square root), rotate-half RoPE
(frequencies base^(-2i/Dh) in float64 rounded to f32, angles f32(pos · freq), as ops/rope.ts),
causal softmax attention with scale 1/√Dh, SwiGLU `down(silu(gate(x)) · up(x))`, untied head, no
biases, mean cross-entropy over targets ≠ -100. Block linears (q, k, v, o, gate, up, down) are

- dense:   W
- lowrank: s·B·A                 (s = alpha / rank; never formed: x·Aᵀ·Bᵀ·s)
- sltrain: s·B·A ⊕_I V           (W = (s·B)·A, then V added at the sorted flat indices I)
- relora:  W_frozen + s·B·A

Weights may be stored as bfloat16 (our `--dtype bf16`): every op then reads them widened to f32
and computes in f32, as our kernels do; norms stay f32. Parameter names are our checkpoint paths
(`embed`, `layers.0.q.A`, ..., `lmHead`), buffers `layers.N.<linear>.support` / `.frozen`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class Config:
    """LLaMA shapes in our field names (models/config.ts LlamaConfig); `raw` keeps the dict."""

    def __init__(self, d):
        self.raw = dict(d)
        self.vocab = d["vocabSize"]
        self.hidden = d["hidden"]
        self.intermediate = d["intermediate"]
        self.heads = d["heads"]
        self.layers = d["layers"]
        self.eps = d["rmsNormEps"]
        self.rope_base = d["ropeBase"]
        self.init_std = d["initStd"]
        self.max_seq = d.get("maxSeqLen")

    def shapes(self):
        """[out, in] of the seven block linears, in our order."""
        h, f = self.hidden, self.intermediate
        return {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h),
                "gate": (f, h), "up": (f, h), "down": (h, f)}


class Method:
    """Block-linear parameterization (models/method.ts LinearMethod)."""

    def __init__(self, kind, rank=0, alpha=0.0, delta=0.0):
        if kind not in ("dense", "lowrank", "sltrain", "relora"):
            raise ValueError(f"unknown linear kind {kind!r}")
        self.kind, self.rank, self.alpha, self.delta = kind, rank, alpha, delta

    @property
    def scale(self):
        return 1.0 if self.kind == "dense" else self.alpha / self.rank

    @staticmethod
    def of_run(run):
        """The method of one of our RunConfig dicts (cli/run_config.ts linearMethod)."""
        m = run["method"]
        if m in ("full", "galore", "fira", "apollo", "apollo-mini", "golore", "spam",
                 "stable-spam"):
            return Method("dense")
        kind = "lowrank" if m == "loro" else m
        return Method(kind, run["rank"], run["alpha"], run["delta"])


def sparse_nnz(delta, out, inp):
    """⌊δ·out·in⌋, computed as the reference (and models/method.ts) does."""
    return int(delta * (out * inp))


class BlockLinear(nn.Module):
    """y = x·Wᵀ with W as `method` parameterizes it; `support` is SLTrain's sorted flat I (int64)."""

    def __init__(self, method, out, inp, dtype=torch.float32):
        super().__init__()
        self.method, self.out, self.inp = method, out, inp
        k, r = method.kind, method.rank
        if k == "dense":
            self.w = nn.Parameter(torch.empty(out, inp, dtype=dtype))
            return
        self.A = nn.Parameter(torch.empty(r, inp, dtype=dtype))
        self.B = nn.Parameter(torch.empty(out, r, dtype=dtype))
        if k == "sltrain":
            nnz = sparse_nnz(method.delta, out, inp)
            self.V = nn.Parameter(torch.empty(nnz, dtype=dtype))
            self.register_buffer("support", torch.zeros(nnz, dtype=torch.int64))
        if k == "relora":
            self.register_buffer("frozen", torch.empty(out, inp, dtype=dtype))

    def weight(self, dtype=torch.float32):
        """The dense W [out, in] in `dtype` (transient for the factored kinds)."""
        k, s = self.method.kind, self.method.scale
        if k == "dense":
            return self.w.to(dtype)
        ba = (self.B.to(dtype) * s) @ self.A.to(dtype)
        if k == "sltrain":
            return ba.reshape(-1).index_add(0, self.support, self.V.to(dtype)).view(self.out, self.inp)
        if k == "relora":
            return self.frozen.to(dtype) + ba
        return ba

    def forward(self, x):
        if self.method.kind == "lowrank":
            # Never forms B·A, like ops/sltrain_linear.ts lowRankLinear.
            return F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype)) * self.method.scale
        return F.linear(x, self.weight(x.dtype))


def rms_norm(x, w, eps):
    """x / sqrt(mean(x²) + eps) · w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.to(x.dtype)


def rope_tables(t, dh, base, dtype):
    """cos, sin [t, dh/2]: angle = f32(pos · f32(base^(-2i/Dh))), as ops/rope.ts computes it."""
    half = dh // 2
    freqs = torch.tensor([math.pow(base, -2 * i / dh) for i in range(half)], dtype=torch.float64)
    freqs = freqs.to(torch.float32)
    angle = (torch.arange(t, dtype=torch.float32)[:, None] * freqs[None, :]).double()
    return angle.cos().to(dtype), angle.sin().to(dtype)


def rope(x, cos, sin):
    """Rotate-half RoPE on [..., T, Dh]: pairs (x[i], x[i + Dh/2])."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Block(nn.Module):
    """Pre-norm decoder block: attention and SwiGLU MLP with residuals."""

    def __init__(self, cfg, method, dtype=torch.float32, linear=BlockLinear):
        super().__init__()
        # Gains as bare parameters, so their paths are our checkpoint's (`layers.0.attnNorm`).
        norm = torch.float64 if dtype == torch.float64 else torch.float32
        self.attnNorm = nn.Parameter(torch.ones(cfg.hidden, dtype=norm))
        self.mlpNorm = nn.Parameter(torch.ones(cfg.hidden, dtype=norm))
        self.eps, self.heads = cfg.eps, cfg.heads
        for name, (o, i) in cfg.shapes().items():
            self.add_module(name, linear(method, o, i, dtype))

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        h = self.heads
        dh = d // h

        def split(y):
            return y.view(b, t, h, dh).transpose(1, 2)

        n1 = rms_norm(x, self.attnNorm, self.eps)
        q = rope(split(self.q(n1)), cos, sin)
        k = rope(split(self.k(n1)), cos, sin)
        v = split(self.v(n1))
        scores = (q @ k.transpose(-1, -2)).masked_fill(mask, float("-inf"))
        att = torch.softmax(scores * (1.0 / math.sqrt(dh)), dim=-1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        n2 = rms_norm(x, self.mlpNorm, self.eps)
        return x + self.down(F.silu(self.gate(n2)) * self.up(n2))


class Llama(nn.Module):
    """Embedding, blocks, final RMSNorm, untied head; `loss` is the mean next-token CE.

    `dtype` is the storage of the 2-D weights and SLTrain's V (float32, bfloat16, or float64 for
    reference replays); activations are float32 (float64 for float64 weights)."""

    def __init__(self, cfg, method, dtype=torch.float32, linear=BlockLinear):
        super().__init__()
        self.cfg, self.method = cfg, method
        self.embed = nn.Parameter(torch.empty(cfg.vocab, cfg.hidden, dtype=dtype))
        self.layers = nn.ModuleList(Block(cfg, method, dtype, linear) for _ in range(cfg.layers))
        norm = torch.float64 if dtype == torch.float64 else torch.float32
        self.finalNorm = nn.Parameter(torch.ones(cfg.hidden, dtype=norm))
        self.lmHead = nn.Parameter(torch.empty(cfg.vocab, cfg.hidden, dtype=dtype))
        self._rope = {}

    @property
    def compute_dtype(self):
        return torch.float64 if self.embed.dtype == torch.float64 else torch.float32

    def _tables(self, t, dtype, device):
        key = (t, dtype, device)
        if key not in self._rope:
            dh = self.cfg.hidden // self.cfg.heads
            cos, sin = rope_tables(t, dh, self.cfg.rope_base, dtype)
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            self._rope[key] = (cos.to(device), sin.to(device), mask.to(device))
        return self._rope[key]

    def hidden_states(self, tokens):
        x = F.embedding(tokens, self.embed).to(self.compute_dtype)
        cos, sin, mask = self._tables(tokens.shape[1], x.dtype, x.device)
        for block in self.layers:
            x = block(x, cos, sin, mask)
        return rms_norm(x, self.finalNorm, self.cfg.eps)

    def logits(self, tokens):
        """[B, T, V] in the compute dtype (float32, or float64 for float64 weights)."""
        h = self.hidden_states(tokens)
        return F.linear(h, self.lmHead.to(h.dtype))

    def loss_sum(self, inputs, targets):
        """(summed CE over targets ≠ -100, their count): a distributed step divides the sum by the
        global count, so any split of a batch gives the same mean."""
        logits = self.logits(inputs)
        t = targets.reshape(-1)
        s = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t, ignore_index=-100,
                            reduction="sum")
        return s, int((t != -100).sum())

    def loss(self, inputs, targets):
        """Mean cross-entropy over targets ≠ -100 (targets already aligned with inputs)."""
        logits = self.logits(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100)

    def forward(self, inputs, targets):
        return self.loss_sum(inputs, targets)[0]

    def eval_sums(self, inputs, targets):
        """(summed CE, count) over targets ≠ -100, for token-weighted validation loss."""
        with torch.no_grad():
            s, c = self.loss_sum(inputs, targets)
        return s.item(), c

    def block_weights(self):
        """[(path, parameter)] of the dense block-linear weights (GaLore's targets)."""
        return [(n, p) for n, p in self.named_parameters()
                if n.startswith("layers.") and n.endswith(".w")]


def our_param_paths(cfg, method):
    """Our checkpoint's parameter paths in our leaf order (core/tree.ts over models/llama.ts's
    params: embed, each layer's attnNorm, q, k, v, o, mlpNorm, gate, up, down, finalNorm, lmHead);
    the optimizer moments of a checkpoint are stored in this order."""
    factors = {"dense": ("w",), "lowrank": ("A", "B"), "relora": ("A", "B"),
               "sltrain": ("A", "B", "V")}[method.kind]
    out = ["embed"]
    for i in range(cfg.layers):
        for name in ("attnNorm", "q", "k", "v", "o", "mlpNorm", "gate", "up", "down"):
            out += [f"layers.{i}.{name}"] if name.endswith("Norm") else \
                [f"layers.{i}.{name}.{f}" for f in factors]
    return out + ["finalNorm", "lmHead"]


def init_fresh(model, scheme, seed):
    """Draws new weights with torch's RNG (for reference experiments, not for continuing a run).

    `scheme`:
    - "hf": the reference code's (HF LLaMA `_init_weights`: every Linear and Embedding N(0, 0.02),
      then SLTrain's own A ~ U(±1/√in), B = 0, V ~ U(±1/√in), support = sorted randperm[:nnz]);
      low-rank B ~ U(±1/√r) and ReLoRA's frozen W ~ N(0, 0.02), as ours. Same distributions as
      our initLlama.
    - "torch": PyTorch's module defaults, as an implementation that never calls an init would get:
      nn.Linear's kaiming_uniform(a=√5), i.e. U(±1/√in), for dense block linears and the head;
      nn.Embedding's N(0, 1) for the embedding. Low-rank/SLTrain factors as in "hf".
    - "torch-linear": only the Linear part of "torch" (embedding N(0, 0.02)).
    - "torch-embed": only the Embedding part of "torch" (linears N(0, 0.02)).
    """
    g = torch.Generator().manual_seed(seed)
    std = model.cfg.init_std
    kaiming_linear = scheme in ("torch", "torch-linear")
    embed_n01 = scheme in ("torch", "torch-embed")

    def uniform(t, bound):
        t.uniform_(-bound, bound, generator=g)

    with torch.no_grad():
        model.embed.normal_(0, 1.0 if embed_n01 else std, generator=g)
        if kaiming_linear:
            uniform(model.lmHead, 1 / math.sqrt(model.cfg.hidden))
        else:
            model.lmHead.normal_(0, std, generator=g)
        for block in model.layers:
            block.attnNorm.fill_(1)
            block.mlpNorm.fill_(1)
            for name in LINEARS:
                lin = getattr(block, name)
                k = lin.method.kind
                if k == "dense":
                    if kaiming_linear:
                        uniform(lin.w, 1 / math.sqrt(lin.inp))
                    else:
                        lin.w.normal_(0, std, generator=g)
                    continue
                if k == "relora":
                    lin.frozen.normal_(0, std, generator=g)
                uniform(lin.A, 1 / math.sqrt(lin.inp))
                if k == "lowrank":
                    uniform(lin.B, 1 / math.sqrt(lin.method.rank))
                else:
                    lin.B.zero_()
                if k == "sltrain":
                    n = lin.out * lin.inp
                    lin.support.copy_(torch.randperm(n, generator=g)[: lin.V.numel()].sort()[0])
                    uniform(lin.V, 1 / math.sqrt(lin.inp))
        model.finalNorm.fill_(1)
