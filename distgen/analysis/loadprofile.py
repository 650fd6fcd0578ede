"""Utility-facing characterisation of power series: peaks, load factor, ramps, durations.

Pure NumPy functions on power series [W] sampled on a regular grid of ``interval_s`` [s];
time is the last axis, so a ``(n_entities, n_t)`` array characterises every entity at once.
Results are frozen dataclasses with units in brackets in their docstrings.

Definitions (used by ``distgen analyze`` and the report; see docs/PLANNING.md)
-----------------------------------------------------------------------------
* **Block means.** A coarser view of a series is the mean of consecutive, non-overlapping
  blocks of ``window_s``, counted from the series start; a trailing partial block is dropped.
  Energy is therefore preserved over the complete blocks.
* **Demand peak (15 min)** is the highest 15-minute block mean: the billing demand of a
  utility meter whose intervals start with the run.
* **Load factor** = average power / 15-minute demand peak (the utility convention: energy
  over the period divided by peak demand times the period's length). The ratio of the
  sample peak to the average is reported separately as ``peak_to_average``.
* **Ramps** at a window w are differences between consecutive w-block means. The largest up
  ramp is the largest increase; the largest down ramp is the magnitude of the largest decrease
  (0 when the series never decreases at that window).
* **Load-duration percentiles.** ``p95_w`` is the power not exceeded 95 % of the time (it is
  exceeded 5 % of the time), from the samples at the series' own resolution (linear
  interpolation between order statistics, NumPy's default).
* **Coincidence and diversity.** For a group of entities (the rows of a site, say) the
  coincidence factor is the peak of their sum divided by the sum of their individual peaks
  (<= 1); the diversity factor is its reciprocal (>= 1; IEEE Std 141's definition).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from distgen.errors import DistgenError

__all__ = [
    "RAMP_WINDOWS_S",
    "DEMAND_WINDOW_S",
    "LoadCharacteristics",
    "Coincidence",
    "AggregationSmoothing",
    "DailyPattern",
    "AnnualProfile",
    "block_factor",
    "block_means",
    "ramps",
    "load_characteristics",
    "load_duration_curve",
    "coincidence",
    "coefficient_of_variation",
    "aggregation_smoothing",
    "daily_pattern",
    "annual_profile",
    "per_unit",
]

#: Ramp windows [s] reported by :func:`load_characteristics`, with the key suffix of each.
RAMP_WINDOWS_S: dict[str, float] = {"1min": 60.0, "15min": 900.0, "1h": 3600.0}
#: [s] the demand interval of a utility meter.
DEMAND_WINDOW_S = 900.0
_HOURS_PER_YEAR = 8760
_S_PER_H = 3600.0


def _series(power_w, name: str = "power_w") -> np.ndarray:
    arr = np.asarray(power_w, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one sample on its last (time) axis")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values")
    return arr


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def block_factor(interval_s: float, window_s: float) -> int | None:
    """Samples per ``window_s`` block, or None when ``window_s`` is not a whole multiple of
    ``interval_s`` (e.g. a 1-minute window on a 15-minute series)."""
    ratio = _positive(window_s, "window_s") / _positive(interval_s, "interval_s")
    factor = int(round(ratio))
    if factor < 1 or abs(ratio - factor) > 1e-9 * max(1.0, ratio):
        return None
    return factor


def block_means(power_w, interval_s: float, window_s: float) -> np.ndarray | None:
    """Means of consecutive ``window_s`` blocks along the last axis [W].

    Returns None when the window is not a whole multiple of ``interval_s`` or the series is
    shorter than one block; a trailing partial block is dropped.
    """
    p = _series(power_w)
    factor = block_factor(interval_s, window_s)
    if factor is None:
        return None
    n = p.shape[-1] // factor
    if n == 0:
        return None
    return p[..., :n * factor].reshape(p.shape[:-1] + (n, factor)).mean(axis=-1)


def ramps(power_w, interval_s: float, window_s: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Largest up and down ramp [W per window] between consecutive ``window_s`` block means.

    Returns
    -------
    (up_w, down_w), each of shape ``power_w.shape[:-1]``, both >= 0; None when fewer than two
    complete blocks exist at that window.
    """
    means = block_means(power_w, interval_s, window_s)
    if means is None or means.shape[-1] < 2:
        return None
    d = np.diff(means, axis=-1)
    return np.maximum(d.max(axis=-1), 0.0), np.maximum((-d).max(axis=-1), 0.0)


