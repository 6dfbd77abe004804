"""Replays several bench/torch_dump.ts folders in one process (torch imports once), writing each
folder's torch.json (as train.py --json) and torch.safetensors (its final weights, f32).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 bench/torch_ref/replay_many.py DIR...
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import replay  # noqa: E402


def main():
    torch.set_num_threads(int(os.environ.get("SLTRAIN_TORCH_THREADS", "2")))
    failed = False
    for d in sys.argv[1:]:
        try:
            out = replay(d, weights=os.path.join(d, "torch.safetensors"))
        except ValueError as e:
            print(f"replay_many.py: {d}: {e}", file=sys.stderr)
            failed = True
            continue
        with open(os.path.join(d, "torch.json"), "w") as f:
            json.dump(out, f)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
