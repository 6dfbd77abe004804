"""The optimizers of every method in PyTorch, written from the method definitions (optim/*.ts doc
comments), not from our code: AdamW (the sltrain_torch package's, f32 or 8-bit moments), GaLore and
GoLore (projected Adam; SVD or random projectors), SPAM, Stable-SPAM and LoRO, chained as
cli/run_config.ts chains them, plus the learning-rate schedule with quick recovery after a
momentum reset and weight refactorization. Each optimizer object has `step()` and `zero_grad()`;
its learning rate of update k (0-based, counted from the optimizer's creation) is
`lr_at(start + k)`, so a momentum reset is a new object created at `start`.

Conventions that an SVD or QR leaves open are fixed as our code fixes them, so the factors and
bases are the same, not just their products: an eigen/singular vector's largest entry in
magnitude is positive; a random basis is Q of Z = Q·R with R's diagonal positive, Z drawn from our
Rng (sltrain_torch.rng, xoshiro128**) seeded by fnv1a("golore:<path>#<refresh>").
"""

import math

import numpy as np
import torch

import model  # noqa: F401  (puts torch/ on the path)
from sltrain_torch.adamw import AdamW, warmup_cosine_multiplier
from sltrain_torch.rng import Rng


def f32(x):
    return float(np.float32(x))


# ----- schedule ---------------------------------------------------------------------------------

def cycle_length(run):
    """Steps between momentum resets (refactorization) or ReLoRA merges; 0 = none."""
    if run["method"] in ("sltrain", "lowrank", "loro"):
        return run["refactorEvery"]
    if run["method"] == "relora":
        return run["reloraEvery"]
    return 0


