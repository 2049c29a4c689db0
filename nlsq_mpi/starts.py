"""Starting points, each a deterministic function of (sampler, seed, bounds, global index).

Start i is the same point whatever the rank count, batch size or order of generation: the
distributed driver asks for arbitrary index ranges. Only "lhs" also depends on n_starts,
since a Latin hypercube stratifies all of its points together.

- "sobol": Sobol' sequence (Joe & Kuo 2008 direction numbers, first 1024 dimensions, shipped
  in sobol_directions.npz), scrambled by a seeded random linear matrix scramble plus digital
  shift (Matoušek 1998), evaluated by index through its Gray-code form (Antonov & Saleev 1979).
- "halton": Halton sequence with a seeded Cranley-Patterson rotation.
- "lhs": Latin hypercube over n_starts points, seeded.
- "uniform": independent uniform points from a counter-based hash (SplitMix64) of (seed, i, j).
- an explicit (k, n) array: row i is start i.
Points are drawn in the unit cube, inside the cells (never exactly on a bound), and mapped
to [lb, ub]. When p0 is given it is start 0.
"""
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import InputError

SAMPLERS = ("sobol", "halton", "lhs", "uniform")
_SOBOL_BITS = 30


@lru_cache(maxsize=1)
def _direction_table():
    with np.load(Path(__file__).with_name("sobol_directions.npz")) as data:
        return data["poly"], data["vinit"]


def _sobol_directions(dim):
    """(dim, BITS) direction integers, most significant digit first (Joe & Kuo's recurrence)."""
    poly, vinit = _direction_table()
    if dim > len(poly):
        raise InputError(f"sampler: 'sobol' supports at most {len(poly)} parameters, got {dim}")
    bits = _SOBOL_BITS
    v = np.zeros((dim, bits), np.int64)
    v[0] = 1 << (bits - 1 - np.arange(bits))
    for d in range(1, dim):
        s = int(poly[d]).bit_length() - 1
        for k in range(bits):
            if k < s:
                v[d, k] = int(vinit[d, k]) << (bits - 1 - k)
            else:
                val = v[d, k - s] ^ (v[d, k - s] >> s)
                for t in range(1, s):
                    if (int(poly[d]) >> (s - t)) & 1:
                        val ^= v[d, k - t]
                v[d, k] = val
    return v


def _parity(a):
    a = a.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        a ^= a >> shift
    return a & 1


def _scrambled_sobol_directions(dim, seed):
    """Linear matrix scramble: digit r of each direction becomes the parity of the digits
    selected by row r of a random unit lower-triangular binary matrix; plus a digital shift."""
    bits = _SOBOL_BITS
    v = _sobol_directions(dim)
    rng = np.random.default_rng([seed, 0x50B01])
    weights = 1 << (bits - 1 - np.arange(bits))          # digit r -> its bit
    out = np.zeros_like(v)
    for d in range(dim):
        ltm = np.tril(rng.integers(0, 2, (bits, bits)), -1) + np.eye(bits, dtype=np.int64)
        row_masks = ltm @ weights                           # digits that feed output digit r
        digits = _parity(v[d][None, :] & row_masks[:, None])  # (r, k)
        out[d] = weights @ digits
    shift = rng.integers(0, 1 << bits, dim)
    return out, shift


def _sobol(indices, dim, seed):
    v, shift = _scrambled_sobol_directions(dim, seed)
    gray = indices ^ (indices >> 1)
    x = np.broadcast_to(shift, (len(indices), dim)).copy()
    for k in range(_SOBOL_BITS):
        on = ((gray >> k) & 1).astype(bool)
        x[on] ^= v[:, k]
    return (x + 0.5) / float(1 << _SOBOL_BITS)


def _primes(k):
    out, c = [], 2
    while len(out) < k:
        if all(c % p for p in out if p * p <= c):
            out.append(c)
        c += 1
    return out


def _halton(indices, dim, seed):
    shift = np.random.default_rng([seed, 0x4A170]).random(dim)
    u = np.empty((len(indices), dim))
    for j, b in enumerate(_primes(dim)):
        i = indices + 1
        val, f = np.zeros(len(indices)), 1.0 / b
        while np.any(i > 0):
            val += f * (i % b)
            i //= b
            f /= b
        u[:, j] = val
    return (u + shift) % 1.0


def _lhs(indices, dim, seed, n_total):
    rng = np.random.default_rng([seed, 0x1A5])
    perms = np.stack([rng.permutation(n_total) for _ in range(dim)], axis=1)
    jitter = rng.random((n_total, dim))
    return (perms[indices] + jitter[indices]) / n_total


def _splitmix64(z):
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(indices, dim, seed):
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        counter = (indices.astype(np.uint64)[:, None] * np.uint64(dim)
                   + np.arange(dim, dtype=np.uint64)[None, :])
        bits = _splitmix64(counter ^ key) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def unit_points(sampler, seed, indices, dim, n_total):
    """Points in the open unit cube for the given global start indices."""
    indices = np.asarray(indices, np.int64)
    if sampler == "sobol":
        return _sobol(indices, dim, seed)
    if sampler == "halton":
        return _halton(indices, dim, seed)
    if sampler == "lhs":
        return _lhs(indices, dim, seed, n_total)
    if sampler == "uniform":
        return _uniform(indices, dim, seed)
    raise InputError(f"sampler: unknown sampler {sampler!r}; choose one of "
                     f"{', '.join(SAMPLERS)} or pass a (n_starts, n_params) array")


def start_points(sampler, seed, lb, ub, indices, n_total, p0=None):
    """Start points (len(indices), n) for global start indices; p0, when given, is start 0."""
    indices = np.asarray(indices, np.int64)
    lb, ub = np.asarray(lb, float), np.asarray(ub, float)
    if isinstance(sampler, np.ndarray):
        pts = sampler[indices].astype(float)
    else:
        pts = lb + unit_points(sampler, seed, indices, lb.size, n_total) * (ub - lb)
    if p0 is not None:
        pts[indices == 0] = p0
    return pts
