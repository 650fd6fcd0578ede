"""Fidelity metrics of a generated power trace against a measured one.

Implements the scores of MODEL.md section 4 ("How fidelity is scored") as pure NumPy
functions. Throughout, ``y`` is the measured series and ``yhat`` the generated one, both
1-D power series [W] on the same 0.25 s grid and starting at the same instant (t = dt).
Inputs may be any array-likes; everything is computed in float64.

Conventions
-----------
* Empty inputs, non-1-D inputs and non-finite values (NaN, +-inf) raise ``ValueError``.
* Paired metrics (:func:`energy_error_pct`, :func:`pooled_energy_error_pct`,
  :func:`nrmse`) need series of equal length; call :func:`align` first.
  Distributional metrics (:func:`ks_statistic`, :func:`percentile_error_pct`) and
  :func:`acf_r2` accept series of different lengths.
* A constant series has no defined autocorrelation beyond lag 0: :func:`autocorrelation`
  returns NaN there, and :func:`acf_r2` is then NaN (MODEL.md reports it as "-" for the
  constant-power baselines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "align",
    "energy_error_pct",
    "pooled_energy_error_pct",
    "ks_statistic",
    "autocorrelation",
    "acf_r2",
    "nrmse",
    "percentile_error_pct",
    "fidelity_scores",
    "summarise_seeds",
    "SCORE_KEYS",
]

#: Keys of the dict returned by :func:`fidelity_scores`, in order.
SCORE_KEYS: tuple[str, ...] = (
    "energy_err_pct",
    "ks",
    "acf_r2",
    "nrmse",
    "p95_err_pct",
    "p99_err_pct",
)


# --------------------------------------------------------------------------- helpers


def _as_series(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a non-empty, finite, 1-D float64 array, or raise ValueError."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name} has a non-finite value ({arr[bad]}) at index {bad}")
    return arr


def _same_length(y: np.ndarray, yhat: np.ndarray, what: str) -> None:
    if y.size != yhat.size:
        raise ValueError(
            f"{what} needs y and yhat of equal length, got {y.size} and {yhat.size}; "
            "call align(y, yhat) first"
        )


def _check_max_lag(max_lag: Any) -> int:
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)):
        raise ValueError(f"max_lag must be an integer, got {max_lag!r}")
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    return int(max_lag)


# --------------------------------------------------------------------------- metrics


def align(y: Any, yhat: Any) -> tuple[np.ndarray, np.ndarray]:
    """Truncate a measured and a generated series to their common length.

    The caller passes series that already start at the same instant (t = dt on the
    0.25 s grid); this only drops the tail of the longer one.

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (m,)
        Generated power [W].

    Returns
    -------
    y, yhat : ndarray of float64, shape (min(n, m),)
        Both series truncated to the common length [W].

    Raises
    ------
    ValueError
        If either series is empty, not 1-D, or holds non-finite values.
    """
    y = _as_series(y, "y")
    yhat = _as_series(yhat, "yhat")
    n = min(y.size, yhat.size)
    return y[:n], yhat[:n]


def energy_error_pct(y: Any, yhat: Any) -> float:
    """Relative error of the total energy [%].

    ``100 * |sum(yhat) - sum(y)| / sum(y)``. On a common grid the sums are proportional to
    energy, so the grid step cancels.

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (n,)
        Generated power [W], same length as ``y`` (see :func:`align`).

    Returns
    -------
    float
        Energy error [%], >= 0.

    Raises
    ------
    ValueError
        If a series is empty, the lengths differ, or ``sum(y) == 0``.

    Notes
    -----
    The denominator is ``|sum(y)|``; for (non-negative) power this is the definition of
    MODEL.md section 4 and keeps the result non-negative.
    """
    y = _as_series(y, "y")
    yhat = _as_series(yhat, "yhat")
    _same_length(y, yhat, "energy_error_pct")
    return _energy_error_from_sums(float(np.sum(y)), float(np.sum(yhat)))


def _energy_error_from_sums(sy: float, syhat: float) -> float:
    if sy == 0.0:
        raise ValueError("energy error is undefined: the measured series y sums to 0")
    return 100.0 * abs(syhat - sy) / abs(sy)


def pooled_energy_error_pct(ys: Sequence[Any], yhats: Sequence[Any]) -> float:
    """Energy error with the sums pooled over several runs [%].

    ``100 * |sum_r sum(yhat_r) - sum_r sum(y_r)| / sum_r sum(y_r)``: the per-configuration
    figure of MODEL.md section 4 (one seed). Over- and under-estimates of different runs can
    cancel, so this is not the mean of the per-run errors.

    Parameters
    ----------
    ys : sequence of array_like
        Measured power series of the runs [W].
    yhats : sequence of array_like
        Generated power series of the same runs, in the same order [W]; each the same
        length as its measured counterpart (see :func:`align`).

    Returns
    -------
    float
        Pooled energy error [%], >= 0.

    Raises
    ------
    ValueError
        If there are no runs, the two sequences differ in length, a series is empty, a pair
        differs in length, or the pooled measured sum is 0.
    """
    ys = list(ys)
    yhats = list(yhats)
    if not ys:
        raise ValueError("pooled_energy_error_pct needs at least one run, got none")
    if len(ys) != len(yhats):
        raise ValueError(
            f"ys and yhats must hold the same number of runs, got {len(ys)} and {len(yhats)}"
        )
    sy = 0.0
    syhat = 0.0
    for i, (y, yhat) in enumerate(zip(ys, yhats)):
        y = _as_series(y, f"ys[{i}]")
        yhat = _as_series(yhat, f"yhats[{i}]")
        _same_length(y, yhat, f"pooled_energy_error_pct (run {i})")
        sy += float(np.sum(y))
        syhat += float(np.sum(yhat))
    return _energy_error_from_sums(sy, syhat)


def ks_statistic(y: Any, yhat: Any) -> float:
    """Two-sample Kolmogorov-Smirnov statistic of the power values [-].

    ``max_v |F_y(v) - F_yhat(v)|`` with ``F`` the right-continuous empirical CDFs, evaluated
    exactly at every distinct value of the pooled sample (so ties, within or across the two
    samples, are handled correctly). The time order is ignored.

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (m,)
        Generated power [W]; the length may differ from ``y``.

    Returns
    -------
    float
        KS statistic in [0, 1] [-]; 0 for identical samples, 1 for disjoint ranges.

    Raises
    ------
    ValueError
        If a series is empty.
    """
    y = np.sort(_as_series(y, "y"))
    yhat = np.sort(_as_series(yhat, "yhat"))
    values = np.unique(np.concatenate([y, yhat]))
    f_y = np.searchsorted(y, values, side="right") / y.size
    f_yhat = np.searchsorted(yhat, values, side="right") / yhat.size
    return float(np.max(np.abs(f_y - f_yhat)))


def autocorrelation(x: Any, max_lag: int) -> np.ndarray:
    """Sample autocorrelation at lags 0..max_lag [-].

    The usual biased estimator on the mean-removed series ``d = x - mean(x)``::

        acf(k) = sum_{t=0}^{n-1-k} d_t d_{t+k} / sum_{t=0}^{n-1} d_t^2

    Parameters
    ----------
    x : array_like, shape (n,)
        Power series [W] (any units; the result is dimensionless).
    max_lag : int
        Largest lag [samples], 0 <= max_lag <= n - 1 (one sample is 0.25 s).

    Returns
    -------
    ndarray of float64, shape (max_lag + 1,)
        ``acf[k]`` for k = 0..max_lag [-]; ``acf[0] == 1``. For a constant series the
        lag-0 sum is 0: then ``acf[0] == 1`` and ``acf[k]`` is NaN for k >= 1.

    Raises
    ------
    ValueError
        If ``x`` is empty, or ``max_lag`` is not an integer in [0, n - 1].
    """
    x = _as_series(x, "x")
    max_lag = _check_max_lag(max_lag)
    n = x.size
    if max_lag > n - 1:
        raise ValueError(f"max_lag={max_lag} exceeds the longest lag n - 1 = {n - 1}")
    acf = np.empty(max_lag + 1, dtype=np.float64)
    acf[0] = 1.0
    if np.max(x) == np.min(x):  # constant: the lag-0 sum is 0 (test before round-off)
        acf[1:] = np.nan
        return acf
    # The acf is scale-invariant; rescaling keeps the sums clear of overflow/underflow.
    xs = x / np.max(np.abs(x))
    d = xs - np.mean(xs)
    d_max = np.max(np.abs(d))
    if d_max == 0.0:  # distinct values merged by the rescaling: constant to working precision
        acf[1:] = np.nan
        return acf
    d = d / d_max
    denom = float(np.dot(d, d))
    for k in range(1, max_lag + 1):
        acf[k] = np.dot(d[: n - k], d[k:]) / denom
    return acf


def acf_r2(y: Any, yhat: Any, max_lag: int = 50) -> float:
    """Coefficient of determination of the generated ACF against the measured one [-].

    ``1 - sum_k (acf_y(k) - acf_yhat(k))^2 / sum_k (acf_y(k) - mean_k acf_y)^2`` over lags
    k = 1..K (default K = 50, i.e. 12.5 s on the 0.25 s grid), acf from
    :func:`autocorrelation`. Not a squared correlation: it is 1 for a perfect match and can
    be negative (arbitrarily so) for a poor one.

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (m,)
        Generated power [W]; the length may differ from ``y``.
    max_lag : int, optional
        Largest lag K [samples], >= 2. Default 50.

    Returns
    -------
    float
        ACF R^2 [-]. Exactly 1.0 when the two ACFs agree exactly over the lags used (e.g.
        ``yhat`` equal to ``y``); 1 up to round-off for ``y`` reversed, whose biased ACF is
        the same. NaN when either series is constant (its ACF is undefined), or when
        ``acf_y`` is the same at every lag used while ``acf_yhat`` differs (zero
        denominator).

    Raises
    ------
    ValueError
        If a series is empty, ``max_lag < 2``, or the shorter series has fewer than 4
        samples (fewer than two usable lags).

    Notes
    -----
    If the shorter series has fewer than ``max_lag + 2`` samples, only the lags available
    are used: k = 1..min(n, m) - 2, so that every lag is estimated from at least two
    products.
    """
    y = _as_series(y, "y")
    yhat = _as_series(yhat, "yhat")
    max_lag = _check_max_lag(max_lag)
    if max_lag < 2:
        raise ValueError(f"acf_r2 needs max_lag >= 2, got {max_lag}")
    n = min(y.size, yhat.size)
    k_max = min(max_lag, n - 2)
    if k_max < 2:
        raise ValueError(
            f"acf_r2 needs series of at least 4 samples (two usable lags), got {n}"
        )
    a_y = autocorrelation(y, k_max)[1:]
    a_yhat = autocorrelation(yhat, k_max)[1:]
    if np.isnan(a_y).any() or np.isnan(a_yhat).any():
        return float("nan")
    ss_res = float(np.sum((a_y - a_yhat) ** 2))
    if ss_res == 0.0:
        return 1.0
    ss_tot = float(np.sum((a_y - np.mean(a_y)) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - ss_res / ss_tot


def nrmse(y: Any, yhat: Any) -> float:
    """Root-mean-square error normalised by the measured range [-].

    ``sqrt(mean((yhat - y)^2)) / (max(y) - min(y))``. The generator is stochastic by design,
    so about 0.3 is normal (MODEL.md section 4).

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (n,)
        Generated power [W], same length as ``y`` (see :func:`align`).

    Returns
    -------
    float
        NRMSE [-], >= 0. NaN if ``y`` is constant (zero range).

    Raises
    ------
    ValueError
        If a series is empty or the lengths differ.
    """
    y = _as_series(y, "y")
    yhat = _as_series(yhat, "yhat")
    _same_length(y, yhat, "nrmse")
    span = float(np.max(y) - np.min(y))
    if span == 0.0:
        return float("nan")
    rmse = float(np.sqrt(np.mean((yhat - y) ** 2)))
    return rmse / span


def percentile_error_pct(y: Any, yhat: Any, q: float) -> float:
    """Relative error of the q-th percentile of power [%].

    ``100 * |P_q(yhat) - P_q(y)| / P_q(y)`` with NumPy's default (linear interpolation)
    percentile.

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (m,)
        Generated power [W]; the length may differ from ``y``.
    q : float
        Percentile [%], in [0, 100] (e.g. 95, 99).

    Returns
    -------
    float
        Percentile error [%], >= 0.

    Raises
    ------
    ValueError
        If a series is empty, ``q`` is outside [0, 100], or ``P_q(y) == 0``.

    Notes
    -----
    The denominator is ``|P_q(y)|``, equal to ``P_q(y)`` for non-negative power.
    """
    y = _as_series(y, "y")
    yhat = _as_series(yhat, "yhat")
    q = float(q)
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    p_y = float(np.percentile(y, q))
    p_yhat = float(np.percentile(yhat, q))
    if p_y == 0.0:
        raise ValueError(f"percentile error is undefined: P{q:g} of the measured series is 0")
    return 100.0 * abs(p_yhat - p_y) / abs(p_y)


def fidelity_scores(y: Any, yhat: Any, max_lag: int = 50) -> dict[str, float]:
    """All fidelity scores of one generated run against its measured run.

    The two series are first passed through :func:`align` (truncated to the common length).

    Parameters
    ----------
    y : array_like, shape (n,)
        Measured power [W].
    yhat : array_like, shape (m,)
        Generated power [W], starting at the same instant as ``y``.
    max_lag : int, optional
        Largest ACF lag [samples] for :func:`acf_r2`. Default 50 (12.5 s).

    Returns
    -------
    dict of str to float
        ``energy_err_pct`` [%], ``ks`` [-], ``acf_r2`` [-], ``nrmse`` [-],
        ``p95_err_pct`` [%], ``p99_err_pct`` [%] (keys in the order of ``SCORE_KEYS``).

    Raises
    ------
    ValueError
        As raised by the individual metrics (empty series, measured sum or percentile 0,
        aligned length under 4 samples).
    """
    y, yhat = align(y, yhat)
    return {
        "energy_err_pct": energy_error_pct(y, yhat),
        "ks": ks_statistic(y, yhat),
        "acf_r2": acf_r2(y, yhat, max_lag=max_lag),
        "nrmse": nrmse(y, yhat),
        "p95_err_pct": percentile_error_pct(y, yhat, 95.0),
        "p99_err_pct": percentile_error_pct(y, yhat, 99.0),
    }


def summarise_seeds(scores: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median over seeds of each score.

    Parameters
    ----------
    scores : sequence of mapping of str to float
        One dict of scores per seed (e.g. from :func:`fidelity_scores`), all with the same
        keys; units as in those dicts ([%] or [-]).

    Returns
    -------
    dict of str to float
        For each key (in the order of the first dict), the median of its values over the
        seeds, same units. A NaN value in any seed makes that key's median NaN.

    Raises
    ------
    ValueError
        If ``scores`` is empty or the dicts do not all have the same keys.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("summarise_seeds needs at least one seed's scores, got none")
    keys = list(scores[0].keys())
    for i, s in enumerate(scores[1:], start=1):
        if set(s.keys()) != set(keys):
            raise ValueError(
                f"seed {i} has keys {sorted(s.keys())}, seed 0 has {sorted(keys)}"
            )
    return {k: float(np.median(np.array([s[k] for s in scores], dtype=np.float64)))
            for k in keys}