def lr_function(run):
    """Global step -> learning rate: warmup + cosine, with the quick-recovery ramp (from 0.001×
    to 1× the schedule's value at restart + R, linearly over R steps) after every reset."""
    def base(s):
        return run["lr"] * warmup_cosine_multiplier(s, run["warmup"], run["steps"],
                                                    run["minLrRatio"])
    cycle, rec = cycle_length(run), run["recoverySteps"]
    if cycle <= 0:
        return base

    def at(s):
        restart = (s // cycle) * cycle
        since = s - restart
        if restart == 0 or rec <= 0 or since >= rec:
            return base(s)
        target = base(restart + rec)
        progress = min(1.0, since / (rec - 1)) if rec > 1 else 1.0
        start = 0.001 * target
        return start + (target - start) * progress
    return at


# ----- bases ------------------------------------------------------------------------------------

def fnv1a(s):
    h = 0x811C9DC5
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def next_normal(rng):
    """core/rng.ts nextNormal: Box–Muller from two 24-bit uniforms."""
    u1 = 1 - (rng.next_u32() >> 8) * 2.0**-24
    u2 = (rng.next_u32() >> 8) * 2.0**-24
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def lead_positive(cols):
    """Flips each column of a float64 matrix so its largest-magnitude entry is positive."""
    idx = cols.abs().argmax(dim=0)
    sign = torch.sign(cols[idx, torch.arange(cols.shape[1])])
    sign[sign == 0] = 1
    return cols * sign, sign


def top_basis(g, r):
    """GaLore's projector of g [m, n] (float32): U[:, :r] [m, r] when m < n, else Vᵀ[:r] [r, n]."""
    m, n = g.shape
    left = m < n
    a = g.double()
    gram = a @ a.t() if left else a.t() @ a
    vals, vecs = torch.linalg.eigh(gram)
    order = torch.argsort(vals, descending=True)[:r]
    basis, _ = lead_positive(vecs[:, order])
    return (basis if left else basis.t()).float().contiguous(), left


def random_projector(shape, r, key, refresh):
    m, n = shape
    left = m < n
    k = m if left else n
    rng = Rng(fnv1a(f"golore:{key}#{refresh}"))
    z = torch.tensor([next_normal(rng) for _ in range(k * r)], dtype=torch.float64).view(k, r)
    q, rr = torch.linalg.qr(z)
    sign = torch.sign(torch.diagonal(rr))
    sign[sign == 0] = 1
    q = q * sign
    return (q if left else q.t()).float().contiguous(), left


# ----- Adam direction (optax scale_by_adam, our arithmetic) ------------------------------------

class AdamDirection:
    """N = m̂/(√v̂ + eps) per tensor, f32, scalars rounded to f32 as our uniforms are."""

    def __init__(self, betas=(0.9, 0.999), eps=1e-8):
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.count, self.m, self.v = 0, {}, {}

    def __call__(self, grads):
        t = self.count + 1
        b1, b2 = f32(self.b1), f32(self.b2)
        c1, c2 = float(np.float32(1) - np.float32(b1)), float(np.float32(1) - np.float32(b2))
        step = f32(1 / (1 - self.b1**t))
        inv = f32(1 / math.sqrt(1 - self.b2**t))
        out = {}
        for k, g in grads.items():
            m = self.m.get(k, torch.zeros_like(g))
            v = self.v.get(k, torch.zeros_like(g))
            m = m * b1 + g * c1
            v = v * b2 + (g * g) * c2
            self.m[k], self.v[k] = m, v
            out[k] = (m * step) / (v.sqrt() * inv + f32(self.eps))
        self.count = t
        return out


# ----- optimizers -------------------------------------------------------------------------------

class Chain:
    """Direction → + λ·p → × (−lr) → p += u over named parameters (cli/run_config.ts's chain)."""

    def __init__(self, named, direction, lr_at, start, weight_decay):
        self.named, self.direction, self.lr_at = list(named), direction, lr_at
        self.start, self.wd, self.count = start, weight_decay, 0

    def zero_grad(self):
        for _, p in self.named:
            p.grad = None

    @torch.no_grad()
    def step(self):
        grads = {k: p.grad.float() for k, p in self.named}
        u = self.direction(grads, dict(self.named))
        lr = self.lr_at(self.start + self.count)
        for k, p in self.named:
            x = u[k]
            # Elementwise directions write into the gradient's buffer (its dtype); projected ones
            # produce f32 updates.
            if getattr(self.direction, "in_grad_dtype", False):
                x = x.to(p.grad.dtype).float()
            if self.wd > 0:
                x = x + p.float() * f32(self.wd)
            x = x * f32(-lr)
            if getattr(self.direction, "in_grad_dtype", False):
                x = x.to(p.grad.dtype).float()
            p.copy_((p.float() + x).to(p.dtype))
        self.count += 1


class Projected:
    """GaLore (SVD projectors) or GoLore (random from `random_from`) around Adam: R = project(G),
    N = Adam(R) with moments kept across refreshes, update α·project_back(N)."""

    def __init__(self, rank, gap, scale, random_from=None):
        self.rank, self.gap, self.scale, self.random_from = rank, gap, scale, random_from
        self.count, self.proj, self.adam = 0, {}, AdamDirection()

    def __call__(self, grads, params):
        small = {}
        for k, g in grads.items():
            if self.count % self.gap == 0 or k not in self.proj:
                r = min(self.rank, *g.shape)
                if self.random_from is not None and self.count >= self.random_from:
                    self.proj[k] = random_projector(g.shape, r, k, self.count)
                else:
                    self.proj[k] = top_basis(g, r)
            p, left = self.proj[k]
            small[k] = p.t() @ g if left else g @ p.t()
        n = self.adam(small)
        out = {}
        for k, x in n.items():
            p, left = self.proj[k]
            x = x * f32(self.scale)
            out[k] = p @ x if left else x @ p
        self.count += 1
        return out


def channel_norms(x, columns):
    """Per-column (columns) or per-row L2 norms of a matrix, or the Frobenius norm (None)."""
    if columns is None:
        return x.norm().reshape(1)
    return x.norm(dim=0) if columns else x.norm(dim=1)


def scale_channels(x, phi, columns):
    if columns is None:
        return x * phi
    return x * phi[None, :] if columns else x * phi[:, None]


class NormLimiter:
    """Fira's norm-growth limiter per tensor: x / lim with lim = max(‖x‖/(prev + 1e-8), γ)/γ (1 at
    the first step); the stored norm becomes ‖x‖/lim."""

    def __init__(self, gamma):
        self.gamma, self.prev = gamma, {}

    def __call__(self, key, x, first):
        if self.gamma <= 0:
            return x
        n = x.norm()
        lim = torch.ones((), dtype=torch.float32) if first else \
            torch.clamp(n / (self.prev[key] + f32(1e-8)), min=f32(self.gamma)) / f32(self.gamma)
        self.prev[key] = n / lim
        return x * (1 / lim)


class Fira(Projected):
    """Fira (optim/fira.ts): GaLore's update plus the residual G − α·project_back(R), scaled per
    channel by ‖N‖/(‖R‖ + 1e-8) (columns when m < n, else rows), under the limiter."""

    def __init__(self, rank, gap, scale, limiter):
        super().__init__(rank, gap, scale)
        self.limiter = NormLimiter(limiter)

    def __call__(self, grads, params):
        first = self.count == 0
        for k, g in grads.items():
            if self.count % self.gap == 0 or k not in self.proj:
                self.proj[k] = top_basis(g, min(self.rank, *g.shape))
        small = {}
        resid = {}
        for k, g in grads.items():
            p, left = self.proj[k]
            r = p.t() @ g if left else g @ p.t()
            small[k] = r
            resid[k] = g - f32(self.scale) * (p @ r if left else r @ p)
        n = self.adam(small)
        out = {}
        for k, x in n.items():
            p, left = self.proj[k]
            phi = channel_norms(x, left) / (channel_norms(small[k], left) + f32(1e-8))
            s = self.limiter(k, scale_channels(resid[k], phi, left), first)
            x = x * f32(self.scale)
            out[k] = (p @ x if left else x @ p) + s
        self.count += 1
        return out


_M32 = 0xFFFFFFFF


def hash32(x):
    """lowbias32 of a u32 Python int."""
    x = (x ^ (x >> 16)) & _M32
    x = (x * 0x7FEB352D) & _M32
    x = (x ^ (x >> 15)) & _M32
    x = (x * 0x846CA68B) & _M32
    return (x ^ (x >> 16)) & _M32


def hash32_np(x):
    """lowbias32 elementwise on a uint64 array of u32 values."""
    m, u = np.uint64(_M32), np.uint64
    x = (x ^ (x >> u(16))) & m
    x = (x * u(0x7FEB352D)) & m
    x = (x ^ (x >> u(15))) & m
    x = (x * u(0x846CA68B)) & m
    return (x ^ (x >> u(16))) & m


def apollo_projection(seed, path, refresh, shape, rank):
    """APOLLO's random matrix (optim/apollo.ts's module doc), regenerated from its definition."""
    hs = hash32((seed & _M32) ^ hash32(seed >> 32))
    key = hash32(hash32(hs ^ fnv1a(path)) ^ refresh)
    u = np.uint64
    e = np.arange(shape[0] * shape[1], dtype=np.uint64)
    x = hash32_np(u(key) ^ hash32_np(e))
    total = np.zeros_like(e)
    for j in range(1, 7):
        w = hash32_np((x + u((j * 0x9E3779B9) & _M32)) & u(_M32))
        total += (w & u(0xFFFF)) + (w >> u(16))
    c = np.float32(2.0**-16 / math.sqrt(rank))
    vals = (total.astype(np.int64) - 393210).astype(np.float64) * float(c)
    return torch.from_numpy(vals.astype(np.float32)).view(*shape)


class Apollo:
    """APOLLO (optim/apollo.ts): Adam's moments on a seeded random projection; the raw gradient
    scaled per channel (or tensor) by ‖N‖/(‖R‖ + 1e-8), limited, times √scale."""

    def __init__(self, rank, gap, scale, tensor_wise, seed, limiter):
        self.rank, self.gap, self.post = rank, gap, math.sqrt(scale)
        self.tensor_wise, self.seed = tensor_wise, seed
        self.limiter, self.adam, self.count = NormLimiter(limiter), AdamDirection(), 0

    def __call__(self, grads, params):
        first, refresh = self.count == 0, self.count // self.gap
        small, sides = {}, {}
        for k, g in grads.items():
            m, n = g.shape
            left = m < n
            p = apollo_projection(self.seed, k, refresh, (m, self.rank) if left else
                                  (self.rank, n), self.rank)
            small[k] = p.t() @ g if left else g @ p.t()
            sides[k] = None if self.tensor_wise else left
        nn_ = self.adam(small)
        out = {}
        for k, x in nn_.items():
            side = sides[k]
            phi = channel_norms(x, side) / (channel_norms(small[k], side) + f32(1e-8))
            s = self.limiter(k, scale_channels(grads[k], phi, side), first)
            out[k] = s * f32(self.post) if self.post != 1 else s
        self.count += 1
        return out


class Spam:
    """SPAM (optim/spam.ts): clip g² > θ·v to sign(g)·√(θv) where enabled, moments reset every
    `gap` steps, update ramp·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + eps)."""

    in_grad_dtype = True

    def __init__(self, threshold, gap, warmup, clip_delay=20, betas=(0.9, 0.999), eps=1e-6):
        self.th, self.gap, self.warmup, self.delay = threshold, gap, warmup, clip_delay
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.count, self.m, self.v = 0, {}, {}

    def __call__(self, grads, params):
        t = self.count + 1
        gap = self.gap
        since = t % gap if gap > 0 and t >= gap else self.warmup + t
        ramp = 1.0 if since >= self.warmup else \
            1 - 0.99 * (1 + math.cos(math.pi * since / (self.warmup + 1))) / 2
        reset = gap > 0 and t % gap == 0
        clip = self.th > 0 and t >= self.delay and (gap == 0 or t % gap >= self.delay)
        step = f32(ramp * math.sqrt(1 - self.b2**t) / (1 - self.b1**t))
        b1, b2, th = f32(self.b1), f32(self.b2), f32(self.th)
        out = {}
        for k, g in grads.items():
            m = torch.zeros_like(g) if reset or k not in self.m else self.m[k]
            v = torch.zeros_like(g) if reset or k not in self.v else self.v[k]
            if clip:
                spike = g * g > th * v
                g = torch.where(spike, torch.sign(g) * torch.sqrt(th * v), g)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            self.m[k], self.v[k] = m, v
            out[k] = step * m / (v.sqrt() + f32(self.eps))
        self.count = t
        return out


class StableSpam:
    """Stable-SPAM (optim/stable_spam.ts), per tensor: adaptive spike clipping against the
    bias-corrected running max magnitude, rescaling to the running norm ratio, then Adam with
    β1·s(t), moments (and the bias-correction count) reset every `gap` steps."""

    in_grad_dtype = True

    def __init__(self, gammas, gap, total_t, eta, betas=(0.9, 0.999), eps=1e-8):
        self.g1, self.g2, self.g3 = gammas
        self.gap, self.total_t, self.eta, self.eps = gap, total_t, eta, eps
        self.b1, self.b2 = betas
        self.count, self.k, self.m, self.v, self.stats = 0, 0, {}, {}, {}

    def __call__(self, grads, params):
        t = self.count + 1
        reset = self.gap > 0 and t % self.gap == 0
        k = 1 if reset else self.k + 1
        s = 1.0 if self.total_t == 0 else \
            self.eta + (1 - self.eta) * (1 + math.cos(math.pi * t / (self.total_t + 1))) / 2
        b1, g1 = self.b1 * s, self.g1 * s
        out = {}
        for key, g in grads.items():
            m = torch.zeros_like(g) if reset or key not in self.m else self.m[key]
            v = torch.zeros_like(g) if reset or key not in self.v else self.v[key]
            mmax, mnorm, vnorm = self.stats.get(key, (0.0, 0.0, 0.0))
            mx = g.abs().max().item()
            mmax = f32(f32(self.g3) * mmax + f32(1 - self.g3) * mx)
            hat = f32(mmax / f32(1 - self.g3**k))
            ratio = f32(hat / mx) if mx > 0 else 1.0
            g = torch.where(g.abs() > hat, g * ratio, g)
            n = g.double().pow(2).sum().sqrt().item()
            mnorm = f32(f32(g1) * mnorm + f32(1 - g1) * n)
            vnorm = f32(f32(self.g2) * vnorm + f32(1 - self.g2) * n * n)
            c = (mnorm / f32(1 - g1**k)) / (math.sqrt(vnorm / f32(1 - self.g2**k)) + f32(self.eps))
            g = g * f32(c / n if n > 0 else 1.0)
            self.stats[key] = (mmax, mnorm, vnorm)
            m = f32(b1) * m + f32(1 - b1) * g
            v = f32(self.b2) * v + f32(1 - self.b2) * g * g
            self.m[key], self.v[key] = m, v
            out[key] = f32(1 / (1 - b1**k)) * m / (v.sqrt() * f32(1 / math.sqrt(1 - self.b2**k))
                                                   + f32(self.eps))
        self.count, self.k = t, k
        return out


def loro_exact(b, a, db, da, eta):
    """LoRO's exact step (optim/loro.ts's doc) in float64: the rank-r truncation of
    W − η·P_T(G) for W = B·A, from the factor gradients dB = G·Aᵀ, dA = Bᵀ·G."""
    b, a, db, da = b.double(), a.double(), db.double(), da.double()
    r = b.shape[1]
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.t())
    gqa = torch.linalg.solve_triangular(ra, db, upper=True, left=False)        # dB·Ra⁻¹
    gtqb = torch.linalg.solve_triangular(rb, da.t(), upper=True, left=False)  # dAᵀ·Rb⁻¹
    qb2, rb2 = torch.linalg.qr(gqa - qb @ (qb.t() @ gqa))
    qa2, ra2 = torch.linalg.qr(gtqb - qa @ (qa.t() @ gtqb))
    s = rb @ ra.t() - eta * (gtqb.t() @ qa)
    top = torch.cat([s, -eta * ra2.t()], dim=1)
    bottom = torch.cat([-eta * rb2, torch.zeros(r, r, dtype=torch.float64)], dim=1)
    u, sig, vh = torch.linalg.svd(torch.cat([top, bottom], dim=0))
    root = sig[:r].sqrt()
    nb = torch.cat([qb, qb2], dim=1) @ u[:, :r]
    nb, sign = lead_positive(nb)
    na = (vh[:r] * sign[:, None]) @ torch.cat([qa, qa2], dim=1).t()
    return nb * root, root[:, None] * na