@dataclass(frozen=True)
class LoadCharacteristics:
    """Utility-facing figures of one power series (or of each row of a 2-D array).

    Scalars for a 1-D input; arrays of shape ``power_w.shape[:-1]`` otherwise. A figure that
    the series cannot support (e.g. a 1-minute ramp of a 15-minute series, or a 15-minute
    demand peak of a 10-minute run) is NaN.

    Attributes
    ----------
    interval_s : [s] resolution of the series.
    duration_s : [s] length of the series.
    energy_j : [J] energy, sum(power_w) * interval_s.
    mean_w, peak_w, min_w : [W] average, highest and lowest sample.
    peak_to_average : [-] peak_w / mean_w.
    demand_peak_15min_w : [W] highest 15-minute block mean.
    load_factor : [-] mean_w / demand_peak_15min_w.
    p50_w, p95_w, p99_w : [W] load-duration percentiles (power not exceeded that share of the
        time).
    ramp_up_max_w_per_1min, ramp_down_max_w_per_1min : [W per 1 min] largest increase /
        decrease between consecutive 1-minute means (both >= 0).
    ramp_up_max_w_per_15min, ramp_down_max_w_per_15min : [W per 15 min] same for 15 minutes.
    ramp_up_max_w_per_1h, ramp_down_max_w_per_1h : [W per 1 h] same for hours.
    """

    interval_s: float
    duration_s: float
    energy_j: np.ndarray | float
    mean_w: np.ndarray | float
    peak_w: np.ndarray | float
    min_w: np.ndarray | float
    peak_to_average: np.ndarray | float
    demand_peak_15min_w: np.ndarray | float
    load_factor: np.ndarray | float
    p50_w: np.ndarray | float
    p95_w: np.ndarray | float
    p99_w: np.ndarray | float
    ramp_up_max_w_per_1min: np.ndarray | float
    ramp_down_max_w_per_1min: np.ndarray | float
    ramp_up_max_w_per_15min: np.ndarray | float
    ramp_down_max_w_per_15min: np.ndarray | float
    ramp_up_max_w_per_1h: np.ndarray | float
    ramp_down_max_w_per_1h: np.ndarray | float


def _out(x: np.ndarray) -> np.ndarray | float:
    x = np.asarray(x, dtype=np.float64)
    return float(x) if x.ndim == 0 else x


def load_characteristics(power_w, interval_s: float) -> LoadCharacteristics:
    """Peak, average, load factor, 15-minute demand, ramps and load-duration percentiles.

    Parameters
    ----------
    power_w : [W] (..., n_t) power series, time on the last axis.
    interval_s : [s] sample spacing (the series' resolution).

    Returns
    -------
    LoadCharacteristics (see the module docstring for the definitions).
    """
    p = _series(power_w)
    interval_s = _positive(interval_s, "interval_s")
    shape = p.shape[:-1]
    nan = np.full(shape, np.nan)
    mean = p.mean(axis=-1)
    peak = p.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        par = np.where(mean > 0, peak / np.where(mean > 0, mean, 1.0), np.nan)
    demand = block_means(p, interval_s, DEMAND_WINDOW_S)
    demand_peak = demand.max(axis=-1) if demand is not None else nan
    with np.errstate(divide="ignore", invalid="ignore"):
        lf = np.where(demand_peak > 0, mean / np.where(demand_peak > 0, demand_peak, 1.0), np.nan)
    pct = np.percentile(p, [50.0, 95.0, 99.0], axis=-1)
    ramp = {}
    for label, window in RAMP_WINDOWS_S.items():
        r = ramps(p, interval_s, window)
        ramp[f"ramp_up_max_w_per_{label}"] = _out(r[0] if r else nan)
        ramp[f"ramp_down_max_w_per_{label}"] = _out(r[1] if r else nan)
    return LoadCharacteristics(
        interval_s=interval_s, duration_s=p.shape[-1] * interval_s,
        energy_j=_out(p.sum(axis=-1) * interval_s), mean_w=_out(mean), peak_w=_out(peak),
        min_w=_out(p.min(axis=-1)), peak_to_average=_out(par),
        demand_peak_15min_w=_out(demand_peak), load_factor=_out(lf),
        p50_w=_out(pct[0]), p95_w=_out(pct[1]), p99_w=_out(pct[2]), **ramp)


