"""The safetensors files our side writes and reads (cli/safetensors.ts), with its checksums.

A file is an 8-byte little-endian header length, a JSON header `{name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}` padded with spaces so the data starts 8-byte aligned,
then the raw little-endian tensors back to back. Files written with checksums carry
`sltrain.checksum_algorithm` (`sha256`), `sltrain.checksums` (the SHA-256 of each tensor, 64 hex
digits, in the order of `checksum_order`) and `sltrain.header_checksum` (of the other metadata and
the tensor entries); `read` verifies both whenever they are present. Files without the algorithm
entry (written before SHA-256) carry 16-digit sums of `checksum.py` and are verified with those. `write` is atomic and durable: a temporary file in the same folder is
fsynced and renamed over the target.

dtypes map to torch as: F32, F16, BF16, U8, I32 as such; U32 (no uint32 in torch 1.13) as int64.
"""

import hashlib
import json
import os
import struct
import uuid

import numpy as np
import torch

from .checksum import checksum
from .errors import FormatError

CHECKSUMS_KEY = "sltrain.checksums"
HEADER_CHECKSUM_KEY = "sltrain.header_checksum"
ALGORITHM_KEY = "sltrain.checksum_algorithm"
ALGORITHM = "sha256"


def _sha256(*chunks):
    h = hashlib.sha256()
    for c in chunks:
        h.update(c.encode() if isinstance(c, str) else c)
    return h.hexdigest()


