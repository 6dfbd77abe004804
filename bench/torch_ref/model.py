"""The PyTorch model of the benchmarks: the `sltrain_torch` package's (torch/), re-exported here so
the scripts beside this file keep importing `model`, plus `load_params` for bench dumps.

See torch/sltrain_torch/model.py for the math (one PyTorch implementation of our model in the
repository).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "torch"))

from sltrain_torch.model import (LINEARS, Block, BlockLinear, Config, Llama, Method,  # noqa: E402,F401
                                 init_fresh, rms_norm, rope, rope_tables)


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
