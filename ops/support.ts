/**
 * SLTrain's fixed random sparse support: which entries of an out × in weight carry a trained
 * sparse value. Pure CPU code, so a seed gives the same support on every machine and adapter.
 * @module
 */
import { Rng } from "../core/rng.ts";

/**
 * `floor(delta · out · in)` distinct flat indices `row · in + col` of an `out × in` matrix, drawn
 * uniformly without replacement from `seed` and sorted ascending (the layout the sparse ops' fast
 * paths expect). Deterministic for a seed on every machine; memory is O(nnz), never O(out · in), so
 * it stays cheap for 11008 × 4096 at δ = 0.05. Throws a RangeError unless `out`, `in` are positive
 * integers with `out · in <= 2^32` (indices are u32) and `0 < delta < 1`.
 */
export function sampleSupport(out: number, inF: number, delta: number, seed: number): Uint32Array {
  for (const [name, v] of [["out", out], ["in", inF]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) {
      throw new RangeError(`sampleSupport: ${name} must be a positive integer, got ${v}`);
    }
  }
  const n = out * inF;
  if (n > 2 ** 32) {
    throw new RangeError(
      `sampleSupport: ${out} × ${inF} = ${n} entries do not fit u32 flat indices (max 2^32)`,
    );
  }
  if (!(delta > 0 && delta < 1)) {
    throw new RangeError(`sampleSupport: delta must be in (0, 1), got ${delta}`);
  }
  const rng = new Rng(seed);
  const nnz = Math.floor(delta * n);
  // Above half density, sampling the complement takes fewer rounds; the result is O(n) anyway.
  if (nnz > n / 2) return complement(distinctUniform(n, n - nnz, rng), n);
  return distinctUniform(n, nnz, rng);
}

/*
 * The first k distinct values of an i.i.d. uniform stream over [0, n), which is a uniformly random
 * k-subset by symmetry. Drawn in rounds: each round draws exactly the missing count, so the set can
 * never overshoot k and ends on the draw that completes it; sorting + dedup keeps memory at O(k).
 * At density <= 1/2 a draw is new with probability >= 1/2, so the deficit at least halves per round
 * in expectation: O(log k) rounds.
 */
function distinctUniform(n: number, k: number, rng: Rng): Uint32Array {
  let have: Uint32Array = new Uint32Array(0);
  while (have.length < k) {
    const draws = new Uint32Array(k - have.length);
    for (let i = 0; i < draws.length; i++) draws[i] = rng.nextInt(n);
    draws.sort();
    have = mergeUnique(have, draws);
  }
  return have;
}

/** Sorted union of a sorted unique list and a sorted list (which may repeat itself or `a`). */
function mergeUnique(a: Uint32Array, b: Uint32Array): Uint32Array {
  const out = new Uint32Array(a.length + b.length);
  let i = 0, j = 0, m = 0;
  while (i < a.length || j < b.length) {
    const v = j >= b.length || (i < a.length && a[i] <= b[j]) ? a[i++] : b[j++];
    if (m === 0 || out[m - 1] !== v) out[m++] = v;
  }
  return out.slice(0, m);
}

function complement(sortedExcluded: Uint32Array, n: number): Uint32Array {
  const out = new Uint32Array(n - sortedExcluded.length);
  let m = 0, e = 0;
  for (let v = 0; v < n; v++) {
    if (e < sortedExcluded.length && sortedExcluded[e] === v) e++;
    else out[m++] = v;
  }
  return out;
}
