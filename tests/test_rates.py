"""Request-rate processes: diurnal shape, modulation statistics and correlation, bursts,
chunking and slicing invariance."""

import numpy as np
import pytest

from distgen.config.schema import BurstConfig, DiurnalConfig, ModulationConfig, TrafficConfig
from distgen.topology import Topology
from distgen.workload.rates import (RateState, ar1_phi, burst_stationary_fraction,
                                    diurnal_factor, rate_multipliers, rate_state_init)

FLAT = DiurnalConfig(peak_hour=15.0, trough_ratio=1.0)


def _topo():
    # 3 rows x 2 racks x 2 servers x 2 GPUs; row 1 runs TP2 (one deployment per server)
    return Topology(rows=3, racks_per_row=2, servers_per_rack=2, gpus_per_server=2,
                    row_serving=("a", "b", "c"), row_tp=(1, 2, 1))


def _traffic(**mod):
    return TrafficConfig(diurnal=FLAT, modulation=ModulationConfig(**mod))


def _run(traffic, fleet, seed, n, start_hour=0.0):
    st = rate_state_init(fleet)
    m, _ = rate_multipliers(traffic, fleet, seed, st, 0, n, start_hour)
    return m


# ---------------------------------------------------------------------------------------------
# diurnal


def test_diurnal_mean_ratio_peak():
    h = (np.arange(24 * 3600) + 0.5) / 3600.0
    f = diurnal_factor(h, 15.0, 0.35)
    assert f.mean() == pytest.approx(1.0, abs=1e-9)
    assert f.min() / f.max() == pytest.approx(0.35, rel=1e-6)
    assert h[np.argmax(f)] == pytest.approx(15.0, abs=1e-3)
    assert h[np.argmin(f)] == pytest.approx(3.0, abs=1e-3)
    # periodic, vectorised, flat for ratio 1
    assert diurnal_factor(15.0 + 24.0, 15.0, 0.35) == pytest.approx(f.max(), rel=1e-9)
    np.testing.assert_allclose(diurnal_factor(h[:100], 2.0, 1.0), 1.0)
    assert diurnal_factor(3.0, 15.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        diurnal_factor(1.0, 15.0, 1.5)


def test_diurnal_in_multipliers_uses_interval_midpoint():
    topo = _topo()
    fleet = topo.fleet()
    d = DiurnalConfig(peak_hour=6.0, trough_ratio=0.2)
    tr = TrafficConfig(diurnal=d, modulation=ModulationConfig(cv=0.0, interval_s=900.0))
    m = _run(tr, fleet, 0, 96, start_hour=22.0)
    hours = np.mod(22.0 + (np.arange(96) + 0.5) * 0.25, 24.0)
    np.testing.assert_allclose(m, np.broadcast_to(diurnal_factor(hours, 6.0, 0.2), m.shape),
                               rtol=1e-6)
    assert m.dtype == np.float32 and m.shape == (fleet.n_deployments, 96)
    assert m[0].mean() == pytest.approx(1.0, abs=1e-6)  # full day of 96 intervals


# ---------------------------------------------------------------------------------------------
# modulation


def test_cv_zero_means_no_modulation():
    fleet = _topo().fleet()
    m = _run(_traffic(cv=0.0), fleet, 3, 50)
    np.testing.assert_array_equal(m, 1.0)


def test_modulation_mean_cv_and_autocorrelation():
    fleet = _topo().fleet()
    cv, dt, tau = 0.3, 60.0, 600.0
    n = 200_000
    m = _run(_traffic(cv=cv, interval_s=dt, correlation_time_s=tau, rho_site=0.5, rho_row=0.2,
                      rho_rack=0.1), fleet, 11, n).astype(np.float64)
    phi = ar1_phi(dt, tau)  # exp(-0.1) = 0.905
    # Effective sample size of an AR(1) mean: n (1 - phi) / (1 + phi) = 200000 * 0.05 = 1e4
    # per deployment. Standard error of the mean multiplier: cv / sqrt(1e4) = 0.003; of the
    # sample sd (lognormal, sigma = 0.29) roughly 0.3 / sqrt(2 x 1e4) x 1.5 = 0.0045. The
    # deployments share 80 % of their variance, so averaging over them barely helps: test each
    # with ~5 standard errors.
    assert np.abs(m.mean(axis=1) - 1.0).max() < 0.02
    assert np.abs(m.std(axis=1) / m.mean(axis=1) - cv).max() < 0.03
    g = np.log(m)
    g = (g - g.mean(axis=1, keepdims=True))
    lag1 = (g[:, 1:] * g[:, :-1]).mean(axis=1) / g.var(axis=1)
    # Bartlett: the lag-1 sample autocorrelation of an AR(1) has variance ~ (1 - phi^2) / n,
    # sd = sqrt(0.18 / 2e5) = 0.001 here; allow 0.01
    np.testing.assert_allclose(lag1, phi, atol=0.01)


def test_modulation_correlation_structure():
    topo = _topo()
    fleet = topo.fleet()
    rs, rr, rk = 0.4, 0.2, 0.15
    # short correlation time: phi = exp(-60 / 60) = 0.37, n_eff = n (1 - phi^2) / (1 + phi^2)
    # = 0.76 n for a correlation of two AR(1)s with the same phi; n = 1e5 -> 7.6e4, so the
    # standard error of a correlation coefficient is (1 - r^2) / sqrt(7.6e4) < 0.0036; allow 0.02
    m = _run(_traffic(cv=0.5, interval_s=60.0, correlation_time_s=60.0, rho_site=rs, rho_row=rr,
                      rho_rack=rk), fleet, 5, 100_000)
    g = np.log(m.astype(np.float64))
    r = np.corrcoef(g)
    rack = fleet.deployment_rack_uid
    row = fleet.deployment_row
    uid = fleet.deployment_uid
    same_rack = [(i, j) for i in range(len(uid)) for j in range(i) if rack[i] == rack[j]]
    same_row = [(i, j) for i in range(len(uid)) for j in range(i)
                if row[i] == row[j] and rack[i] != rack[j]]
    other = [(i, j) for i in range(len(uid)) for j in range(i) if row[i] != row[j]]
    assert same_rack and same_row and other
    for pairs, want in ((other, rs), (same_row, rs + rr), (same_rack, rs + rr + rk)):
        got = np.array([r[i, j] for i, j in pairs])
        np.testing.assert_allclose(got, want, atol=0.02)


def test_all_site_share_is_identical_across_fleet():
    fleet = _topo().fleet()
    m = _run(_traffic(cv=0.2, rho_site=1.0, rho_row=0.0, rho_rack=0.0), fleet, 1, 100)
    np.testing.assert_array_equal(m, np.broadcast_to(m[0], m.shape))


# ---------------------------------------------------------------------------------------------
# bursts


def test_bursts_mean_one_and_fraction():
    fleet = _topo().fleet()
    b = BurstConfig(kind="mmpp", high_factor=3.0, mean_burst_s=300.0, mean_calm_s=1500.0)
    tr = TrafficConfig(diurnal=FLAT, modulation=ModulationConfig(cv=0.0, interval_s=10.0),
                       bursts=b)
    n = 400_000
    m = _run(tr, fleet, 2, n)
    np.testing.assert_array_equal(m, np.broadcast_to(m[0], m.shape))  # site-wide
    f = m[0].astype(np.float64)
    levels = np.unique(f)
    assert levels.size == 2 and levels[1] / levels[0] == pytest.approx(3.0, rel=1e-6)
    burst = f == levels[1]
    # Discrete chain: pi_b = p_cb / (p_cb + p_bc) = 0.1684; the continuous-time value
    # mean_burst / (mean_burst + mean_calm) = 0.1667 is within 1 % of it at interval 10 s.
    pi_b = burst_stationary_fraction(b, 10.0)
    assert pi_b == pytest.approx(300.0 / 1800.0, rel=0.015)
    # Burst indicator: lag-1 correlation 1 - p_cb - p_bc = 0.960, n_eff = n (1 - 0.96) /
    # (1 + 0.96) = 8.2e3; sd of the fraction sqrt(pi (1 - pi) / n_eff) = 0.0041. Allow 0.02;
    # the mean factor then has sd (3 - 1) x 0.0041 / 1.337 = 0.006, allow 0.03.
    assert burst.mean() == pytest.approx(pi_b, abs=0.02)
    assert f.mean() == pytest.approx(1.0, abs=0.03)
    # exact normalisation: the two levels are 1 / E and 3 / E with E = 1 + 2 pi_b
    assert levels[0] == pytest.approx(1.0 / (1.0 + 2.0 * pi_b), rel=1e-6)
    # mean sojourn in a burst (geometric with p_bc = 1 - exp(-10/300)): 10 / p_bc = 305 s
    edges = np.flatnonzero(np.diff(burst.astype(np.int8)))
    runs = np.diff(edges)[(burst[edges[:-1] + 1])]
    assert runs.mean() * 10.0 == pytest.approx(10.0 / (1 - np.exp(-10 / 300)), rel=0.1)


def test_bursts_compose_with_modulation():
    fleet = _topo().fleet()
    tr = TrafficConfig(diurnal=FLAT, modulation=ModulationConfig(cv=0.2),
                       bursts=BurstConfig(kind="mmpp"))
    both = _run(tr, fleet, 4, 500)
    mod = _run(TrafficConfig(diurnal=FLAT, modulation=ModulationConfig(cv=0.2)), fleet, 4, 500)
    ratio = both.astype(np.float64) / mod
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0], ratio.shape), rtol=1e-6)
    assert np.unique(np.round(ratio[0], 5)).size == 2


