"""Minimal safetensors reader (the `safetensors` package is not in Debian's python3 set).

Reads the files our side writes (cli/checkpoint.ts, cli/safetensors.ts): an 8-byte little-endian
header length, a JSON header of {name: {dtype, shape, data_offsets}} plus `__metadata__`, then the
raw little-endian data. U32 becomes int64 (torch 1.13 has no uint32), BF16 becomes float32.
"""

import json
import struct

import numpy as np
import torch

_NUMPY = {"F32": np.float32, "I32": np.int32, "U32": np.uint32, "U8": np.uint8, "F16": np.float16}


def read_safetensors(path):
    """Returns ({name: torch.Tensor}, metadata dict) for the safetensors file at `path`."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, e in header.items():
        a, b = e["data_offsets"]
        raw = data[a:b]
        if e["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif e["dtype"] in _NUMPY:
            arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY[e["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {e['dtype']}")
        if arr.dtype == np.uint32:
            arr = arr.astype(np.int64)
        tensors[name] = torch.from_numpy(np.array(arr).reshape(e["shape"]))
    return tensors, meta
