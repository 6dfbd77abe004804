"""Optimizers and schedule of the PyTorch reference, mirroring optim/ and cli/run_config.ts.

- AdamW: `torch.optim.AdamW` itself (betas 0.9/0.999, eps 1e-8, decoupled decay): our fused
  optim/adamw.ts computes the same formula, lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps).
- GaLore (optim/galore.ts, as cli/run_config.ts chains it): per dense block weight, R = project(G)
  onto the exact top-r singular subspace of the smaller side (SVD in float64), refreshed when the
  GaLore step count is a multiple of T (also at the first step); Adam on R as optax's
  scale_by_adam, N = m̂/(√v̂ + eps); update −lr·(α·project_back(N) + wd·p). Adam states persist
  across refreshes. `arith="reference"` switches to the GaLore repo's GaLoreAdamW arithmetic
  instead (eps 1e-6 added to the uncorrected √v, step lr·√(1-β2^t)/(1-β1^t), decay after).
- Schedule: warmup_cosine_multiplier as optim/schedule.ts (LambdaLR; update 0 runs at lr 0), from
  the sltrain_torch package.
"""

import math

import torch

import model  # noqa: F401  (puts torch/ on the path)
from sltrain_torch.adamw import warmup_cosine_multiplier  # noqa: F401  (re-exported)


def top_subspace(g, rank):
    """(projector, left): U[:, :r] [m, r] when m < n (left), else Vh[:r] [r, n], in g's dtype."""
    m, n = g.shape
    r = min(rank, m, n)
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    left = m < n
    return (u[:, :r] if left else vh[:r]).to(g.dtype).contiguous(), left


class GaLoreAdamW(torch.optim.Optimizer):
    """GaLore-Adam over 2-D weights; see the module doc for both arithmetics."""

    def __init__(self, params, lr, rank, update_proj_gap=200, scale=0.25, betas=(0.9, 0.999),
                 eps=1e-8, weight_decay=0.0, arith="ours"):
        if arith not in ("ours", "reference"):
            raise ValueError(f"arith must be ours or reference, got {arith}")
        defaults = dict(lr=lr, rank=rank, gap=update_proj_gap, scale=scale, betas=betas, eps=eps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.arith = arith

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd, alpha = group["lr"], group["eps"], group["weight_decay"], group["scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                if st["step"] % group["gap"] == 0:
                    st["proj"], st["left"] = top_subspace(p.grad, group["rank"])
                proj, left = st["proj"], st["left"]
                r = proj.t() @ p.grad if left else p.grad @ proj.t()
                if "m" not in st:
                    st["m"], st["v"] = torch.zeros_like(r), torch.zeros_like(r)
                st["step"] += 1
                t = st["step"]
                m, v = st["m"], st["v"]
                m.mul_(b1).add_(r, alpha=1 - b1)
                v.mul_(b2).addcmul_(r, r, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                if self.arith == "ours":
                    n = (m / bc1) / (v.sqrt() / math.sqrt(bc2) + eps)
                    back = (proj @ (alpha * n)) if left else ((alpha * n) @ proj)
                    if wd > 0:
                        back = back + wd * p
                    p.add_(back, alpha=-lr)
                else:
                    n = m / (v.sqrt() + eps)
                    back = (proj @ n if left else n @ proj) * alpha
                    p.add_(back, alpha=-lr * math.sqrt(bc2) / bc1)
                    if wd > 0:
                        p.add_(p, alpha=-lr * wd)


def build_optimizers(model, run, eps=None, galore_arith="ours"):
    """The run's optimizers (cli/run_config.ts buildOptimizer): AdamW, plus GaLore on the dense
    block weights for `galore`. Returns a list; step and schedule each of them."""
    lr, wd = run["lr"], run["weightDecay"]
    adam_eps = 1e-8 if eps is None else eps
    if run["method"] != "galore":
        return [torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=adam_eps,
                                  weight_decay=wd)]
    targets = [p for _, p in model.block_weights()]
    ids = {id(p) for p in targets}
    rest = [p for p in model.parameters() if id(p) not in ids]
    galore_eps = (1e-6 if galore_arith == "reference" else 1e-8) if eps is None else eps
    return [
        torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.999), eps=adam_eps, weight_decay=wd),
        GaLoreAdamW(targets, lr=lr, rank=run["rank"], update_proj_gap=run["galoreGap"],
                    scale=run["galoreScale"], eps=galore_eps, weight_decay=wd,
                    arith=galore_arith),
    ]
