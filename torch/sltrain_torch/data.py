"""Our token shards (data/shards.ts, written by prepare.ts) and batch order (data/batches.ts).

A shard folder holds `manifest.json`, per split (`train`, `val`) the token stream cut into shards
`train-00000.bin`, ... (32-byte header: magic `SLTS`, u32 version 2, u32 bytes per id 2 or 4,
u32 id count, u32 checksum chunk bytes (4096), the hash name `sha256` in 12 zero-padded bytes;
then the ids; then the SHA-256 of each 4096-byte chunk of the ids) and a document index
`train.docs` (the same header with `SLTD`, 16, 0; then u64 start and u64 length per non-empty
document; then its chunk checksums). Opening checks the manifest, every header and every file
size, as our side does, and verifies every chunk's checksum (hashlib), so a damaged byte is an
error naming the file and offset. Version 1 folders (no checksums) are refused.

Sequences are packed windows of seq + 1 tokens overlapping by one (`packed`), or one document per
sequence (`none`); the batch order is a per-epoch Fisher-Yates permutation seeded by
(seed · 1000003 + epoch), and the position {epoch, index} is what our checkpoints store.
"""

import hashlib
import json
import math
import os
import struct

import numpy as np
import torch

from .errors import FormatError
from .rng import permutation

IGNORE_INDEX = -100
SHARD_FORMAT = "sltrain-shards"
SHARD_VERSION = 2
_HEADER = 32
CHUNK_HASH = "sha256"
CHUNK_BYTES = 4096
_DIGEST = 32
_REPREPARE = "prepare the folder again with this version (prepare.ts or ./sltrain prepare)"
_ID_BYTES = {"uint16": 2, "uint32": 4}


def _header(path, magic, expect):
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER)
    except OSError:
        raise FormatError(f"{path}: missing") from None
    if len(raw) < _HEADER or raw[:4] != magic:
        raise FormatError(f"{path}: wrong magic (not an sltrain {magic.decode()} file)")
    version, a, b, chunk = struct.unpack("<IIII", raw[4:20])
    if version != SHARD_VERSION:
        old = f" (version 1 has no checksums): {_REPREPARE}" if version == 1 else ""
        raise FormatError(f"{path}: version {version}, but this package reads version {SHARD_VERSION}{old}")
    hash_name = raw[20:32].rstrip(b"\0").decode("ascii", "replace")
    if hash_name != CHUNK_HASH:
        raise FormatError(f"{path}: checksums by {hash_name!r}, this package verifies {CHUNK_HASH}")
    for got, (want, what) in zip((a, b, chunk), expect + [(CHUNK_BYTES, "checksum chunk bytes")]):
        if got != want:
            raise FormatError(f"{path}: header says {what} {got}, expected {want}")


def chunk_sums(payload):
    """The checksums stored after a payload: the SHA-256 of each CHUNK_BYTES bytes, concatenated."""
    view = memoryview(payload)
    return b"".join(hashlib.sha256(view[k:k + CHUNK_BYTES]).digest()
                    for k in range(0, len(view), CHUNK_BYTES))


