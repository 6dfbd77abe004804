"""sltrain_torch: continue an sltrain run in PyTorch (one process or torchrun) and bring it back.

- `model`: our LLaMA with dense, low-rank, SLTrain and ReLoRA block linears.
- `checkpoint`: read and write our run folders' checkpoints (weights, supports, AdamW state).
- `adamw`: our AdamW (f32 or 8-bit block-quantized moments) and schedule.
- `data`: our token shards and batch order.
- `train`: the training entry point (`python -m sltrain_torch.train`, under torchrun or not).
- `hf`, `official`, `convert`: export.ts folders and the official SLTrain layout.
- `checksum`, `safetensors`: the file format with our checksums.
"""

from .errors import (DataMismatchError, FormatError, SltrainTorchError, UnsupportedRunError,
                     WorldSizeError)

__all__ = ["DataMismatchError", "FormatError", "SltrainTorchError", "UnsupportedRunError",
           "WorldSizeError"]