def load_duration_curve(power_w, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The load-duration curve of a 1-D series: power sorted from highest to lowest.

    Returns
    -------
    exceedance : [-] (n,) share of the time the power is at or above the value, in (0, 1].
    power_w : [W] (n,) the sorted power; with ``n_points`` the curve is subsampled to that
        many points (always keeping the peak and the minimum).
    """
    p = np.sort(_series(power_w).reshape(-1))[::-1]
    n = p.size
    exceed = np.arange(1, n + 1) / n
    if n_points is not None and n > n_points >= 2:
        idx = np.unique(np.round(np.linspace(0, n - 1, n_points)).astype(np.int64))
        return exceed[idx], p[idx]
    return exceed, p


@dataclass(frozen=True)
class Coincidence:
    """How a group's peak compares with its members' peaks.

    Attributes
    ----------
    group_peak_w : [W] peak of the sum of the members.
    sum_of_peaks_w : [W] sum of each member's own peak.
    coincidence_factor : [-] group_peak_w / sum_of_peaks_w (<= 1; 1 when all peak together).
    diversity_factor : [-] sum_of_peaks_w / group_peak_w (>= 1), the reciprocal.
    """

    group_peak_w: float
    sum_of_peaks_w: float
    coincidence_factor: float
    diversity_factor: float


def coincidence(power_w) -> Coincidence:
    """Coincidence and diversity factors of a group of members' series.

    Parameters
    ----------
    power_w : [W] (n_members, n_t) the members' power on a common time grid.
    """
    p = _series(power_w)
    if p.ndim != 2:
        raise ValueError(f"power_w must be (n_members, n_t), got shape {p.shape}")
    group = float(p.sum(axis=0).max())
    total = float(p.max(axis=1).sum())
    return Coincidence(group, total, group / total if total > 0 else float("nan"),
                       total / group if group > 0 else float("nan"))


def coefficient_of_variation(power_w) -> np.ndarray | float:
    """[-] standard deviation over time / mean over time (population std), per series."""
    p = _series(power_w)
    mean = p.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _out(np.where(mean > 0, p.std(axis=-1) / np.where(mean > 0, mean, 1.0), np.nan))


@dataclass(frozen=True)
class AggregationSmoothing:
    """Coefficient of variation of a sum of N members, for several N.

    Attributes
    ----------
    n_members : (k,) group sizes N.
    cv_mean : [-] (k,) mean CV over the sampled groups of N members.
    cv_min, cv_max : [-] (k,) smallest and largest CV among them.
    groups : (k,) number of groups sampled for each N.
    """

    n_members: np.ndarray
    cv_mean: np.ndarray
    cv_min: np.ndarray
    cv_max: np.ndarray
    groups: np.ndarray


def aggregation_smoothing(power_w, group_sizes, *, rng: np.random.Generator,
                          groups: int = 32) -> AggregationSmoothing:
    """CV of the sum of N members drawn without replacement, for each N in ``group_sizes``.

    Parameters
    ----------
    power_w : [W] (n_members, n_t) member series on a common grid.
    group_sizes : sizes N to evaluate, each in [1, n_members].
    rng : the random generator that picks the members of each group.
    groups : groups drawn per N (fewer when N = n_members: there is one such group).
    """
    p = _series(power_w)
    if p.ndim != 2:
        raise ValueError(f"power_w must be (n_members, n_t), got shape {p.shape}")
    n_all = p.shape[0]
    sizes = np.asarray(sorted({int(n) for n in group_sizes}), dtype=np.int64)
    if sizes.size == 0 or sizes[0] < 1 or sizes[-1] > n_all:
        raise ValueError(f"group sizes must lie in [1, {n_all}], got {list(sizes)}")
    cv_mean, cv_min, cv_max, count = [], [], [], []
    for n in sizes:
        reps = 1 if n == n_all else groups
        cvs = np.array([coefficient_of_variation(p[rng.choice(n_all, size=n, replace=False)]
                                                 .sum(axis=0)) for _ in range(reps)])
        cv_mean.append(cvs.mean())
        cv_min.append(cvs.min())
        cv_max.append(cvs.max())
        count.append(reps)
    return AggregationSmoothing(sizes, np.array(cv_mean), np.array(cv_min), np.array(cv_max),
                                np.array(count))


@dataclass(frozen=True)
class DailyPattern:
    """The average power of each clock hour of the day.

    Attributes
    ----------
    power_w : [W] (24,) mean power in each local clock hour 0..23.
    samples : (24,) samples averaged for each hour.
    days : [d] length of the series the pattern was taken from.
    daily_energy_j : [J] energy of the typical day, 3600 * sum(power_w).
    """

    power_w: np.ndarray
    samples: np.ndarray
    days: float
    daily_energy_j: float


def daily_pattern(power_w, interval_s: float, start_s_of_day: float) -> DailyPattern:
    """Hourly daily pattern of a series that covers at least 24 hours.

    Each sample is assigned to the local clock hour in which it starts; the pattern is the
    mean per clock hour, over every day the series covers. For a series of exactly 24 hours
    every clock hour holds the same number of samples, so the typical day's energy equals the
    series' energy.

    Parameters
    ----------
    power_w : [W] (n_t,) the series.
    interval_s : [s] its resolution (at most one hour).
    start_s_of_day : [s] local time of day of the first sample, seconds after midnight.

    Raises
    ------
    DistgenError : the series is shorter than 24 hours.
    """
    p = _series(power_w)
    if p.ndim != 1:
        raise ValueError(f"power_w must be 1-D, got shape {p.shape}")
    interval_s = _positive(interval_s, "interval_s")
    duration_s = p.size * interval_s
    if duration_s < 24 * _S_PER_H - 1e-6:
        raise DistgenError(f"an annual profile needs a run of at least 24 h to take the daily "
                           f"pattern from; this series covers {duration_s / _S_PER_H:g} h")
    if interval_s > _S_PER_H:
        raise ValueError(f"interval_s must be at most 3600 s, got {interval_s}")
    t = float(start_s_of_day) + np.arange(p.size) * interval_s
    hour = np.floor(t / _S_PER_H + 1e-9).astype(np.int64) % 24
    samples = np.bincount(hour, minlength=24)
    sums = np.bincount(hour, weights=p, minlength=24)
    pattern = sums / samples
    return DailyPattern(pattern, samples, duration_s / 86400.0, float(pattern.sum() * _S_PER_H))


@dataclass(frozen=True)
class AnnualProfile:
    """An 8760-hour profile built from a daily pattern.

    Attributes
    ----------
    hour_start : (8760,) ``datetime64[h]`` local start of each hour.
    weekend : (8760,) True on Saturdays and Sundays.
    scale : [-] (8760,) weekday/weekend factor times growth factor applied to the pattern.
    power_w : [W] (8760,) mean power in each hour.
    energy_j : [J] sum(power_w) * 3600.
    """

    hour_start: np.ndarray
    weekend: np.ndarray
    scale: np.ndarray
    power_w: np.ndarray
    energy_j: float


def annual_profile(pattern_w, *, start_date: dt.date, weekday_scale: float = 1.0,
                   weekend_scale: float = 1.0, growth_pct_per_year: float = 0.0,
                   growth: str = "compound") -> AnnualProfile:
    """Repeat a daily pattern over 365 days (8760 hours) with day-type scaling and growth.

    Hour h (0..8759) from local midnight of ``start_date`` gets
    ``pattern_w[h % 24] * day_scale(h) * growth(h)`` where ``day_scale`` is ``weekend_scale``
    on Saturdays/Sundays and ``weekday_scale`` otherwise, and the growth factor is
    ``(1 + g) ** (h / 8760)`` (compound) or ``1 + g * h / 8760`` (linear) with
    ``g = growth_pct_per_year / 100``. The scales are relative to the day the pattern came
    from. Always 365 days: a leap year's 31 December is left out.

    Parameters
    ----------
    pattern_w : [W] (24,) mean power per local clock hour.
    start_date : the first day of the profile.
    weekday_scale, weekend_scale : [-] non-negative factors per day type.
    growth_pct_per_year : [% per year] load growth over the year (may be negative, > -100).
    growth : ``"compound"`` or ``"linear"``.
    """
    pattern = _series(pattern_w, "pattern_w")
    if pattern.shape != (24,):
        raise ValueError(f"pattern_w must have 24 hourly values, got shape {pattern.shape}")
    for name, v in (("weekday_scale", weekday_scale), ("weekend_scale", weekend_scale)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative number, got {v}")
    g = float(growth_pct_per_year) / 100.0
    if not np.isfinite(g) or g <= -1.0:
        raise ValueError(f"growth_pct_per_year must be > -100, got {growth_pct_per_year}")
    h = np.arange(_HOURS_PER_YEAR)
    if growth == "compound":
        grow = (1.0 + g) ** (h / _HOURS_PER_YEAR)
    elif growth == "linear":
        grow = 1.0 + g * h / _HOURS_PER_YEAR
    else:
        raise ValueError(f"growth must be 'compound' or 'linear', got {growth!r}")
    start = np.datetime64(dt.date(start_date.year, start_date.month, start_date.day), "h")
    hour_start = start + h.astype("timedelta64[h]")
    day = hour_start.astype("datetime64[D]")
    weekend = ((day.astype(np.int64) + 3) % 7) >= 5  # 1970-01-01 was a Thursday (weekday 3)
    scale = np.where(weekend, float(weekend_scale), float(weekday_scale)) * grow
    power = pattern[h % 24] * scale
    return AnnualProfile(hour_start, weekend, scale, power, float(power.sum() * _S_PER_H))


def per_unit(power_w, base_w: float | None = None) -> tuple[np.ndarray, float]:
    """Per-unit multipliers P / P_base, e.g. for an OpenDSS loadshape.

    Parameters
    ----------
    power_w : [W] (n,) the series.
    base_w : [W] the base; the series' peak by default (so the largest multiplier is 1).

    Returns
    -------
    (multipliers [-], base_w [W]).
    """
    p = _series(power_w)
    base = float(p.max()) if base_w is None else float(base_w)
    _positive(base, "base_w")
    return p / base, base
