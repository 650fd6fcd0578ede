"""Counter-based random numbers: a pure function of (seed, entity kind, stable id, counter).

Nothing here has a stream position. A random number is a hash of the run seed, the kind of
entity that draws it (deployment, rack, row, site, request, routing), the entity's stable id
(:mod:`distgen.topology`) and a counter (a step, interval or request index), so it does not
depend on how the fleet is cut into shards or the run into time chunks.

The hash is the SplitMix64 finaliser ("mix64", Steele, Lea & Flood, *Fast splittable
pseudorandom number generators*, OOPSLA 2014; constants of Vigna's ``splitmix64.c``,
https://prng.di.unimi.it/splitmix64.c)::

    mix64(x): x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB;
              x ^= x >> 31                                   (uint64, wrapping arithmetic)

Formulas (``G = 0x9E3779B97F4A7C15``, the SplitMix64 increment; ``M = 0xD1B54A32D192ED03``)::

    entity_key(seed, kind, uid, stream) = mix64(mix64(seed * G + kind + (stream << 16)) ^ (uid * M))
    hash(key, counter)                  = mix64(key + counter * G)
    uniform01(key, counter)             = ((hash >> 12) + 0.5) * 2**-52          in (0, 1)
    normal(key, counter)                = inverse normal CDF of uniform01(key, counter), by
                                          table interpolation (see below)

``seed`` and ``uid`` are taken modulo 2**64. ``stream`` separates independent uses of the same
entity (stream 0 is the default, e.g. the kernel's state/power draws; the rate processes use
:data:`STREAM_RATE`), so two subsystems never reuse each other's numbers. ``uniform01`` keeps
52 bits so that ``(x + 0.5) * 2**-52`` is exact in float64 and strictly inside (0, 1) (with 53
bits the top value would round to 1.0). ``normal`` uses one hash per draw and the inverse normal
CDF: linear interpolation in a table of the exact quantile at u = i / 4096 for the body, and
Acklam's rational approximation (P. J. Acklam, "An algorithm for computing the inverse normal
cumulative distribution function", 2003; relative error below 1.15e-9) in the outer 64 cells at
each end (u < 1/64 or u > 63/64, 3 % of draws), where the quantile curves too fast for a table.
The body's interpolation error is at most 1.03e-5 (at its edges); the tails reach |z| = 8.2.
Per draw that is a multiply, two loads and a fused multiply-add, several times cheaper than
Box-Muller or a rational function with a division in the per-deployment-step kernels.

Every function has a vectorised NumPy version (broadcasting over arrays of keys / counters) and
a scalar ``@numba.njit(inline='always')`` twin for compiled kernels (``*_nb``). The uint64 hashes
and ``uniform01`` are bit-identical between the two, and so is ``normal`` in its table body; in
its tails it agrees to a few ulp (NumPy's SIMD ``log`` may differ from libm in the last bit).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

#: Entity kinds (the ``kind`` argument of :func:`entity_key`).
KIND_DEPLOYMENT = 1
KIND_RACK = 2
KIND_ROW = 3
KIND_SITE = 4
KIND_REQUEST = 5
KIND_ROUTING = 6

#: Streams (the ``stream`` argument of :func:`entity_key`).
STREAM_MAIN = 0
STREAM_RATE = 1     # rate modulation and bursts (distgen.workload.rates)
STREAM_REPLAY = 2   # trace thinning / replication jitter (distgen.workload.routing)

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
UID_MULT = np.uint64(0xD1B54A32D192ED03)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S12 = np.uint64(12)
_S16 = np.uint64(16)
_INV52 = 2.0 ** -52

# Acklam's coefficients (central region a/b, tails c/d) and the central region's bounds
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
      3.754408661907416e+00)
_P_LOW = 0.02425
_P_HIGH = 1.0 - _P_LOW

_U64_MASK = (1 << 64) - 1


def _as_u64(x) -> np.ndarray:
    """Array (or 0-d array) of uint64; Python ints are taken modulo 2**64, int64 arrays wrap."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, np.uint64):
        return np.asarray(int(x) & _U64_MASK, dtype=np.uint64)
    a = np.asarray(x)
    if a.dtype == np.uint64:
        return a
    if a.dtype.kind not in "iub":
        raise TypeError(f"expected integers, got dtype {a.dtype}")
    return a.astype(np.uint64)


