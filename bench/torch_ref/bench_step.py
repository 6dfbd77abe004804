"""Times training steps of the PyTorch reference, for bench/step.ts's PyTorch column.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/torch_ref/bench_step.py \
        --run '<RunConfig JSON>' [--reps 5] [--threads 2]

The run is one of our RunConfig dicts (model, method, rank, alpha, delta, lr, warmup, steps,
minLrRatio, weightDecay, galoreGap, galoreScale, batch, seq). One step is what bench/step.ts
times on our side: forward, backward, optimizer update (with the LR schedule) on the same model,
method and batch shape, weights drawn like ours (`init_fresh(..., "hf")`), random token ids. The
first step (GaLore's projector refresh, allocator warm-up) is not timed. Prints
{"msPerStep": median, "tokensPerSec", "threads"} as JSON.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import Config, Llama, Method, init_fresh  # noqa: E402
from optim import build_optimizers, warmup_cosine_multiplier  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True, help="RunConfig as JSON")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = json.loads(a.run)
    cfg = Config(run["model"])
    model = Llama(cfg, Method.of_run(run))
    init_fresh(model, "hf", 1)
    b, t = run["batch"], run["seq"]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab, (b, t), generator=g)
    opts = build_optimizers(model, run)

    def mult(s):
        return warmup_cosine_multiplier(s, run["warmup"], run["steps"], run["minLrRatio"])

    scheds = [torch.optim.lr_scheduler.LambdaLR(o, mult) for o in opts]
    times = []
    for i in range(a.reps + 1):
        t0 = time.perf_counter()
        loss = model.loss(ids, ids)
        loss.backward()
        for o, s in zip(opts, scheds):
            o.step()
            s.step()
            o.zero_grad(set_to_none=True)
        loss.item()
        if i >= 1:
            times.append(time.perf_counter() - t0)
    ms = sorted(times)[len(times) // 2] * 1000
    print(json.dumps({"msPerStep": ms, "tokensPerSec": b * t / (ms / 1000),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
