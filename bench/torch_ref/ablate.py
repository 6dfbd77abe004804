"""Which implementation choice moves the loss, and by how much: replays dumped runs (one folder per
method and seed, from bench/torch_dump.ts) in PyTorch with one choice changed at a time, and
prints the final validation loss of each variant per folder and its change from our setup.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/torch_ref/ablate.py \
        DIR [DIR ...] [--variants ours,hf,torch,torch-linear,torch-embed,warmup10,torch+warmup10]

Variants (see model.init_fresh and train.replay):
- ours:           our initial weights (the dump), our schedule: what our trainer computes.
- hf:             a fresh draw from the same distributions (the reference code's HF-LLaMA init:
                  N(0, 0.02) for embedding, head and dense linears), with torch's RNG: seed noise.
- torch:          PyTorch module defaults: U(±1/√in) for dense linears and the head, N(0, 1) for
                  the embedding (what a PyTorch model that never initializes gets).
- torch-linear / torch-embed: only the linear / only the embedding part of `torch`.
- warmupN:        our weights, warmup N% of the steps instead of the CLI's default.
- eps1e-6:        our weights, Adam eps 1e-6.
- galore-ref:     GaLore with the GaLore repo's GaLoreAdamW arithmetic (eps 1e-6 on the
                  uncorrected √v) instead of ours (optim.py).
- alphaA / lrX:   our weights, low-rank scale numerator A (scale A/r) / peak learning rate X.
- torch+warmupN:  both.
"""

import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import replay  # noqa: E402


def variant_args(name, steps):
    """replay() keyword arguments of a variant name."""
    kw = {}
    for part in name.split("+"):
        m = re.fullmatch(r"warmup(\d+)", part)
        if m:
            kw["warmup"] = round(steps * int(m.group(1)) / 100)
        elif part == "ours":
            pass
        elif part in ("hf", "torch", "torch-linear", "torch-embed"):
            kw["init"] = part
        elif part == "eps1e-6":
            kw["eps"] = 1e-6
        elif part == "galore-ref":
            kw["galore_arith"] = "reference"
        elif re.fullmatch(r"alpha[\d.]+", part):
            kw["alpha"] = float(part[5:])
        elif re.fullmatch(r"lr[\d.e-]+", part):
            kw["lr"] = float(part[2:])
        else:
            raise ValueError(f"unknown variant part {part!r}")
    return kw


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--variants", default="ours,hf,torch,torch-linear,torch-embed,warmup10,"
                    "torch+warmup10")
    ap.add_argument("--eval-every", type=int, default=0, help="also log val loss every K steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write all results here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    variants = a.variants.split(",")
    results = {}
    for d in a.dirs:
        with open(os.path.join(d, "run.json")) as f:
            run = json.load(f)["run"]
        label = f"{run['method']} seed {run['seed']}"
        for v in variants:
            # Fresh inits draw with the run's seed, so that seeds vary weights as well as data.
            r = replay(d, seed=run["seed"], eval_every=a.eval_every,
                       **variant_args(v, run["steps"]))
            results[(label, v)] = r
            curve = " ".join(f"{s}:{x:.4f}" for s, x in r["val"])
            print(f"{label:>20} {v:>16}: val {curve}  ({r['seconds']:.0f} s)", file=sys.stderr)
    labels = list(dict.fromkeys(lbl for lbl, _ in results))
    print("| variant | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for v in variants:
        cells = []
        for lbl in labels:
            val = results[(lbl, v)]["val"][-1][1]
            base = results[(lbl, "ours")]["val"][-1][1] if (lbl, "ours") in results else None
            cells.append(f"{val:.3f}" + (f" ({100 * (val / base - 1):+.1f}%)" if base else ""))
        print(f"| {v} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{k[0]} / {k[1]}": r for k, r in results.items()}, f)


if __name__ == "__main__":
    main()