class Loro:
    """LoRO on factor pairs (optim/loro.ts): L2 decay into the gradient, Adam direction N, then
    −lr·(r/d)·N, or every k-th update the exact step with η = lr. Applies its own lr."""

    def __init__(self, named, lr_at, start, weight_decay, exact_every):
        self.named, self.lr_at, self.start = list(named), lr_at, start
        self.wd, self.every, self.count, self.adam = weight_decay, exact_every, 0, AdamDirection()
        self.pairs = {}
        for k, _ in self.named:
            prefix, f = k.rsplit(".", 1)
            self.pairs.setdefault(prefix, {})[f] = k

    def zero_grad(self):
        for _, p in self.named:
            p.grad = None

    @torch.no_grad()
    def step(self):
        params = dict(self.named)
        grads = {}
        for k, p in self.named:
            g = p.grad.float()
            grads[k] = g + p.float() * f32(self.wd) if self.wd > 0 else g
        n = self.adam(grads)
        lr = self.lr_at(self.start + self.count)
        t = self.count + 1
        for pair in self.pairs.values():
            kb, ka = pair["B"], pair["A"]
            b, a = params[kb], params[ka]
            d, r = b.shape
            if t % self.every != 0:
                for k in (kb, ka):
                    u = n[k] * f32(-lr * r / d)
                    params[k].copy_((params[k].float() + u).to(params[k].dtype))
            else:
                nb, na = loro_exact(b.float(), a.float(), n[kb], n[ka], lr)
                b.copy_(nb.float().to(b.dtype))
                a.copy_(na.float().to(a.dtype))
        self.count = t


