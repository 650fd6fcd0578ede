"""Oversubscription: how many units (racks, servers) fit under a power limit.

The trace answer
----------------
A group of N units is drawn from a pool of unit traces (the racks of one serving
configuration in a generated run, on the run's shared clock) and summed; its *group peak* is
the highest sample of the sum. One Monte-Carlo repetition is a random order of the pool
(``rng.permutation``); the group of N is its first N units, so groups are nested and a
repetition's group peak never falls as N grows (unit power is non-negative). When N exceeds
the pool, the order is extended by drawing units again uniformly with replacement (copies are
perfectly correlated, which makes the answer conservative; the result says from which N this
happens). The P-th percentile (P = 95 by default, NumPy's linear interpolation) of the group
peak over the repetitions is non-decreasing in N, and the answer is the largest N whose
percentile stays within the limit.

The time alignment of the pool is kept: all units see the same diurnal traffic and the same
site-wide rate fluctuations, which is what makes their peaks coincide. The answer depends on
the resolution of the unit traces (a 1 s peak is higher than a 1 min peak).

The assumption answers
----------------------
A constant power per unit (TDP, mean power, busiest phase of a look-up table) admits
floor(limit / unit power) units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Admission", "admissible_units", "units_within_constant", "group_peak_percentiles"]


@dataclass(frozen=True)
class Admission:
    """Result of :func:`admissible_units`.

    Attributes
    ----------
    limit_w : [W] the power limit of the group.
    percentile : [%] percentile of the group peak held within the limit.
    repetitions : Monte-Carlo repetitions (random orders of the pool).
    pool_units : units in the pool.
    units : the largest N whose percentile group peak is within the limit (0 if none).
    n_units : (n_max,) group sizes 1..n_max evaluated.
    peak_percentile_w : [W] (n_max,) the percentile of the group peak for each N.
    peak_mean_w : [W] (n_max,) the mean group peak over repetitions for each N.
    with_replacement_from : first N whose groups may repeat a unit (pool_units + 1), or None
        when no evaluated N exceeds the pool.
    """

    limit_w: float
    percentile: float
    repetitions: int
    pool_units: int
    units: int
    n_units: np.ndarray
    peak_percentile_w: np.ndarray
    peak_mean_w: np.ndarray
    with_replacement_from: int | None


def units_within_constant(limit_w: float, unit_power_w: float) -> int:
    """floor(limit_w / unit_power_w): units of constant power within a limit.

    A relative tolerance of 1e-12 keeps an exact fit (e.g. 600 kW / 25 kW = 24) from being
    lost to rounding.
    """
    limit_w, unit_power_w = float(limit_w), float(unit_power_w)
    if not (np.isfinite(unit_power_w) and unit_power_w > 0):
        raise ValueError(f"unit_power_w must be positive, got {unit_power_w}")
    if not (np.isfinite(limit_w) and limit_w >= 0):
        raise ValueError(f"limit_w must be non-negative, got {limit_w}")
    return int(math.floor(limit_w / unit_power_w * (1 + 1e-12)))


def _draw_orders(pool: int, n_max: int, repetitions: int, rng: np.random.Generator) -> np.ndarray:
    """(repetitions, n_max) unit indices: a permutation of the pool, then draws with
    replacement."""
    orders = np.empty((repetitions, n_max), dtype=np.int64)
    for r in range(repetitions):
        perm = rng.permutation(pool)
        if n_max <= pool:
            orders[r] = perm[:n_max]
        else:
            orders[r, :pool] = perm
            orders[r, pool:] = rng.integers(0, pool, size=n_max - pool)
    return orders


def group_peak_percentiles(pool_w, n_max: int, *, percentile: float, repetitions: int,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile and mean of the group peak for N = 1..n_max (see the module docstring).

    Returns
    -------
    (peak_percentile_w, peak_mean_w), each [W] of shape (n_max,).
    """
    pool = np.asarray(pool_w, dtype=np.float64)
    orders = _draw_orders(pool.shape[0], n_max, repetitions, rng)
    peaks = np.empty((repetitions, n_max))
    running = np.empty(pool.shape[1])
    for r in range(repetitions):
        running[:] = 0.0
        for n, unit in enumerate(orders[r]):
            running += pool[unit]
            peaks[r, n] = running.max()
    return np.percentile(peaks, percentile, axis=0), peaks.mean(axis=0)


def admissible_units(pool_w, limit_w: float, *, rng: np.random.Generator,
                     percentile: float = 95.0, repetitions: int = 200,
                     n_max: int | None = None) -> Admission:
    """The largest number of units whose percentile group peak stays within ``limit_w``.

    Parameters
    ----------
    pool_w : [W] (pool_units, n_t) unit traces on a common time grid, all >= 0.
    limit_w : [W] the power limit of the group (e.g. a row's breaker).
    rng : random generator for the Monte-Carlo orders (pass ``np.random.default_rng(seed)``).
    percentile : [%] in (0, 100].
    repetitions : Monte-Carlo repetitions.
    n_max : largest group evaluated. By default one more than ``limit_w`` divided by the
        smallest unit mean: a group that large has a mean, hence a peak, above the limit, so
        the search is complete.
    """
    pool = np.asarray(pool_w, dtype=np.float64)
    if pool.ndim != 2 or pool.shape[0] == 0 or pool.shape[1] == 0:
        raise ValueError(f"pool_w must be (units, n_t) with at least one unit and sample, got "
                         f"shape {pool.shape}")
    if not np.all(np.isfinite(pool)) or np.any(pool < 0):
        raise ValueError("pool_w must be finite and non-negative")
    limit_w = float(limit_w)
    if not (np.isfinite(limit_w) and limit_w > 0):
        raise ValueError(f"limit_w must be positive, got {limit_w}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if n_max is None:
        smallest_mean = float(pool.mean(axis=1).min())
        if smallest_mean <= 0:
            raise ValueError("a unit of the pool has zero mean power; pass n_max")
        n_max = int(math.floor(limit_w / smallest_mean)) + 1
    n_max = int(n_max)
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    pct, mean = group_peak_percentiles(pool, n_max, percentile=percentile,
                                       repetitions=repetitions, rng=rng)
    within = np.flatnonzero(pct <= limit_w)
    # pct is non-decreasing in N (nested groups of non-negative units), so "within" is a prefix
    units = int(within[-1] + 1) if within.size else 0
    pool_units = pool.shape[0]
    return Admission(limit_w=limit_w, percentile=float(percentile), repetitions=int(repetitions),
                     pool_units=pool_units, units=units, n_units=np.arange(1, n_max + 1),
                     peak_percentile_w=pct, peak_mean_w=mean,
                     with_replacement_from=pool_units + 1 if n_max > pool_units else None)
