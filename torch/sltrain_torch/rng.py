"""Our seeded generator (core/rng.ts: xoshiro128**, seeded by splitmix32) in Python, bit for bit:
the batch order of a run depends on it."""

_M = 0xFFFFFFFF


def _imul(a, b):
    return (a * b) & _M


def _rotl(x, k):
    return ((x << k) | (x >> (32 - k))) & _M


class Rng:
    """xoshiro128** seeded from a non-negative safe integer as core/rng.ts's `Rng` is."""

    def __init__(self, seed):
        if not (isinstance(seed, int) and 0 <= seed < 2**53):
            raise ValueError(f"Rng seed must be a non-negative safe integer, got {seed!r}")
        x = (seed & _M) ^ _imul((seed >> 32) & _M, 0x27D4EB2D)
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B9) & _M
            z = _imul(x ^ (x >> 16), 0x85EBCA6B)
            z = _imul(z ^ (z >> 13), 0xC2B2AE35)
            s.append(z ^ (z >> 16))
        if not any(s):
            s[0] = 1
        self.s = s

    def next_u32(self):
        s0, s1, s2, s3 = self.s
        result = _imul(_rotl(_imul(s1, 5), 7), 9)
        t = (s1 << 9) & _M
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        self.s = [s0, s1, s2, _rotl(s3, 11)]
        return result

    def next_int(self, n):
        """A uniform integer in [0, n) without modulo bias."""
        limit = 2**32 - (2**32 % n)
        while True:
            x = self.next_u32()
            if x < limit:
                return x % n


def permutation(n, seed):
    """The Fisher-Yates shuffle of range(n) that data/batches.ts's BatchStream draws from `seed`."""
    p = list(range(n))
    rng = Rng(seed)
    for i in range(n - 1, 0, -1):
        j = rng.next_int(i + 1)
        p[i], p[j] = p[j], p[i]
    return p