# ---------------------------------------------------------------------------------------------
# streaming and slicing


def _full_traffic():
    return TrafficConfig(diurnal=DiurnalConfig(peak_hour=14.0, trough_ratio=0.4),
                         modulation=ModulationConfig(cv=0.3, interval_s=60.0,
                                                     correlation_time_s=300.0, rho_site=0.5,
                                                     rho_row=0.2, rho_rack=0.1),
                         bursts=BurstConfig(kind="mmpp", mean_burst_s=120.0, mean_calm_s=600.0))


def test_chunking_invariance():
    tr = _full_traffic()
    fleet = _topo().fleet()
    seed, hour = 77, 9.5
    st0 = rate_state_init(fleet)
    whole, st_whole = rate_multipliers(tr, fleet, seed, st0, 0, 17, hour)
    a, st = rate_multipliers(tr, fleet, seed, st0, 0, 10, hour)
    b, st = rate_multipliers(tr, fleet, seed, st, 10, 7, hour)
    np.testing.assert_array_equal(np.concatenate([a, b], axis=1), whole)
    assert st.k_next == st_whole.k_next == 17
    # many uneven chunks, including length-1 chunks
    st = st0
    parts = []
    for k0, n in ((0, 1), (1, 1), (2, 5), (7, 3), (10, 7)):
        p, st = rate_multipliers(tr, fleet, seed, st, k0, n, hour)
        parts.append(p)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    # random access: skipping ahead or going back gives the same numbers
    c, _ = rate_multipliers(tr, fleet, seed, st0, 12, 5, hour)
    np.testing.assert_array_equal(c, whole[:, 12:])
    d, _ = rate_multipliers(tr, fleet, seed, st_whole, 3, 4, hour)
    np.testing.assert_array_equal(d, whole[:, 3:7])
    e, st_e = rate_multipliers(tr, fleet, seed, st0, 5, 0, hour)
    assert e.shape == (fleet.n_deployments, 0) and st_e.k_next == 5
    assert isinstance(st_e, RateState)


