"""Named errors: every refusal happens before a training step, and nothing is overwritten by it."""


class SltrainTorchError(Exception):
    """Base of the errors below (catch this to report any bad input)."""


class FormatError(SltrainTorchError):
    """A file or folder that is not what it claims: bad safetensors, checksums, version, layout."""


class UnsupportedRunError(SltrainTorchError):
    """A run this package cannot continue exactly: its method, dtype or optimizer state."""


class DataMismatchError(SltrainTorchError):
    """Token shards that do not belong to the run: another tokenizer, packing or size."""


class WorldSizeError(SltrainTorchError):
    """A process count that cannot split the run's global batch evenly."""