def _trailer(nbytes):
    return -(-nbytes // CHUNK_BYTES) * _DIGEST


def _verify(path, nbytes):
    """Checks every chunk of the payload of `path` against its stored checksum."""
    with open(path, "rb") as f:
        f.seek(_HEADER)
        payload = f.read(nbytes)
        sums = f.read(_trailer(nbytes))
    got = chunk_sums(payload)
    if got != sums:
        c = next(k for k in range(len(got) // _DIGEST)
                 if got[k * _DIGEST:(k + 1) * _DIGEST] != sums[k * _DIGEST:(k + 1) * _DIGEST])
        at = _HEADER + c * CHUNK_BYTES
        end = _HEADER + min((c + 1) * CHUNK_BYTES, nbytes) - 1
        raise FormatError(f"{path}: bytes {at}-{end} (checksum chunk {c}) do not match their "
                          f"{CHUNK_HASH} (damaged file): {_REPREPARE}, or restore it")


def _size(path, want):
    try:
        size = os.path.getsize(path)
    except OSError:
        raise FormatError(f"{path}: missing") from None
    if size != want:
        raise FormatError(f"{path}: {size} bytes, expected {want} "
                          f"({'truncated' if size < want else 'trailing data'})")


class Split:
    """One split's token stream (read on demand) and its documents."""

    def __init__(self, folder, manifest, split):
        self.path = os.path.join(folder, split)
        s = manifest["splits"][split]
        per, b = manifest["shardTokens"], _ID_BYTES[manifest["dtype"]]
        self.vocab = manifest["tokenizer"]["vocabSize"]
        self.length, self.docs, self.per = s["tokens"], s["docs"], per
        self._shards = []
        for k, name in enumerate(s["shards"]):
            path = os.path.join(folder, name)
            count = per if k < len(s["shards"]) - 1 else s["tokens"] - per * k
            _size(path, _HEADER + count * b + _trailer(count * b))
            _header(path, b"SLTS", [(b, "bytes per id"), (count, "id count")])
            _verify(path, count * b)
            dt = np.dtype("<u2" if b == 2 else "<u4")
            self._shards.append((path, np.memmap(path, dtype=dt, mode="r", offset=_HEADER,
                                                 shape=(count,))))
        self._index = os.path.join(folder, s["index"])
        _size(self._index, _HEADER + 16 * s["docs"] + _trailer(16 * s["docs"]))
        _header(self._index, b"SLTD", [(16, "entry bytes"), (0, "reserved")])
        _verify(self._index, 16 * s["docs"])
        self._entries = np.memmap(self._index, dtype="<u8", mode="r", offset=_HEADER,
                                  shape=(s["docs"], 2)) if s["docs"] else np.zeros((0, 2), "<u8")

    def read(self, start, end):
        """Ids [start, end) as int64 numpy, checked against the vocabulary."""
        out = np.empty(end - start, dtype=np.int64)
        p = start
        while p < end:
            k = p // self.per
            n = min(end, (k + 1) * self.per) - p
            path, ids = self._shards[k]
            piece = ids[p - k * self.per:p - k * self.per + n]
            if n and int(piece.max()) >= self.vocab:
                bad = int(np.argmax(piece >= self.vocab))
                raise FormatError(f"{path}: id {int(piece[bad])} at position {p - k * self.per + bad}"
                                  f" is outside the vocabulary of {self.vocab}")
            out[p - start:p - start + n] = piece
            p += n
        return out

    def doc(self, i, limit):
        start, length = (int(x) for x in self._entries[i])
        if not start + length < self.length:
            raise FormatError(f"{self._index}: document {i} lies outside the stream")
        return self.read(start, start + min(length, limit))


class Shards:
    """An opened, validated shard folder: `manifest`, `train` and `val` splits."""

    def __init__(self, folder):
        path = os.path.join(folder, "manifest.json")
        try:
            with open(path) as f:
                m = json.load(f)
        except OSError:
            raise FormatError(f"{path}: cannot be read (not a shard folder made by prepare.ts?)") from None
        except ValueError:
            raise FormatError(f"{path}: not valid JSON") from None
        bad = lambda why: FormatError(f"{path}: {why}")  # noqa: E731
        if not isinstance(m, dict) or m.get("format") != SHARD_FORMAT:
            raise bad(f"not an sltrain shard manifest (format {m.get('format') if isinstance(m, dict) else None})")
        if m.get("version") != SHARD_VERSION:
            old = f" (version 1 shards have no checksums): {_REPREPARE}" if m.get("version") == 1 else ""
            raise bad(f"version {m.get('version')}, but this package reads version {SHARD_VERSION}{old}")
        if m.get("checksum") != {"algorithm": CHUNK_HASH, "chunkBytes": CHUNK_BYTES}:
            raise bad(f"checksums {m.get('checksum')}, this package verifies {CHUNK_HASH} of "
                      f"{CHUNK_BYTES}-byte chunks")
        if m.get("dtype") not in _ID_BYTES:
            raise bad(f"unknown dtype {m.get('dtype')}")
        t = m.get("tokenizer") or {}
        if not all(isinstance(t.get(k), int) for k in ("vocabSize", "eos", "pad")):
            raise bad("bad tokenizer entry")
        for split in ("train", "val"):
            s = (m.get("splits") or {}).get(split)
            if not (s and isinstance(s.get("shards"), list) and s.get("tokens", 0) > 0):
                raise bad(f"bad or empty splits.{split}")
            if len(s["shards"]) != math.ceil(s["tokens"] / m["shardTokens"]):
                raise bad(f"splits.{split}: {len(s['shards'])} shards for {s['tokens']} tokens")
            for name in s["shards"] + [s["index"]]:
                if not isinstance(name, str) or "/" in name or name.startswith("."):
                    raise bad(f"splits.{split}: bad file name {name}")
        self.folder, self.manifest, self.tokenizer = folder, m, t
        self.train, self.val = Split(folder, m, "train"), Split(folder, m, "val")


class Sequences:
    """Training sequences of `seq` inputs over a split: `packed` windows or one document each."""

    def __init__(self, split, seq, packing, eos, pad):
        if packing not in ("packed", "none"):
            raise ValueError(f"packing must be packed or none, got {packing!r}")
        self.split, self.seq, self.packing, self.eos, self.pad = split, seq, packing, eos, pad
        self.count = math.ceil(split.length / seq) if packing == "packed" else split.docs

    def fill(self, i, inputs, targets):
        """Writes sequence i into the int64 numpy rows `inputs`, `targets` (length seq)."""
        seq = self.seq
        if self.packing == "packed":
            start = i * seq
            w = self.split.read(start, min(start + seq + 1, self.split.length))
            n = len(w)
            inputs[:] = self.pad
            targets[:] = IGNORE_INDEX
            inputs[:min(n, seq)] = w[:seq]
            if n > 1:
                targets[:n - 1] = w[1:seq + 1]
            return
        d = self.split.doc(i, seq + 1)
        full = np.concatenate([d, [self.eos]])[:seq + 1]  # the document, then its end of text
        n = len(full)
        inputs[:] = self.pad
        targets[:] = IGNORE_INDEX
        inputs[:min(n, seq)] = full[:seq]
        if n > 1:
            targets[:n - 1] = full[1:]


class BatchStream:
    """Endless batches of `batch` sequences in our order; `state` is {epoch, index}."""

    def __init__(self, sequences, batch, seed):
        if sequences.count == 0:
            raise FormatError("no training sequences: the data is empty")
        self.sequences, self.batch, self.seed = sequences, batch, seed
        self.state = {"epoch": 0, "index": 0}

    @property
    def state(self):
        return dict(self._state)

    @state.setter
    def state(self, s):
        self._state = {"epoch": int(s["epoch"]), "index": int(s["index"])}
        self._order = permutation(self.sequences.count, self.seed * 1_000_003 + self._state["epoch"])

    def next(self, rows=None):
        """The next global batch as (inputs, targets) int64 [len(rows), seq]: all `batch` rows, or
        only those in `rows` (a range; the position still advances by the whole batch)."""
        rows = range(self.batch) if rows is None else rows
        seq = self.sequences.seq
        inputs = np.empty((len(rows), seq), dtype=np.int64)
        targets = np.empty((len(rows), seq), dtype=np.int64)
        for b in range(self.batch):
            if self._state["index"] >= len(self._order):
                self.state = {"epoch": self._state["epoch"] + 1, "index": 0}
            i = self._order[self._state["index"]]
            self._state["index"] += 1
            if b in rows:
                r = b - rows.start
                self.sequences.fill(i, inputs[r], targets[r])
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def validation_batches(val, batch, max_tokens):
    """The validation prefix cli/evaluate.ts covers: batches of `batch` sequences from the first,
    until `max_tokens` targets are seen."""
    seen, start = 0, 0
    while start < val.count and seen < max_tokens:
        rows = min(batch, val.count - start)
        inputs = np.empty((rows, val.seq), dtype=np.int64)
        targets = np.empty((rows, val.seq), dtype=np.int64)
        for r in range(rows):
            val.fill(start + r, inputs[r], targets[r])
        seen += int((targets != IGNORE_INDEX).sum())
        yield torch.from_numpy(inputs), torch.from_numpy(targets)
        start += batch