def test_slice_invariance():
    tr = _full_traffic()
    topo = _topo()
    full = topo.fleet()
    part = topo.fleet(2, 5)  # racks 2..4: rows 1 and 2, row 2 only partly
    seed = 123
    m_full = _run(tr, full, seed, 40, 3.0)
    m_part = _run(tr, part, seed, 40, 3.0)
    idx = np.searchsorted(full.deployment_uid, part.deployment_uid)
    assert (full.deployment_uid[idx] == part.deployment_uid).all()
    np.testing.assert_array_equal(m_part, m_full[idx])
    # chunked on the slice too
    st = rate_state_init(part)
    a, st = rate_multipliers(tr, part, seed, st, 0, 25, 3.0)
    b, st = rate_multipliers(tr, part, seed, st, 25, 15, 3.0)
    np.testing.assert_array_equal(np.concatenate([a, b], axis=1), m_full[idx])
    # a state from another slice is refused
    with pytest.raises(ValueError):
        rate_multipliers(tr, full, seed, st, 40, 1, 3.0)


def test_seed_changes_numbers():
    tr = _full_traffic()
    fleet = _topo().fleet()
    assert not np.array_equal(_run(tr, fleet, 1, 30), _run(tr, fleet, 2, 30))
    np.testing.assert_array_equal(_run(tr, fleet, 1, 30), _run(tr, fleet, 1, 30))
