"""The 64-bit checksum of our checkpoints (core/checksum.ts), in one place so it can be swapped.

`checksum(chunks)` hashes bytes fed as any number of pieces into 16 lowercase hex digits, exactly
as core/checksum.ts's `Checksum` does: two 32-bit lanes updated per little-endian word, a tail of
fewer than 4 bytes mixed in at the end with the length. Not cryptographic; it guards against
corruption. The word loop is sequential (each word depends on the last), so it cannot be
vectorized: where a C compiler is present the loop is compiled once into a small shared library
(`_checksum_c`, cached in ~/.cache/sltrain_torch), else it runs in Python (about 1 s per 4 MB).
"""

import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile

_M = 0xFFFFFFFF
P1, P2, P3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
_SEED = (0x165667B1, 0x27D4EB2F)


def _rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & _M


def _fmix(h):
    h = ((h ^ (h >> 16)) * P2) & _M
    h = ((h ^ (h >> 13)) * P3) & _M
    return h ^ (h >> 16)


def _words_py(a, b, words):
    for x in words:
        t = a ^ x
        a = ((((t << 13) | (t >> 19)) & _M) * P1) & _M
        t = (b + x) & _M
        b = ((((t << 17) | (t >> 15)) & _M) * P2) & _M
    return a, b


_C_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
static uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
void sltrain_words(uint32_t *ab, const uint32_t *w, size_t n) {
  uint32_t a = ab[0], b = ab[1];
  for (size_t k = 0; k < n; k++) {
    a = rotl(a ^ w[k], 13) * 0x9e3779b1u;
    b = rotl(b + w[k], 17) * 0x85ebca77u;
  }
  ab[0] = a; ab[1] = b;
}
"""


def _load_c():
    """The compiled word loop, or None (no compiler, or SLTRAIN_TORCH_PURE_CHECKSUM=1)."""
    if os.environ.get("SLTRAIN_TORCH_PURE_CHECKSUM") == "1" or sys.byteorder != "little":
        return None
    tag = hashlib.sha256(_C_SOURCE.encode()).hexdigest()[:12]
    cache = os.path.join(os.path.expanduser("~"), ".cache", "sltrain_torch")
    lib = os.path.join(cache, f"checksum-{tag}.so")
    try:
        if not os.path.exists(lib):
            os.makedirs(cache, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "checksum.c")
                with open(src, "w") as f:
                    f.write(_C_SOURCE)
                out = os.path.join(tmp, "checksum.so")
                subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", out, src], check=True,
                               capture_output=True, timeout=60)
                os.replace(out, lib)  # atomic: concurrent ranks never see half a library
        fn = ctypes.CDLL(lib).sltrain_words
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p, ctypes.c_size_t]
        fn.restype = None
        return fn
    except (OSError, subprocess.SubprocessError):
        return None


_c_words = _load_c()


class Checksum:
    """Streaming form: `update(bytes)` any number of times, then `digest()`."""

    def __init__(self):
        self._a, self._b = _SEED
        self._n = 0
        self._tail = b""

    def update(self, data):
        data = memoryview(data).cast("B")
        self._n += len(data)
        if self._tail:
            need = 4 - len(self._tail)
            self._tail += bytes(data[:need])
            data = data[need:]
            if len(self._tail) < 4:
                return self
            self._words(self._tail)
            self._tail = b""
        whole = len(data) & ~3
        if whole:
            self._words(data[:whole])
        self._tail = bytes(data[whole:])
        return self

    def _words(self, data):
        if _c_words is not None:
            buf = bytes(data) if not isinstance(data, (bytes, bytearray)) else data
            ab = (ctypes.c_uint32 * 2)(self._a, self._b)
            _c_words(ab, ctypes.c_char_p(buf), len(buf) // 4)
            self._a, self._b = ab[0], ab[1]
        else:
            self._a, self._b = _words_py(self._a, self._b, memoryview(bytes(data)).cast("I"))

    def digest(self):
        a, b = self._a, self._b
        for byte in self._tail:
            t = a ^ (byte | 0x100)
            a = (_rotl(t, 13) * P1) & _M
            b = (_rotl((b + byte) & _M, 17) * P2) & _M
        n = self._n
        a = _fmix(a ^ (n & _M) ^ ((b * P3) & _M))
        b = _fmix(b ^ ((n >> 32) & _M) ^ a)
        return f"{a:08x}{b:08x}"


def checksum(*chunks):
    """The digest of the concatenated byte chunks (str chunks count as their UTF-8 bytes)."""
    c = Checksum()
    for chunk in chunks:
        c.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return c.digest()