def _ret(a: np.ndarray):
    """0-d results come back as NumPy scalars, others as arrays."""
    return a[()] if a.ndim == 0 else a


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> _S30)
    x = x * _C1
    x = x ^ (x >> _S27)
    x = x * _C2
    return x ^ (x >> _S31)


def mix64(x):
    """SplitMix64 finaliser of ``x`` (uint64, vectorised)."""
    with np.errstate(over="ignore"):
        return _ret(_mix64(_as_u64(x)))


def entity_key(seed, kind, uid, stream=STREAM_MAIN):
    """Key of entity ``uid`` of ``kind`` (vectorised over ``uid``); see the module formula."""
    with np.errstate(over="ignore"):
        base = _mix64(_as_u64(seed) * GOLDEN + _as_u64(kind) + (_as_u64(stream) << _S16))
        return _ret(_mix64(base ^ (_as_u64(uid) * UID_MULT)))


def hash64(key, counter):
    """``mix64(key + counter * G)``, broadcasting ``key`` against ``counter``."""
    with np.errstate(over="ignore"):
        return _ret(_mix64(_as_u64(key) + _as_u64(counter) * GOLDEN))


def uniform01(key, counter):
    """Uniform float64 in the open interval (0, 1), broadcasting ``key`` against ``counter``."""
    with np.errstate(over="ignore"):
        h = _mix64(_as_u64(key) + _as_u64(counter) * GOLDEN)
    return _ret(((h >> _S12).astype(np.float64) + 0.5) * _INV52)


def _normal_table():
    from scipy.special import ndtri
    u = np.arange(NORMAL_TABLE_CELLS + 1) / NORMAL_TABLE_CELLS
    z = np.zeros_like(u)
    inner = slice(1, NORMAL_TABLE_CELLS)
    z[inner] = ndtri(u[inner])  # the end nodes lie in the Acklam cells and are never read
    return z


NORMAL_TABLE_CELLS = 4096
NORMAL_TABLE_EDGE = 64
NORMAL_TABLE = _normal_table()


# natural log from frexp and arithmetic: the same bits on every machine (CPU, GPU), unlike a
# math library's log; log(m 2^e) = e ln2 + 2 atanh(s), s = (m - 1) / (m + 1), m in [1/sqrt2, sqrt2)
_LN2_HI = 6.93147180369123816490e-01   # ln 2 split so that e * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_SQRT_HALF = 0.70710678118654752440
#: 1 / (2k + 1), k = 1..11: the atanh series; |s| <= 0.1716, so the first term left out is
#: below 2e-17 relative
_ATANH = tuple(1.0 / (2 * k + 1) for k in range(1, 12))


def portable_log(x):
    """Natural logarithm of positive finite ``x`` (vectorised), within 2 ulp of libm and the
    same bits on any IEEE-754 machine (frexp, +, *, / only; no fused multiply-add)."""
    m, e = np.frexp(np.asarray(x, np.float64))
    small = m < _SQRT_HALF
    m = np.where(small, m * 2.0, m)
    e = np.where(small, e - 1, e).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    poly = _ATANH[-1]
    for c in _ATANH[-2::-1]:
        poly = poly * z + c
    return e * _LN2_HI + (e * _LN2_LO + (s + s * (z * poly)) * 2.0)


def inverse_normal_cdf(u):
    """Acklam's approximation of the standard normal quantile function, for u in (0, 1)."""
    u = np.asarray(u, np.float64)
    a, b, c, d = _A, _B, _C, _D
    q = u - 0.5
    r = q * q
    central = ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
               / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0))
    t = np.sqrt(-2.0 * portable_log(np.minimum(u, 1.0 - u)))
    tail = ((((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5])
            / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1.0))
    return np.where(u < _P_LOW, tail, np.where(u > _P_HIGH, -tail, central))


