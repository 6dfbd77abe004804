"""PyTorch reference of our LLaMA (models/llama.ts) and its block-linear parameterizations.

Written from the same math as our code, for step-for-step comparison and for timing beside us:
pre-norm RMSNorm (eps inside the square root), rotate-half RoPE (frequencies base^(-2i/Dh)
computed in float64 and rounded to f32, as ops/rope.ts does), causal softmax attention with scale
1/sqrt(Dh), SwiGLU `down(silu(gate(x)) * up(x))`, untied head, no biases, mean cross-entropy over
targets != -100. Block linears (q, k, v, o, gate, up, down) are one of

- dense:   W
- lowrank: s·B·A                      (s = alpha / rank)
- sltrain: s·B·A ⊕_I V                (W = (s·B)·A, then V scatter-added at flat indices I)
- relora:  W_frozen + s·B·A

Parameter names follow our checkpoint paths (`embed`, `layers.0.q.A`, ...), so a checkpoint
written by cli/checkpoint.ts loads with `load_params`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class Config:
    """LLaMA shapes in our field names (models/config.ts LlamaConfig)."""

    def __init__(self, d):
        self.vocab = d["vocabSize"]
        self.hidden = d["hidden"]
        self.intermediate = d["intermediate"]
        self.heads = d["heads"]
        self.layers = d["layers"]
        self.eps = d["rmsNormEps"]
        self.rope_base = d["ropeBase"]
        self.init_std = d["initStd"]

    def shapes(self):
        """[out, in] of the seven block linears, in our order."""
        h, f = self.hidden, self.intermediate
        return {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h),
                "gate": (f, h), "up": (f, h), "down": (h, f)}


class Method:
    """Block-linear parameterization (models/method.ts LinearMethod)."""

    def __init__(self, kind, rank=0, alpha=0.0, delta=0.0):
        self.kind = kind
        self.rank = rank
        self.alpha = alpha
        self.delta = delta

    @property
    def scale(self):
        return 1.0 if self.kind == "dense" else self.alpha / self.rank

    @staticmethod
    def of_run(run):
        """The method of one of our RunConfig dicts (cli/run_config.ts linearMethod)."""
        m = run["method"]
        if m in ("full", "galore"):
            return Method("dense")
        return Method({"lowrank": "lowrank", "sltrain": "sltrain", "relora": "relora"}[m],
                      run["rank"], run["alpha"], run["delta"])


class BlockLinear(nn.Module):
    """y = x·Wᵀ with W as `method` parameterizes it; `support` is SLTrain's sorted flat I."""

    def __init__(self, method, out, inp):
        super().__init__()
        self.method, self.out, self.inp = method, out, inp
        k, r = method.kind, method.rank
        if k == "dense":
            self.w = nn.Parameter(torch.empty(out, inp))
            return
        self.A = nn.Parameter(torch.empty(r, inp))
        self.B = nn.Parameter(torch.empty(out, r))
        if k == "sltrain":
            nnz = int(method.delta * (out * inp))
            self.V = nn.Parameter(torch.empty(nnz))
            self.register_buffer("support", torch.zeros(nnz, dtype=torch.int64))
        if k == "relora":
            self.register_buffer("frozen", torch.empty(out, inp))

    def weight(self):
        """The dense W [out, in] (transient for low-rank kinds)."""
        k, s = self.method.kind, self.method.scale
        if k == "dense":
            return self.w
        if k == "sltrain":
            w = (self.B * s) @ self.A
            return w.reshape(-1).index_add(0, self.support, self.V).view(self.out, self.inp)
        if k == "relora":
            return self.frozen + s * (self.B @ self.A)
        return (self.B * s) @ self.A

    def forward(self, x):
        if self.method.kind == "lowrank":
            # Never forms B·A, like ops/sltrain_linear.ts lowRankLinear.
            return F.linear(F.linear(x, self.A), self.B) * self.method.scale
        return F.linear(x, self.weight())


def rms_norm(x, w, eps):
    """x / sqrt(mean(x²) + eps) · w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Block(nn.Module):
    """Pre-norm decoder block: attention and SwiGLU MLP with residuals."""

    def __init__(self, cfg, method):
        super().__init__()
        # Gains as bare parameters, so their paths are our checkpoint's (`layers.0.attnNorm`).
        self.attnNorm = nn.Parameter(torch.ones(cfg.hidden))
        self.mlpNorm = nn.Parameter(torch.ones(cfg.hidden))
        self.eps = cfg.eps
        for name, (o, i) in cfg.shapes().items():
            self.add_module(name, BlockLinear(method, o, i))
        self.heads = cfg.heads

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


class Llama(nn.Module):
    """Embedding, blocks, final RMSNorm, untied head; `loss` is the mean next-token CE."""

    def __init__(self, cfg, method):
        super().__init__()
        self.cfg = cfg
        self.method = method
        self.embed = nn.Parameter(torch.empty(cfg.vocab, cfg.hidden))
        self.layers = nn.ModuleList(Block(cfg, method) for _ in range(cfg.layers))
        self.finalNorm = nn.Parameter(torch.ones(cfg.hidden))
        self.lmHead = nn.Parameter(torch.empty(cfg.vocab, cfg.hidden))
        self._rope = {}

    def _tables(self, t, dtype):
        key = (t, dtype)
        if key not in self._rope:
            dh = self.cfg.hidden // self.cfg.heads
            cos, sin = rope_tables(t, dh, self.cfg.rope_base, dtype)
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            self._rope[key] = (cos, sin, mask)
        return self._rope[key]

    def hidden_states(self, tokens):
        x = F.embedding(tokens, self.embed)
        cos, sin, mask = self._tables(tokens.shape[1], x.dtype)
        for block in self.layers:
            x = block(x, cos, sin, mask)
        return rms_norm(x, self.finalNorm, self.cfg.eps)

    def loss(self, inputs, targets):
        """Mean cross-entropy over targets != -100 (targets already aligned with inputs)."""
        logits = F.linear(self.hidden_states(inputs), self.lmHead)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=-100)

    def eval_sums(self, inputs, targets):
        """(summed CE, count) over targets != -100, for token-weighted validation loss."""
        logits = F.linear(self.hidden_states(inputs), self.lmHead).float()
        t = targets.reshape(-1)
        s = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t, ignore_index=-100,
                            reduction="sum")
        return s.item(), int((t != -100).sum())

    def block_weights(self):
        """[(path, parameter)] of the dense block-linear weights (GaLore's targets)."""
        return [(n, p) for n, p in self.named_parameters()
                if n.startswith("layers.") and n.endswith(".w")]


def load_params(model, tensors):
    """Copies our checkpoint's `params.*` and `buffers.*` tensors into `model` (names must match)."""
    state = {}
    for name, t in tensors.items():
        if name.startswith("params."):
            state[name[len("params."):]] = t
        elif name.startswith("buffers.layers."):
            _, _, i, lin = name.split(".")
            kind = model.method.kind
            state[f"layers.{i}.{lin}.{'support' if kind == 'sltrain' else 'frozen'}"] = t
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")


def init_fresh(model, scheme, seed):
    """Draws new weights with torch's RNG.

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
