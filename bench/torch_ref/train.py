"""Replays one of our training runs in PyTorch, step for step, from a bench/torch_dump.ts folder.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/torch_ref/train.py DIR \
        [--init dump|hf|torch|torch-linear|torch-embed] [--seed N] [--warmup N] [--lr X]
        [--eps X] [--galore-arith ours|reference] [--dtype float32|float64]
        [--eval-every K] [--threads 2] [--json OUT]

By default it loads DIR/init.safetensors (our initial weights and SLTrain supports), feeds the
micro-batches of DIR/train.bin in order, optimizes as our trainer does (methods.py: every method,
8-bit moments, refactorization with momentum reset and quick recovery), and writes
{"losses": [loss of each step], "val": [[step, val loss], ...], "seconds", "tokensPerSec"} as JSON;
`--weights OUT.safetensors` also saves the final parameters (f32, our paths). `--eps` or
`--galore-arith reference` switch to the older torch.optim path of optim.py (full/low-rank/
SLTrain/GaLore only, no resets), for ablations.
The other options change one thing at a time, to measure what a choice costs (e.g. `--init torch`
draws PyTorch's module-default weights instead of ours). Needs Debian's python3-torch; install
libopenblas0-pthread too, or matmuls run on the reference BLAS.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Llama, Method, init_fresh, load_params  # noqa: E402
import methods  # noqa: E402
from methods import cycle_length  # noqa: E402
from optim import build_optimizers, warmup_cosine_multiplier  # noqa: E402
from safetensors_io import read_safetensors  # noqa: E402
from sltrain_torch import safetensors as st  # noqa: E402


def val_loss(model, val, batch):
    """Token-weighted mean CE over the validation sequences, `batch` rows at a time."""
    s, c = 0.0, 0
    with torch.no_grad():
        for i in range(0, val.shape[0], batch):
            part = val[i:i + batch]
            ds, dc = model.eval_sums(part[:, 0], part[:, 1])
            s, c = s + ds, c + dc
    return s / c


def replay(dir, init="dump", seed=0, warmup=None, lr=None, eps=None, galore_arith="ours",
           dtype="float32", steps=None, eval_every=0, alpha=None, weights=None):
    """Replays the run dumped in `dir` (see the module doc); returns the result dict."""
    with open(os.path.join(dir, "run.json")) as f:
        dump = json.load(f)
    run = dict(dump["run"])
    steps = steps or dump["steps"]
    if warmup is not None:
        run["warmup"] = warmup
    if lr is not None:
        run["lr"] = lr
    if alpha is not None:
        run["alpha"] = alpha
    cycle = cycle_length(run)
    ours = eps is None and galore_arith == "ours"
    if 0 < cycle < steps and (run["method"] == "relora" or not ours):
        raise ValueError(f"this run merges/refactorizes at step {cycle}: the replay stops before "
                         f"that (pass --steps {cycle})")

    cfg, method = Config(run["model"]), Method.of_run(run)
    storage = torch.bfloat16 if run.get("dtype") == "bf16" else torch.float32
    model = Llama(cfg, method, dtype=storage)
    if init == "dump":
        tensors, _ = read_safetensors(os.path.join(dir, "init.safetensors"))
        load_params(model, tensors)
    else:
        init_fresh(model, init, seed)
    if dtype == "float64":
        model.to(torch.float64)

    accum, b, t = run["gradAccum"], run["batch"], run["seq"]
    train = torch.from_numpy(
        np.fromfile(os.path.join(dir, "train.bin"), dtype="<i4").astype(np.int64)
    ).view(dump["microBatches"], 2, b, t)
    val = torch.from_numpy(
        np.fromfile(os.path.join(dir, "val.bin"), dtype="<i4").astype(np.int64)
    ).view(dump["valSequences"], 2, t)

    def mult(s):
        return warmup_cosine_multiplier(s, run["warmup"], run["steps"], run["minLrRatio"])

    if warmup is None and lr is None:
        lr_at = methods.lr_function(run)
        for k, theirs in enumerate(dump["lr"][:steps]):
            mine = lr_at(k)
            if abs(mine - theirs) > 1e-12 * max(1.0, abs(theirs)):
                raise ValueError(f"schedule mismatch at update {k}: ours {theirs}, reference {mine}")

    if ours:
        opts, scheds = methods.build(model, run), []
    else:
        opts = build_optimizers(model, run, eps=eps, galore_arith=galore_arith)
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, mult) for o in opts]
    params = list(model.parameters())
    losses, vals = [], []
    if eval_every:
        vals.append([0, val_loss(model, val, b)])
    t0 = time.perf_counter()
    tokens = 0
    for step in range(steps):
        total = 0.0
        for k in range(accum):
            inp, tgt = train[step * accum + k]
            loss = model.loss(inp, tgt)
            (loss / accum).backward()
            total += loss.item()
            tokens += int((tgt != -100).sum())
        if run["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, run["clip"])
        for i, o in enumerate(opts):
            o.step()
            if scheds:
                scheds[i].step()
            o.zero_grad()
        done = step + 1
        if ours and cycle > 0 and done % cycle == 0 and done < steps:
            methods.refactor_(model)
            opts = methods.build(model, run, start=done)
        losses.append(total / accum)
        if not math.isfinite(losses[-1]):
            break
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            vals.append([step + 1, val_loss(model, val, b)])
    seconds = time.perf_counter() - t0
    vals.append([len(losses), val_loss(model, val, b)])
    if weights:
        st.write(weights, [(n, "F32", list(p.shape), st.tensor_bytes(p.float(), "F32"))
                           for n, p in model.named_parameters()], {})
    return {"losses": losses, "val": vals, "seconds": seconds, "tokensPerSec": tokens / seconds,
            "init": init, "dtype": dtype, "warmup": run["warmup"], "lr": run["lr"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--init", default="dump",
                    choices=["dump", "hf", "torch", "torch-linear", "torch-embed"])
    ap.add_argument("--seed", type=int, default=0, help="torch seed of --init other than dump")
    ap.add_argument("--warmup", type=int, help="override the run's warmup steps")
    ap.add_argument("--lr", type=float, help="override the run's peak learning rate")
    ap.add_argument("--eps", type=float, help="override Adam's eps (default 1e-8)")
    ap.add_argument("--galore-arith", default="ours", choices=["ours", "reference"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps", type=int, help="replay only the first N steps")
    ap.add_argument("--eval-every", type=int, default=0, help="0: evaluate at the end only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the result here (default: stdout)")
    ap.add_argument("--weights", help="write the final parameters here (safetensors, f32)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try:
        out = replay(a.dir, a.init, a.seed, a.warmup, a.lr, a.eps, a.galore_arith, a.dtype,
                     a.steps, a.eval_every, weights=a.weights)
    except ValueError as e:
        sys.exit(f"train.py: {e}")
    text = json.dumps(out)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