def normal_of_uniform(u):
    """The standard normal at probability ``u`` by the table-plus-tails method (module doc)."""
    u = np.asarray(u, np.float64)
    x = u * NORMAL_TABLE_CELLS
    i = np.minimum(x.astype(np.int64), NORMAL_TABLE_CELLS - 1)
    table = NORMAL_TABLE[i] + (x - i) * (NORMAL_TABLE[i + 1] - NORMAL_TABLE[i])
    tails = (i < NORMAL_TABLE_EDGE) | (i >= NORMAL_TABLE_CELLS - NORMAL_TABLE_EDGE)
    return np.where(tails, inverse_normal_cdf(u), table)


def normal(key, counter):
    """Standard normal float64 from :func:`uniform01` (see :func:`normal_of_uniform`)."""
    return _ret(normal_of_uniform(uniform01(key, counter)))


# ---------------------------------------------------------------------------------------------
# scalar twins for compiled kernels: every intermediate stays uint64 (mixing uint64 with int64
# in numba promotes to float64, so every constant is a uint64 global)


@nb.njit(inline="always")
def mix64_nb(x):
    """SplitMix64 finaliser of a scalar uint64 (numba)."""
    x = np.uint64(x)
    x = x ^ (x >> _S30)
    x = x * _C1
    x = x ^ (x >> _S27)
    x = x * _C2
    return x ^ (x >> _S31)


@nb.njit(inline="always")
def entity_key_nb(seed, kind, uid, stream):
    """Scalar :func:`entity_key` (numba); arguments must be non-negative integers."""
    base = mix64_nb(np.uint64(seed) * GOLDEN + np.uint64(kind) + (np.uint64(stream) << _S16))
    return mix64_nb(base ^ (np.uint64(uid) * UID_MULT))


@nb.njit(inline="always")
def hash64_nb(key, counter):
    return mix64_nb(np.uint64(key) + np.uint64(counter) * GOLDEN)


@nb.njit(inline="always")
def uniform01_nb(key, counter):
    """Scalar :func:`uniform01` (numba), bit-identical to the NumPy version."""
    h = mix64_nb(np.uint64(key) + np.uint64(counter) * GOLDEN)
    return (np.float64(h >> _S12) + 0.5) * _INV52


@nb.njit(inline="always")
def portable_log_nb(x):
    """Scalar :func:`portable_log` (numba), the same operations in the same order."""
    m, e = math.frexp(x)
    if m < _SQRT_HALF:
        m *= 2.0
        e -= 1
    ef = float(e)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    poly = _ATANH[10]
    for i in range(9, -1, -1):
        poly = poly * z + _ATANH[i]
    return ef * _LN2_HI + (ef * _LN2_LO + (s + s * (z * poly)) * 2.0)


@nb.njit(inline="always")
def inverse_normal_cdf_nb(u):
    """Scalar :func:`inverse_normal_cdf` (numba), same operation order as the NumPy version."""
    if _P_LOW <= u <= _P_HIGH:
        q = u - 0.5
        r = q * q
        return ((((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q
                / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0))
    t = math.sqrt(-2.0 * portable_log_nb(min(u, 1.0 - u)))
    tail = ((((((_C[0] * t + _C[1]) * t + _C[2]) * t + _C[3]) * t + _C[4]) * t + _C[5])
            / ((((_D[0] * t + _D[1]) * t + _D[2]) * t + _D[3]) * t + 1.0))
    return tail if u < _P_LOW else -tail


@nb.njit(inline="always")
def normal_nb(key, counter):
    """Scalar :func:`normal` (numba), same operations as the NumPy version."""
    u = uniform01_nb(key, counter)
    x = u * NORMAL_TABLE_CELLS
    i = min(int(x), NORMAL_TABLE_CELLS - 1)
    if i < NORMAL_TABLE_EDGE or i >= NORMAL_TABLE_CELLS - NORMAL_TABLE_EDGE:
        return inverse_normal_cdf_nb(u)
    return NORMAL_TABLE[i] + (x - i) * (NORMAL_TABLE[i + 1] - NORMAL_TABLE[i])