# Hash name -> (hex digits, function of the bytes); "" is the 64-bit sum of files before SHA-256.
_HASHES = {ALGORITHM: (64, _sha256), "": (16, lambda *c: checksum(*c))}
_MAX_HEADER = 100 * 1024 * 1024
_BYTES = {"F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "U8": 1, "I64": 8}
_NUMPY = {"F32": "<f4", "I32": "<i4", "U32": "<u4", "BF16": "<i2", "F16": "<f2", "U8": "u1",
          "I64": "<i8"}


def _js_json(value):
    """JSON text exactly as JavaScript's JSON.stringify writes it (for the header checksum)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def checksum_order(entries):
    """Tensor names in the order their checksums are stored: by start, end, then name."""
    return [n for n, _ in sorted(entries.items(), key=lambda kv: (kv[1][1], kv[1][2], kv[0]))]


def _header_checksum(metadata, entries, hash_fn):
    md = [[k, metadata[k]] for k in sorted(metadata) if k not in (CHECKSUMS_KEY, HEADER_CHECKSUM_KEY)]
    ts = [[n, entries[n][0], entries[n][3], entries[n][1], entries[n][2]]
          for n in checksum_order(entries)]
    return hash_fn(_js_json([md, ts]))


class SafetensorsFile:
    """An open, validated file: `metadata`, `entries` {name: (dtype, start, end, shape)}, and
    `tensor(name)` reading one tensor (checksum verified when the file has checksums)."""

    def __init__(self, path):
        self.path = path
        try:
            self._f = open(path, "rb")
        except OSError as e:
            raise FormatError(f"cannot read {path}: {e.strerror}") from None
        try:
            self._parse(path)
        except BaseException:
            self._f.close()
            raise

    def _parse(self, path):
        bad = lambda why: FormatError(f"{path} is not a valid safetensors file: {why}")  # noqa: E731
        size = os.fstat(self._f.fileno()).st_size
        if size < 8:
            raise bad(f"only {size} bytes (truncated?)")
        (n,) = struct.unpack("<Q", self._f.read(8))
        if n > size - 8:
            raise bad(f"header of {n} bytes does not fit in the file (truncated?)")
        if n > _MAX_HEADER:
            raise bad(f"header of {n} bytes is implausibly large")
        try:
            header = json.loads(self._f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise bad("header is not valid JSON") from None
        if not isinstance(header, dict):
            raise bad("header is not an object")
        self.data_start = 8 + n
        data_len = size - self.data_start
        md = header.pop("__metadata__", {}) or {}
        if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
            raise bad("__metadata__ is not an object of strings")
        self.metadata = md
        self.entries = {}
        for name, e in header.items():
            dtype = e.get("dtype") if isinstance(e, dict) else None
            if dtype not in _BYTES:
                raise bad(f"tensor {name} has unsupported dtype {dtype!r}")
            shape = e.get("shape")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise bad(f"tensor {name} has an invalid shape {shape!r}")
            offs = e.get("data_offsets")
            if not (isinstance(offs, list) and len(offs) == 2 and 0 <= offs[0] <= offs[1] <= data_len):
                raise bad(f"tensor {name} lies outside the data (truncated?)")
            if offs[1] - offs[0] != int(np.prod(shape, dtype=np.int64)) * _BYTES[dtype]:
                raise bad(f"tensor {name}: shape and byte size disagree")
            self.entries[name] = (dtype, offs[0], offs[1], shape)
        end = 0
        for name in checksum_order(self.entries):
            _, a, b, _ = self.entries[name]
            if a != end:
                raise bad(f"tensor {name} overlaps another tensor or follows a gap")
            end = b
        if end != data_len:
            raise bad(f"{data_len - end} trailing bytes after the last tensor")
        self.checksums = None
        algorithm = md.get(ALGORITHM_KEY, "")
        if algorithm not in _HASHES or (algorithm == "" and ALGORITHM_KEY in md):
            raise bad(f"checksums by {json.dumps(algorithm)}; this package verifies {ALGORITHM} "
                      "(and the 64-bit sum of files written before it)")
        digits, self._hash = _HASHES[algorithm]
        if HEADER_CHECKSUM_KEY in md or CHECKSUMS_KEY in md:
            if md.get(HEADER_CHECKSUM_KEY) != _header_checksum(md, self.entries, self._hash):
                raise bad("the header does not match its checksum (corrupt file?)")
            order = checksum_order(self.entries)
            sums = md.get(CHECKSUMS_KEY, "")
            if len(sums) != digits * len(order):
                raise bad("the tensor checksums are missing or cut short (corrupt file?)")
            self.checksums = {n: sums[digits * i:digits * (i + 1)] for i, n in enumerate(order)}

    def raw(self, name):
        """The tensor's bytes, checked against its checksum when the file has checksums."""
        if name not in self.entries:
            raise FormatError(f"{self.path}: no tensor named {name}")
        _, a, b, _ = self.entries[name]
        self._f.seek(self.data_start + a)
        data = self._f.read(b - a)
        if len(data) != b - a:
            raise FormatError(f"{self.path}: unexpected end of file reading {name} (truncated?)")
        if self.checksums is not None and self._hash(data) != self.checksums[name]:
            raise FormatError(f"{self.path} is not a valid safetensors file: tensor {name} does "
                              "not match its checksum (corrupt file?)")
        return data

    def tensor(self, name):
        """The tensor as torch (U32 as int64, BF16 as bfloat16)."""
        dtype, _, _, shape = self.entries[name]
        arr = np.frombuffer(bytearray(self.raw(name)), dtype=_NUMPY[dtype]).reshape(shape)
        if dtype == "U32":
            return torch.from_numpy(arr.astype(np.int64))
        t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))
        return t.view(torch.bfloat16) if dtype == "BF16" else t

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tensor_bytes(t, dtype):
    """(safetensors dtype, little-endian bytes) of a torch tensor stored as `dtype`."""
    t = t.detach().cpu().contiguous()
    if dtype == "U32":
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 2**32):
            raise FormatError("an index does not fit u32")
        return t.numpy().astype("<u4").tobytes()
    if dtype == "BF16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
    want = {"F32": torch.float32, "F16": torch.float16, "I32": torch.int32, "U8": torch.uint8,
            "I64": torch.int64}[dtype]
    return t.to(want).numpy().astype(_NUMPY[dtype]).tobytes()


def write(path, tensors, metadata, checksums=False):
    """Writes [(name, dtype, shape, bytes)] and string metadata to `path` atomically and durably.
    With `checksums`, stores ours (see the module doc) so our side verifies every tensor."""
    entries, off = {}, 0
    for name, dtype, shape, data in tensors:
        if name == "__metadata__" or name in entries:
            raise FormatError(f"tensor name {name!r} is reserved or repeated")
        want = int(np.prod(shape, dtype=np.int64)) * _BYTES[dtype]
        if len(data) != want:
            raise FormatError(f"tensor {name}: {len(data)} bytes for shape {shape} of {dtype}")
        entries[name] = (dtype, off, off + want, list(shape))
        off += want
    md = dict(metadata)
    if checksums:
        sums = {name: _sha256(data) for name, _, _, data in tensors}
        md[ALGORITHM_KEY] = ALGORITHM
        md[CHECKSUMS_KEY] = "".join(sums[n] for n in checksum_order(entries))
        md[HEADER_CHECKSUM_KEY] = _header_checksum(md, entries, _sha256)
    header = {"__metadata__": md}
    for name, (dtype, a, b, shape) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}
    text = _js_json(header).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    tmp = f"{path}.tmp-{uuid.uuid4()}"
    try:
        with open(tmp, "xb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, _, _, data in tensors:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # not every platform syncs a folder; the rename itself is atomic
