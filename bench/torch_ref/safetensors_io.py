"""Reads our safetensors files through the `sltrain_torch` package (checksums verified)."""

import model  # noqa: F401  (puts torch/ on the path)
from sltrain_torch.safetensors import SafetensorsFile


def read_safetensors(path):
    """Returns ({name: torch.Tensor}, metadata dict) for the safetensors file at `path` (U32 as
    int64, BF16 as bfloat16)."""
    with SafetensorsFile(path) as f:
        return {n: f.tensor(n) for n in f.entries}, dict(f.metadata)
