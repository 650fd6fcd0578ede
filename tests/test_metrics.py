"""Tests of distgen.analysis.metrics (MODEL.md section 4, "How fidelity is scored").

Every expected value of a hand-computed case carries its arithmetic in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from distgen.analysis.metrics import (
    SCORE_KEYS,
    acf_r2,
    align,
    autocorrelation,
    energy_error_pct,
    fidelity_scores,
    ks_statistic,
    nrmse,
    percentile_error_pct,
    pooled_energy_error_pct,
    summarise_seeds,
)

# --------------------------------------------------------------------------- align


def test_align_truncates_to_common_length():
    y, yhat = align([1, 2, 3, 4, 5], (10, 20, 30))
    # common length min(5, 3) = 3: the tail [4, 5] of y is dropped
    np.testing.assert_array_equal(y, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(yhat, [10.0, 20.0, 30.0])
    assert y.dtype == np.float64 and yhat.dtype == np.float64


def test_align_equal_lengths_unchanged():
    y, yhat = align(np.arange(4, dtype=np.int32), np.ones(4, dtype=np.float32))
    np.testing.assert_array_equal(y, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(yhat, [1.0, 1.0, 1.0, 1.0])
    assert y.dtype == np.float64 and yhat.dtype == np.float64


@pytest.mark.parametrize(
    "y, yhat, match",
    [
        ([], [1.0], "y is empty"),
        ([1.0], [], "yhat is empty"),
        ([[1.0, 2.0]], [1.0], "1-D"),
        ([1.0, float("nan")], [1.0, 2.0], "non-finite"),
        (["a", "b"], [1.0, 2.0], "numbers"),
    ],
)
def test_align_rejects_bad_input(y, yhat, match):
    with pytest.raises(ValueError, match=match):
        align(y, yhat)


# --------------------------------------------------------------------------- energy


def test_energy_error_hand_case():
    # sum(y) = 1+2+3 = 6, sum(yhat) = 1+2+4 = 7 -> 100 * |7 - 6| / 6 = 16.666...
    assert energy_error_pct([1, 2, 3], [1, 2, 4]) == pytest.approx(100.0 * 1.0 / 6.0)


def test_energy_error_under_estimate():
    # sum(y) = 10+10 = 20, sum(yhat) = 8+9 = 17 -> 100 * |17 - 20| / 20 = 15
    assert energy_error_pct([10, 10], [8, 9]) == pytest.approx(15.0)


def test_energy_error_identical_is_zero():
    assert energy_error_pct([3.0, 4.0, 5.0], [3.0, 4.0, 5.0]) == 0.0


def test_energy_error_zero_measured_sum_raises():
    with pytest.raises(ValueError, match="sums to 0"):
        energy_error_pct([0.0, 0.0], [1.0, 1.0])


def test_energy_error_needs_aligned_series():
    with pytest.raises(ValueError, match="align"):
        energy_error_pct([1.0, 2.0, 3.0], [1.0, 2.0])


def test_energy_error_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        energy_error_pct([], [])


def test_pooled_vs_per_run_energy_error():
    ys = [[1.0, 1.0], [10.0, 10.0]]
    yhats = [[2.0, 2.0], [9.0, 9.0]]
    # run 0: sum y = 2,  sum yhat = 4  -> 100 * |4 - 2| / 2   = 100
    assert energy_error_pct(ys[0], yhats[0]) == pytest.approx(100.0)
    # run 1: sum y = 20, sum yhat = 18 -> 100 * |18 - 20| / 20 = 10
    assert energy_error_pct(ys[1], yhats[1]) == pytest.approx(10.0)
    # pooled: sum y = 2 + 20 = 22, sum yhat = 4 + 18 = 22 -> 100 * 0 / 22 = 0 (errors cancel)
    assert pooled_energy_error_pct(ys, yhats) == pytest.approx(0.0)


def test_pooled_energy_error_hand_case():
    ys = [[1, 2, 3], [4]]
    yhats = [[1, 2, 4], [6]]
    # sum y = 6 + 4 = 10, sum yhat = 7 + 6 = 13 -> 100 * |13 - 10| / 10 = 30
    assert pooled_energy_error_pct(ys, yhats) == pytest.approx(30.0)


def test_pooled_single_run_equals_per_run():
    y, yhat = [1, 2, 3], [1, 2, 4]
    # one run: sum y = 6, sum yhat = 7 -> 100 * 1 / 6, as energy_error_pct
    assert pooled_energy_error_pct([y], [yhat]) == pytest.approx(100.0 / 6.0, rel=1e-12)
    assert energy_error_pct(y, yhat) == pytest.approx(100.0 / 6.0, rel=1e-12)


def test_pooled_energy_error_bad_input():
    with pytest.raises(ValueError, match="at least one run"):
        pooled_energy_error_pct([], [])
    with pytest.raises(ValueError, match="same number of runs"):
        pooled_energy_error_pct([[1.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="run 1"):
        pooled_energy_error_pct([[1.0], [1.0, 2.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="sums to 0"):
        pooled_energy_error_pct([[1.0], [-1.0]], [[1.0], [1.0]])


# --------------------------------------------------------------------------- KS


def test_ks_identical_samples_is_zero():
    y = [3.0, 1.0, 2.0, 2.0, 5.0]
    assert ks_statistic(y, y) == 0.0
    # same multiset, different order and length ratio 1:2 -> same empirical CDF
    assert ks_statistic(y, y[::-1] + y) == 0.0


def test_ks_disjoint_samples_is_one():
    # every y value below every yhat value: at v = max(y), F_y = 1 and F_yhat = 0
    assert ks_statistic([1.0, 2.0, 3.0], [4.0, 5.0]) == 1.0
    assert ks_statistic([4.0, 5.0], [1.0, 2.0, 3.0]) == 1.0


def test_ks_with_ties_hand_case():
    y = [1, 2, 2, 3]
    yhat = [2, 2, 2, 4]
    # distinct pooled values: 1, 2, 3, 4
    # F_y    : 1 -> 1/4, 2 -> 3/4, 3 -> 4/4, 4 -> 4/4
    # F_yhat : 1 -> 0,   2 -> 3/4, 3 -> 3/4, 4 -> 4/4
    # |diff| : 1/4, 0, 1/4, 0  -> KS = 0.25
    assert ks_statistic(y, yhat) == pytest.approx(0.25)


def test_ks_ties_across_samples_not_overcounted():
    y = [0, 1, 1, 1]
    yhat = [1, 1, 1, 2]
    # F_y    : 0 -> 1/4, 1 -> 4/4, 2 -> 4/4
    # F_yhat : 0 -> 0,   1 -> 3/4, 2 -> 4/4
    # KS = max(1/4, 1/4, 0) = 0.25. (Stepping through the pooled sorted sample one element
    # at a time, y's tied 1s first, would wrongly reach |1 - 0| = 1.)
    assert ks_statistic(y, yhat) == pytest.approx(0.25)


def test_ks_unequal_sizes_hand_case():
    y = [1, 2, 3, 4]
    yhat = [2, 4]
    # F_y    : 1 -> 1/4, 2 -> 2/4, 3 -> 3/4, 4 -> 1
    # F_yhat : 1 -> 0,   2 -> 1/2, 3 -> 1/2, 4 -> 1
    # |diff| : 1/4, 0, 1/4, 0 -> 0.25
    assert ks_statistic(y, yhat) == pytest.approx(0.25)


def test_ks_matches_scipy_on_tied_data():
    from scipy import stats  # a dependency of distgen: its absence is an error, not a skip
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = rng.integers(0, 6, size=rng.integers(1, 40))
        yhat = rng.integers(0, 6, size=rng.integers(1, 40))
        assert ks_statistic(y, yhat) == pytest.approx(stats.ks_2samp(y, yhat).statistic)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), st.lists(finite, min_size=1, max_size=40))
def test_ks_in_unit_interval_and_symmetric(y, yhat):
    d = ks_statistic(y, yhat)
    assert 0.0 <= d <= 1.0
    assert d == ks_statistic(yhat, y)


# --------------------------------------------------------------------------- autocorrelation


def _acf_double_loop(x, max_lag):
    """Independent reference: plain Python loops over the textbook formula."""
    x = [float(v) for v in x]
    n = len(x)
    m = sum(x) / n
    c0 = 0.0
    for t in range(n):
        c0 += (x[t] - m) * (x[t] - m)
    out = []
    for k in range(max_lag + 1):
        ck = 0.0
        for t in range(n - k):
            ck += (x[t] - m) * (x[t + k] - m)
        out.append(ck / c0)
    return out


def test_acf_hand_case():
    # x = [1, 2, 3, 4]: mean 2.5, d = [-1.5, -0.5, 0.5, 1.5]
    # lag 0: 2.25 + 0.25 + 0.25 + 2.25 = 5
    # lag 1: (-1.5)(-0.5) + (-0.5)(0.5) + (0.5)(1.5) = 0.75 - 0.25 + 0.75 = 1.25 -> 1.25/5 = 0.25
    # lag 2: (-1.5)(0.5) + (-0.5)(1.5) = -1.5 -> -1.5/5 = -0.3
    # lag 3: (-1.5)(1.5) = -2.25 -> -2.25/5 = -0.45
    np.testing.assert_allclose(autocorrelation([1, 2, 3, 4], 3), [1.0, 0.25, -0.3, -0.45])


def test_acf_alternating_series():
    n = 10
    x = [(-1) ** t for t in range(n)]  # 1, -1, 1, ... (even n -> mean 0)
    # lag 0 sum = n; lag k: n - k products, each (-1)^t (-1)^(t+k) = (-1)^k -> (-1)^k (n-k)/n
    expected = [(-1) ** k * (n - k) / n for k in range(n)]
    np.testing.assert_allclose(autocorrelation(x, n - 1), expected, atol=1e-15)


def test_acf_against_double_loop_on_random_data():
    rng = np.random.default_rng(7)
    for n, max_lag in [(5, 4), (50, 20), (300, 50)]:
        x = 300.0 + 50.0 * rng.standard_normal(n).cumsum()  # watts-like, autocorrelated
        np.testing.assert_allclose(
            autocorrelation(x, max_lag), _acf_double_loop(x, max_lag), rtol=1e-10, atol=1e-12
        )


def test_acf_constant_series_is_nan_beyond_lag0():
    acf = autocorrelation([400.0] * 6, 3)
    assert acf[0] == 1.0
    assert np.isnan(acf[1:]).all() and acf.shape == (4,)


def test_acf_scale_and_shift_invariant():
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    np.testing.assert_allclose(autocorrelation(1000.0 + 7.0 * x, 5), autocorrelation(x, 5))


def test_acf_max_lag_validation():
    with pytest.raises(ValueError, match="exceeds"):
        autocorrelation([1.0, 2.0, 3.0], 3)
    with pytest.raises(ValueError, match=">= 0"):
        autocorrelation([1.0, 2.0, 3.0], -1)
    with pytest.raises(ValueError, match="integer"):
        autocorrelation([1.0, 2.0, 3.0], 1.5)
    np.testing.assert_array_equal(autocorrelation([1.0, 2.0], 0), [1.0])


# --------------------------------------------------------------------------- ACF R^2


def test_acf_r2_identical_is_one():
    rng = np.random.default_rng(3)
    y = rng.standard_normal(200).cumsum()
    assert acf_r2(y, y) == 1.0
    # an affine copy has the same ACF but not the same bits: 1 through the formula (up to
    # round-off), not through the identical-input shortcut
    assert acf_r2(y, 3.0 * y + 7.0) == pytest.approx(1.0, abs=1e-12)


def test_acf_r2_hand_case_positive():
    y = [1, 2, 3, 4]
    yhat = [1, 2, 4, 3]
    # lags k = 1..2 (n = 4 < max_lag + 2)
    # acf_y (see test_acf_hand_case): 0.25, -0.3
    # yhat: mean 2.5, d = [-1.5, -0.5, 1.5, 0.5], lag 0: 2.25 + 0.25 + 2.25 + 0.25 = 5
    #   lag 1: 0.75 - 0.75 + 0.75 = 0.75 -> 0.15; lag 2: -2.25 - 0.25 = -2.5 -> -0.5
    # ss_res = (0.25 - 0.15)^2 + (-0.3 + 0.5)^2 = 0.01 + 0.04 = 0.05
    # ss_tot = 0.15125 (test_acf_r2_hand_case_negative) = 121 / 800
    # R^2 = 1 - (1/20) / (121/800) = 1 - 40/121 = 81/121 = 0.6694...
    assert acf_r2(y, yhat) == pytest.approx(81.0 / 121.0, rel=1e-12)


def test_acf_r2_hand_case_negative():
    y = [1, 2, 3, 4]
    yhat = [1, -1, 1, -1]
    # n = 4 < max_lag + 2 -> lags k = 1..n-2 = 1..2
    # acf_y    (see test_acf_hand_case): 0.25, -0.3
    # acf_yhat (alternating, n = 4): -3/4, +2/4
    # ss_res = (0.25 + 0.75)^2 + (-0.3 - 0.5)^2 = 1 + 0.64 = 1.64
    # mean acf_y = (0.25 - 0.3)/2 = -0.025; ss_tot = 0.275^2 + 0.275^2 = 0.15125
    # R^2 = 1 - 1.64 / 0.15125 = -9.8429...
    assert acf_r2(y, yhat) == pytest.approx(1.0 - 1.64 / 0.15125)


def test_acf_r2_uses_max_lag():
    y = [1, 2, 3, 4, 5, 6, 7, 8]
    yhat = [1, 3, 2, 4, 6, 5, 7, 8]
    # expected from the plain-loop reference ACF, not from the module's own autocorrelation
    k = 3
    a = np.array(_acf_double_loop(y, k)[1:])
    b = np.array(_acf_double_loop(yhat, k)[1:])
    expected = 1.0 - np.sum((a - b) ** 2) / np.sum((a - a.mean()) ** 2)
    assert acf_r2(y, yhat, max_lag=k) == pytest.approx(expected)
    # short series: max_lag 50 falls back to lags 1..n-2 = 1..6
    k = 6
    a = np.array(_acf_double_loop(y, k)[1:])
    b = np.array(_acf_double_loop(yhat, k)[1:])
    expected = 1.0 - np.sum((a - b) ** 2) / np.sum((a - a.mean()) ** 2)
    assert acf_r2(y, yhat) == pytest.approx(expected)


def _ar1(rng, n, phi, mean=400.0, sd=30.0):
    e = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = e[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return mean + sd * x


def test_acf_r2_white_noise_against_ar1_well_below_one():
    rng = np.random.default_rng(11)
    y = _ar1(rng, 4000, 0.9)  # acf ~ 0.9^k
    noise = 400.0 + 30.0 * rng.standard_normal(4000)  # acf ~ 0
    # expected about 1 - sum 0.81^k / sum (0.9^k - mean)^2 ~ 1 - 4.26/2.66 ~ -0.6
    assert acf_r2(y, noise) < 0.0
    # an independent draw of the same AR(1) process matches well
    assert acf_r2(y, _ar1(rng, 4000, 0.9)) > 0.9


def test_acf_r2_reversal_has_same_acf():
    # The biased ACF is invariant under time reversal (same products, summed in reverse),
    # so a reversed series scores 1 up to round-off: ACF R^2 cannot detect reversal.
    rng = np.random.default_rng(5)
    y = _ar1(rng, 500, 0.8) + np.linspace(0.0, 50.0, 500)
    assert acf_r2(y, y[::-1]) == pytest.approx(1.0, abs=1e-12)


def test_acf_r2_constant_series_is_nan():
    y = [1.0, 3.0, 2.0, 5.0, 4.0]
    assert math.isnan(acf_r2(y, [2.0] * 5))
    assert math.isnan(acf_r2([2.0] * 5, y))


def test_acf_r2_too_short_or_bad_lag():
    with pytest.raises(ValueError, match="at least 4"):
        acf_r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="max_lag >= 2"):
        acf_r2([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], max_lag=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=4,
                max_size=80))
def test_acf_r2_self_is_one_property(y):
    assume(max(y) != min(y))
    assert acf_r2(y, y) == 1.0


# --------------------------------------------------------------------------- NRMSE


def test_nrmse_hand_case():
    y = [0, 1, 2, 3]
    yhat = [1, 1, 2, 2]
    # errors 1, 0, 0, -1 -> mse = 2/4 = 0.5, rmse = sqrt(0.5); range = 3 - 0 = 3
    assert nrmse(y, yhat) == pytest.approx(math.sqrt(0.5) / 3.0)


def test_nrmse_identical_is_zero_and_constant_is_nan():
    assert nrmse([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert math.isnan(nrmse([5.0, 5.0], [4.0, 6.0]))
    with pytest.raises(ValueError, match="align"):
        nrmse([1.0, 2.0], [1.0])


# --------------------------------------------------------------------------- percentiles


def test_percentile_error_hand_case():
    y = [1, 2, 3, 4, 5]
    yhat = [2, 3, 4, 5, 6]
    # linear P95 of y: position 0.95 * (5-1) = 3.8 -> 4 + 0.8 * (5-4) = 4.8; of yhat: 5.8
    # -> 100 * |5.8 - 4.8| / 4.8 = 20.833...
    assert percentile_error_pct(y, yhat, 95) == pytest.approx(100.0 * 1.0 / 4.8)
    # P50: 3 vs 4 -> 100 * 1/3
    assert percentile_error_pct(y, yhat, 50) == pytest.approx(100.0 / 3.0)


def test_percentile_error_different_lengths():
    y = [10, 20, 30, 40, 50]
    yhat = [10, 30]
    # P99 of y: position 0.99*4 = 3.96 -> 40 + 0.96*10 = 49.6
    # P99 of yhat: position 0.99*1 = 0.99 -> 10 + 0.99*20 = 29.8
    # -> 100 * |29.8 - 49.6| / 49.6 = 100 * 19.8 / 49.6
    assert percentile_error_pct(y, yhat, 99) == pytest.approx(100.0 * 19.8 / 49.6)


def test_percentile_error_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile_error_pct([1.0], [1.0], 101)
    with pytest.raises(ValueError, match="is 0"):
        percentile_error_pct([0.0, 0.0], [1.0, 1.0], 95)


# --------------------------------------------------------------------------- fidelity_scores


def test_fidelity_scores_perfect_after_align():
    y = [100.0, 150.0, 120.0, 180.0, 130.0, 160.0]
    yhat = y + [999.0, 999.0]  # longer generated run: the tail is cut by align()
    s = fidelity_scores(y, yhat)
    assert list(s) == list(SCORE_KEYS)
    assert all(isinstance(v, float) for v in s.values())
    assert s == {
        "energy_err_pct": 0.0,
        "ks": 0.0,
        "acf_r2": 1.0,
        "nrmse": 0.0,
        "p95_err_pct": 0.0,
        "p99_err_pct": 0.0,
    }


def test_fidelity_scores_hand_case():
    y = [1, 2, 3, 4]
    yhat = [2, 2, 3, 5, 100]  # longer: align() drops the 100
    s = fidelity_scores(y, yhat)
    # energy: |12 - 10| / 10 = 20 %
    # KS: F_y = .25, .5, .75, 1, 1 and F_yhat = 0, .5, .75, .75, 1 at 1..5 -> 0.25
    # ACF R^2 (lags 1..2): acf_y = 0.25, -0.3; yhat: mean 3, d = [-1, -1, 0, 2], lag 0: 6,
    #   lag 1: 1 -> 1/6, lag 2: -2 -> -1/3; ss_res = (1/12)^2 + (1/30)^2 = 29/3600,
    #   ss_tot = 121/800 -> 1 - (29/3600) / (121/800) = 1 - 58/1089 = 1031/1089
    # NRMSE: errors 1, 0, 0, 1 -> sqrt(0.5) / range 3
    # P95 (h = 0.95 * 3 = 2.85): y 3 + 0.85 = 3.85, yhat [2, 2, 3, 5] 3 + 0.85 * 2 = 4.7
    #   -> 100 * 0.85 / 3.85; P99 (h = 2.97): 3.97 and 4.94 -> 100 * 0.97 / 3.97
    assert s == pytest.approx({
        "energy_err_pct": 20.0,
        "ks": 0.25,
        "acf_r2": 1031.0 / 1089.0,
        "nrmse": math.sqrt(0.5) / 3.0,
        "p95_err_pct": 100.0 * 0.85 / 3.85,
        "p99_err_pct": 100.0 * 0.97 / 3.97,
    }, rel=1e-12)


# --------------------------------------------------------------------------- summarise_seeds


def test_summarise_seeds_median():
    seeds = [{"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 4.0}, {"a": 2.0, "b": 100.0}]
    # a: median(1, 3, 2) = 2; b: median(5, 4, 100) = 5
    assert summarise_seeds(seeds) == {"a": 2.0, "b": 5.0}
    # even count: median(1, 3, 2, 10) = (2 + 3)/2 = 2.5
    assert summarise_seeds(seeds + [{"a": 10.0, "b": 0.0}])["a"] == 2.5


def test_summarise_seeds_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        summarise_seeds([])
    with pytest.raises(ValueError, match="keys"):
        summarise_seeds([{"a": 1.0}, {"b": 1.0}])


# --------------------------------------------------------------------------- properties


positive = st.floats(min_value=1.0, max_value=1e4, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=1, max_value=50).flatmap(
        lambda n: st.tuples(st.lists(positive, min_size=n, max_size=n),
                            st.lists(positive, min_size=n, max_size=n))
    ),
    st.floats(min_value=1e-3, max_value=1e3, allow_nan=False),
)
def test_energy_error_scale_invariant(pair, c):
    y, yhat = (np.asarray(v) for v in pair)
    assert energy_error_pct(c * y, c * yhat) == pytest.approx(
        energy_error_pct(y, yhat), rel=1e-9, abs=1e-8
    )