def refactor_(model):
    """Weight refactorization (models/refactor.ts): per block linear with factors, B·A = U·S·Vᵀ
    from QR(B), QR(Aᵀ) and the SVD of the r×r core; B ← U·√S, A ← √S·Vᵀ (signs canonical)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(".B"):
                continue
            prefix = name[:-2]
            b = p
            a = dict(model.named_parameters())[prefix + ".A"]
            qb, rb = torch.linalg.qr(b.double())
            qa, ra = torch.linalg.qr(a.double().t())
            u, s, vh = torch.linalg.svd(rb @ ra.t())
            root = s.sqrt()
            nb, sign = lead_positive(qb @ u)
            na = root[:, None] * ((vh * sign[:, None]) @ qa.t())
            b.copy_((nb * root).float().to(b.dtype))
            a.copy_(na.float().to(a.dtype))


def build(model, run, start=0):
    """The run's optimizers as cli/run_config.ts buildOptimizer builds them, created at global
    step `start` (0, or the step of a momentum reset)."""
    lr_at = lr_function(run)
    method, wd = run["method"], run["weightDecay"]
    eight = run["optimizer"] == "adamw8bit"
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]

    def adamw(ps):
        return AdamW([p for _, p in ps], lambda c: lr_at(start + c), weight_decay=wd,
                     eight_bit=eight)

    if method == "spam":
        return [Chain(named, Spam(run["spamThreshold"], run["momentumResetEvery"],
                                  run["spamWarmup"]), lr_at, start, wd)]
    if method == "stable-spam":
        sched = run["stableSpamSchedule"]
        return [Chain(named, StableSpam(run["stableSpamGammas"], run["momentumResetEvery"],
                                        sched["totalT"], sched["etaMin"]), lr_at, start, wd)]
    if method == "loro":
        fac = [(k, p) for k, p in named if k.startswith("layers.") and k[-2:] in (".A", ".B")]
        ids = {id(p) for _, p in fac}
        rest = [(k, p) for k, p in named if id(p) not in ids]
        return [adamw(rest), Loro(fac, lr_at, start, wd, run["loroExactEvery"])]
    if method in ("galore", "golore", "fira", "apollo", "apollo-mini"):
        if eight:
            raise ValueError("the reference has no 8-bit projected Adam")
        blocks = [(k, p) for k, p in named if k.startswith("layers.") and k.endswith(".w")]
        ids = {id(p) for _, p in blocks}
        rest = [(k, p) for k, p in named if id(p) not in ids]
        if method == "fira":
            proj = Fira(run["rank"], run["galoreGap"], run["galoreScale"], run["limiter"])
        elif method.startswith("apollo"):
            mini = method == "apollo-mini"
            proj = Apollo(1 if mini else run["rank"], run["galoreGap"], run["apolloScale"],
                          mini or run["apolloGranularity"] == "tensor", run["seed"],
                          run["limiter"])
        else:
            rand = run.get("goloreRandomFrom") if method == "golore" else None
            proj = Projected(run["rank"], run["galoreGap"], run["galoreScale"], rand)
        return [adamw(rest), Chain(blocks, proj, lr_at, start, wd)]
    if method in ("full", "lowrank", "sltrain", "relora"):
        return [adamw(named)]
    raise ValueError(f"no reference optimizer for {method}")
