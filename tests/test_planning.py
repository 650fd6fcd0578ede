"""Planner answers (issue #9): load characteristics, exports, oversubscription, capping, and
``distgen analyze`` on run folders.

Expected values are computed by hand in each test's docstring. Run folders are either written
by hand (SeriesWriter + manifest, so every value is known) or generated tiny and fast with the
local executor.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distgen.analysis import capping, loadprofile, oversubscription
from distgen.cli import main
from distgen.errors import DistgenError
from distgen.io import SeriesWriter, finalize_output_dir, prepare_output_dir
from distgen.io.outdir import MARKER_NAME
from distgen.io.runoutput import RunOutput
from distgen.planning.options import AnalysisOptions, CappingOptions
from distgen.planning.run import analyze_run

ROOT = Path(__file__).resolve().parent.parent
H100 = "qwen3-30b-a3b_H100_tp2"
H100_ARTIFACT = json.loads((ROOT / "distgen" / "library" / f"{H100}.json").read_text())


# =============================================================================================
# load characteristics on hand-made traces


def test_characteristics_of_a_two_level_step():
    """60 s samples, one hour at 100 W then one hour at 300 W.

    mean 200 W, peak 300 W, PAR 1.5; the 15-minute means are 100 x4 then 300 x4, so the demand
    peak is 300 W and the load factor 200/300; energy (60*100 + 60*300) * 60 s = 1.44 MJ. The
    only change is +200 W at 01:00, so the largest up ramp is 200 W at 1 min, 15 min and 1 h
    and there is no down ramp (0). Of the 120 sorted samples, P50 interpolates between the 60th
    (100) and 61st (300): 200 W; P95 and P99 fall in the 300 W half.
    """
    p = np.r_[np.full(60, 100.0), np.full(60, 300.0)]
    c = loadprofile.load_characteristics(p, 60.0)
    assert c.mean_w == 200.0 and c.peak_w == 300.0 and c.min_w == 100.0
    assert c.peak_to_average == 1.5
    assert c.demand_peak_15min_w == 300.0
    assert c.load_factor == pytest.approx(2 / 3, rel=1e-15)
    assert c.energy_j == 1.44e6 and c.duration_s == 7200.0
    for w in ("1min", "15min", "1h"):
        assert getattr(c, f"ramp_up_max_w_per_{w}") == 200.0
        assert getattr(c, f"ramp_down_max_w_per_{w}") == 0.0
    assert (c.p50_w, c.p95_w, c.p99_w) == (200.0, 300.0, 300.0)


def test_demand_peak_and_load_factor_differ_from_the_sample_peak():
    """1 s samples over 30 min at 1000 W with one 1900 W second in the first quarter hour.

    Demand peak = (899 * 1000 + 1900) / 900 = 1001 W; mean = (1799 * 1000 + 1900) / 1800 =
    1000.5 W; load factor = 1000.5 / 1001; PAR = 1900 / 1000.5. The 15-minute ramp is the drop
    from 1001 to 1000 W: up 0, down 1 W.
    """
    p = np.full(1800, 1000.0)
    p[100] = 1900.0
    c = loadprofile.load_characteristics(p, 1.0)
    assert c.demand_peak_15min_w == pytest.approx(1001.0, rel=1e-14)
    assert c.mean_w == pytest.approx(1000.5, rel=1e-14)
    assert c.load_factor == pytest.approx(1000.5 / 1001.0, rel=1e-14)
    assert c.peak_to_average == pytest.approx(1900.0 / 1000.5, rel=1e-14)
    assert c.ramp_up_max_w_per_15min == 0.0
    assert c.ramp_down_max_w_per_15min == pytest.approx(1.0, rel=1e-9)
    # a 1-hour ramp needs two complete hours: not available for a 30-minute series
    assert math.isnan(c.ramp_up_max_w_per_1h) and math.isnan(c.ramp_down_max_w_per_1h)


def test_ramps_need_whole_windows_and_entities_are_rows():
    """A 15-minute series cannot give 1-minute ramps (NaN); a 2-D array gives each row's own
    figures (the second row is the first reversed: up and down swap)."""
    p = np.array([[100.0, 400.0, 300.0, 300.0], [300.0, 300.0, 400.0, 100.0]])
    c = loadprofile.load_characteristics(p, 900.0)
    assert np.all(np.isnan(c.ramp_up_max_w_per_1min))
    np.testing.assert_array_equal(c.ramp_up_max_w_per_15min, [300.0, 100.0])
    np.testing.assert_array_equal(c.ramp_down_max_w_per_15min, [100.0, 300.0])
    np.testing.assert_array_equal(c.peak_w, [400.0, 400.0])
    one = loadprofile.load_characteristics(p[1], 900.0)
    assert one.ramp_down_max_w_per_15min == c.ramp_down_max_w_per_15min[1]
    # the hourly ramp: one complete hour of four quarter hours only -> NaN
    assert np.all(np.isnan(c.ramp_up_max_w_per_1h))


def test_coincidence_and_diversity_factors():
    """Two members that peak at different times: a = [2, 0, 1], b = [0, 2, 1] kW.

    Sum = [2, 2, 2]: group peak 2; sum of individual peaks 4; coincidence 0.5 (the ratio the
    issue calls "site peak / sum of individual peaks"), diversity factor 2 (IEEE: its
    reciprocal). Members that peak together have both factors 1.
    """
    c = loadprofile.coincidence([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    assert (c.group_peak_w, c.sum_of_peaks_w) == (2.0, 4.0)
    assert (c.coincidence_factor, c.diversity_factor) == (0.5, 2.0)
    same = loadprofile.coincidence([[1.0, 3.0], [2.0, 6.0]])
    assert same.coincidence_factor == 1.0 and same.diversity_factor == 1.0


def test_aggregation_smoothing_identical_and_antiphase_members():
    """Identical members keep their CV whatever N (fully correlated: no smoothing); two
    members in anti-phase ([1, 3] and [3, 1]) sum to a constant: CV 0 for N = 2. The CV of
    [1, 3] is std 1 / mean 2 = 0.5."""
    rng = np.random.default_rng(0)
    same = np.tile([1.0, 3.0, 1.0, 3.0], (6, 1))
    sm = loadprofile.aggregation_smoothing(same, [1, 3, 6], rng=rng)
    np.testing.assert_allclose(sm.cv_mean, 0.5, rtol=1e-15)
    np.testing.assert_array_equal(sm.groups, [32, 32, 1])
    anti = np.array([[1.0, 3.0], [3.0, 1.0]])
    sm = loadprofile.aggregation_smoothing(anti, [1, 2], rng=rng)
    np.testing.assert_allclose(sm.cv_mean, [0.5, 0.0], atol=1e-15)


def test_load_duration_curve_is_sorted_with_exceedance():
    share, p = loadprofile.load_duration_curve([3.0, 1.0, 2.0, 4.0])
    np.testing.assert_array_equal(p, [4.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(share, [0.25, 0.5, 0.75, 1.0])


# =============================================================================================
# daily pattern, 8760-h profile, per-unit multipliers


def test_daily_pattern_from_a_day_starting_at_nine():
    """A 24 h series of 60 s samples starting at 09:00 whose value is 1000 + the clock hour:
    the pattern is exactly 1000 + h for h = 0..23, each hour from 60 samples, and the typical
    day's energy equals the series' energy (every clock hour is covered once)."""
    n = 1440
    hour = (9 + np.arange(n) // 60) % 24
    p = 1000.0 + hour
    d = loadprofile.daily_pattern(p, 60.0, 9 * 3600.0)
    np.testing.assert_array_equal(d.power_w, 1000.0 + np.arange(24))
    np.testing.assert_array_equal(d.samples, 60)
    assert d.daily_energy_j == pytest.approx(p.sum() * 60.0, rel=1e-15)
    assert d.days == 1.0


def test_daily_pattern_refuses_a_short_run():
    with pytest.raises(DistgenError, match="at least 24 h.*covers 4 h"):
        loadprofile.daily_pattern(np.ones(240), 60.0, 0.0)


def test_annual_profile_energy_scaling_and_growth():
    """With scales 1 and no growth, annual energy = 365 x daily energy. 2026-01-01 is a
    Thursday, so hours 48..95 (Saturday 3rd, Sunday 4th) are the first weekend hours. Linear
    growth of 10 %/year gives factor 1 + 0.1 * h / 8760; compound (1.1) ** (h / 8760)."""
    pattern = 1000.0 + 10.0 * np.arange(24)
    daily_j = pattern.sum() * 3600.0
    a = loadprofile.annual_profile(pattern, start_date=dt.date(2026, 1, 1))
    assert a.power_w.shape == (8760,)
    assert a.energy_j == pytest.approx(365 * daily_j, rel=1e-13)
    assert str(a.hour_start[0]) == "2026-01-01T00" and str(a.hour_start[-1]) == "2026-12-31T23"
    assert not a.weekend[:48].any() and a.weekend[48:96].all() and not a.weekend[96:120].any()
    assert a.weekend.sum() == 104 * 24  # 2026 has 52 Saturdays and 52 Sundays
    b = loadprofile.annual_profile(pattern, start_date=dt.date(2026, 1, 1), weekday_scale=1.0,
                                   weekend_scale=0.5)
    np.testing.assert_array_equal(b.power_w[48:96], 0.5 * a.power_w[48:96])
    np.testing.assert_array_equal(b.power_w[:48], a.power_w[:48])
    lin = loadprofile.annual_profile(pattern, start_date=dt.date(2026, 1, 1),
                                     growth_pct_per_year=10.0, growth="linear")
    assert lin.scale[0] == 1.0 and lin.scale[8759] == pytest.approx(1 + 0.1 * 8759 / 8760)
    comp = loadprofile.annual_profile(pattern, start_date=dt.date(2026, 1, 1),
                                      growth_pct_per_year=10.0)
    assert comp.scale[4380] == pytest.approx(1.1 ** 0.5, rel=1e-14)
    with pytest.raises(ValueError, match="growth"):
        loadprofile.annual_profile(pattern, start_date=dt.date(2026, 1, 1), growth="cubic")


def test_per_unit_multipliers():
    mult, base = loadprofile.per_unit([50.0, 200.0, 100.0])
    assert base == 200.0 and mult.tolist() == [0.25, 1.0, 0.5]
    mult, base = loadprofile.per_unit([50.0, 200.0], base_w=100.0)
    assert mult.tolist() == [0.5, 2.0]


# =============================================================================================
# capping (fluid backlog)


def test_cap_defers_and_serves_back_fifo():
    """p = [30, 30, 10, 10, 10] W, dt = 1 s, cap 20 W (ceiling min(20, peak 30) = 20).

    Steps 0-1 defer 10 J each (backlog 10, 20); steps 2-3 serve 10 J back each (backlog 10, 0);
    served = [20, 20, 20, 20, 10]. FIFO: the joules of step 0 leave in step 2, those of step 1
    in step 3: every delay is 2 s (mean 2, max 2).
    """
    r = capping.fluid_cap([30.0, 30.0, 10.0, 10.0, 10.0], 20.0, 1.0)
    np.testing.assert_array_equal(r.served_w, [20.0, 20.0, 20.0, 20.0, 10.0])
    np.testing.assert_array_equal(r.backlog_j, [10.0, 20.0, 10.0, 0.0, 0.0])
    assert (r.deferred_j, r.served_back_j, r.still_deferred_j) == (20.0, 20.0, 0.0)
    assert (r.mean_delay_s, r.max_delay_s) == (2.0, 2.0)
    assert (r.peak_before_w, r.peak_after_w) == (30.0, 20.0)
    assert r.capped_steps == 3  # steps 0-2 end with work waiting


def test_cap_window_without_headroom_leaves_energy_deferred():
    """Constant 100 W, cap 50 W in steps 2-3 only, catch-up at the uncapped peak (100 W): no
    step ever has headroom, so the 2 x 50 J stay deferred at the end, and nothing is delayed.
    With catch-up allowed up to 150 W, the 100 J come back in steps 4 and 5 (50 W extra each)
    with delays 2 s each."""
    p = np.full(8, 100.0)
    cap = np.full(8, np.inf)
    cap[2:4] = 50.0
    r = capping.fluid_cap(p, cap, 1.0)
    assert r.still_deferred_j == 100.0 and r.served_back_j == 0.0
    assert r.energy_after_j + r.still_deferred_j == r.energy_before_j
    assert math.isnan(r.mean_delay_s)
    r = capping.fluid_cap(p, cap, 1.0, catch_up_w=150.0)
    np.testing.assert_array_equal(r.served_w, [100, 100, 50, 50, 150, 150, 100, 100])
    assert r.still_deferred_j == 0.0 and (r.mean_delay_s, r.max_delay_s) == (2.0, 2.0)


def test_fifo_delays_by_hand():
    """10 J arrive in step 0 and 30 J in step 1; 20 J leave in step 3 and 20 J in step 5.
    FIFO: the first 10 J wait 3 steps, the next 10 J 2 steps (leave in step 3), the last 20 J
    4 steps (leave in step 5). Mean = (10*3 + 10*2 + 20*4) / 40 = 3.25 steps; max 4."""
    mean, mx, served = capping.fifo_delays([10, 30, 0, 0, 0, 0], [0, 0, 0, 20, 0, 20], 0.5)
    assert served == 40.0 and mean == 3.25 * 0.5 and mx == 4 * 0.5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1000.0), min_size=1, max_size=80),
       st.floats(0.0, 1200.0), st.sampled_from([0.25, 1.0, 60.0]))
def test_capping_conserves_energy_and_never_raises_a_peak(power, cap, dt_s):
    """Any series and cap: served + still deferred = uncapped energy; no sample above the
    uncapped peak (default catch-up) nor above the cap while work is waiting; backlog >= 0;
    Little's law: when everything was served back, mean delay = sum(backlog) * dt / deferred
    (exact for this step discretisation)."""
    p = np.asarray(power)
    r = capping.fluid_cap(p, cap, dt_s)
    total = p.sum() * dt_s
    assert r.energy_after_j + r.still_deferred_j == pytest.approx(total, rel=1e-9, abs=1e-6)
    assert np.all(r.served_w <= p.max() * (1 + 1e-12) + 1e-9)
    assert r.peak_after_w <= r.peak_before_w * (1 + 1e-12) + 1e-9
    assert np.all(r.backlog_j >= 0)
    waiting = r.backlog_j > 1e-9
    assert np.all(r.served_w[waiting] <= min(cap, p.max()) * (1 + 1e-12) + 1e-9)
    if r.deferred_j > 1e-6 and r.still_deferred_j <= 1e-9:
        assert r.mean_delay_s == pytest.approx(r.backlog_j.sum() * dt_s / r.deferred_j,
                                               rel=1e-6)


def test_capping_per_entity_equals_one_by_one():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 100, size=(3, 50))
    caps = np.array([[40.0], [60.0], [80.0]])
    r = capping.fluid_cap(p, caps, 1.0)
    for i in range(3):
        one = capping.fluid_cap(p[i], caps[i, 0], 1.0)
        np.testing.assert_array_equal(r.served_w[i], one.served_w)
        assert r.mean_delay_s[i] == one.mean_delay_s or (
            math.isnan(r.mean_delay_s[i]) and math.isnan(one.mean_delay_s))


# =============================================================================================
# oversubscription


def test_units_within_constant_power():
    """600 kW / 25 kW = 24 exactly (not lost to rounding); 600 / 26.4 = 22.7 -> 22."""
    assert oversubscription.units_within_constant(600e3, 25e3) == 24
    assert oversubscription.units_within_constant(600e3, 26.4e3) == 22
    assert oversubscription.units_within_constant(0.3, 0.1) == 3


@pytest.mark.parametrize("shared_spike, expected", [(False, 9), (True, 6)])
def test_admission_with_known_group_peaks(shared_spike, expected):
    """12 units at 10 kW with one 5 kW spike each. Spikes at distinct times: any N units
    peak at 10N + 5 kW, so under 100 kW N = 9 (95 kW; 10 would be 105). Spikes at the same
    time: 15N kW, so N = 6 (90 kW; 7 would be 105)."""
    pool = np.full((12, 20), 10e3)
    for i in range(12):
        pool[i, 0 if shared_spike else i] += 5e3
    adm = oversubscription.admissible_units(pool, 100e3, rng=np.random.default_rng(1),
                                            repetitions=50)
    assert adm.units == expected
    assert adm.with_replacement_from is None  # n_max = floor(100 / ~10.2) + 1 = 10 <= 12
    assert np.all(np.diff(adm.peak_percentile_w) >= 0)


def test_admission_against_exhaustive_subsets():
    """Brute force, independent of the Monte-Carlo code: with a pool of 5 units and P100 over
    3000 random orders, every N-subset (at most C(5, 2) = 10) is drawn with probability
    1 - 0.9 ** 3000, so the P100 group peak is the maximum over all subsets; the answer must
    equal the largest N whose worst subset fits, found by enumerating itertools.combinations."""
    rng = np.random.default_rng(7)
    pool = rng.uniform(0, 10, size=(5, 30))
    worst = [max(pool[list(c)].sum(axis=0).max() for c in itertools.combinations(range(5), n))
             for n in range(1, 6)]
    for limit in (8.0, 15.0, 22.0, 30.0, 40.0, 60.0):
        brute = max([n for n in range(1, 6) if worst[n - 1] <= limit], default=0)
        adm = oversubscription.admissible_units(pool, limit, rng=np.random.default_rng(0),
                                                percentile=100.0, repetitions=3000, n_max=5)
        np.testing.assert_allclose(adm.peak_percentile_w, worst, rtol=1e-12)
        assert adm.units == brute, limit


def test_admission_p95_against_a_direct_count():
    """Brute force of the P95 rule with the same random orders (a permutation of the pool,
    then uniform draws with replacement, as documented): each group summed directly, the P95
    taken per N, and every N scanned (no monotonicity assumed)."""
    pool = np.random.default_rng(11).uniform(0, 5, size=(4, 25))
    limit, reps, n_max = 20.0, 40, 9
    adm = oversubscription.admissible_units(pool, limit, rng=np.random.default_rng(5),
                                            repetitions=reps, n_max=n_max)
    rng = np.random.default_rng(5)
    orders = []
    for _ in range(reps):
        perm = rng.permutation(4)
        orders.append(np.r_[perm, rng.integers(0, 4, size=n_max - 4)])
    p95 = [np.percentile([pool[o[:n]].sum(axis=0).max() for o in orders], 95)
           for n in range(1, n_max + 1)]
    np.testing.assert_allclose(adm.peak_percentile_w, p95, rtol=1e-12)
    assert adm.units == max([n for n in range(1, n_max + 1) if p95[n - 1] <= limit], default=0)
    assert adm.with_replacement_from == 5


# =============================================================================================
# run folders: a hand-made one with known values


PUE = 1.5
FACILITY = {"rows": 1, "racks_per_row": 3, "servers_per_rack": 2, "gpus_per_server": 8,
            "row_serving": [H100], "non_gpu": {"idle_w": 1000.0, "activity_w": 0.0},
            "pue": PUE}


def write_hand_run(folder: Path, *, hours: int = 24, start: str = "2026-07-01T00:00:00",
                   res_s: float = 60.0) -> np.ndarray:
    """A run of 3 identical racks at ``res_s`` resolution, each rack at (10 + clock hour) kW;
    the site IT is their sum, facility x 1.5. Returns the rack trace [W]."""
    n = int(hours * 3600 / res_s)
    hour = (np.arange(n) * res_s // 3600).astype(int) % 24
    rack = (10.0 + hour) * 1e3
    grid = {"start_time": start, "interval_s": 0.25, "n_steps": hours * 14400,
            "duration_s": hours * 3600.0}
    prepare_output_dir(folder)
    t = np.arange(n) * res_s
    tag = f"{res_s:g}s"
    files = []
    with SeriesWriter(folder / f"site_{tag}.parquet", level="site", resolution_s=res_s,
                      value_columns=["it_power_w", "facility_power_w"], entity_column=None,
                      units={"it_power_w": "W", "facility_power_w": "W"}, grid=grid) as w:
        w.write(t, {"it_power_w": 3 * rack, "facility_power_w": PUE * 3 * rack})
        files.append({**w.close(), "resolution_s": res_s, "format": "parquet"})
    with SeriesWriter(folder / f"racks_{tag}.parquet", level="racks", resolution_s=res_s,
                      value_columns=["power_w", "timestamp_extra_w"], entity_column="rack_id",
                      units={"power_w": "W", "timestamp_extra_w": "W"}, grid=grid) as w:
        w.write(t, {"power_w": np.tile(rack[:, None], (1, 3)),
                    "timestamp_extra_w": np.zeros((n, 3))}, entity_ids=np.arange(3))
        files.append({**w.close(), "resolution_s": res_s, "format": "parquet"})
    files.append({"path": "notes.txt", "level": "other", "format": "text"})
    (folder / "notes.txt").write_text("a file analysis must ignore\n")
    manifest = {"config": {"facility": FACILITY, "start_time": start},
                "config_hash": "f00dfeed" * 8, "seed": 1,
                "model_library": {"source": None, "version": None, "models": {}},
                "topology": {"rows": 1, "racks": 3, "servers": 6, "gpus": 48,
                             "deployments": 24, "row_serving": [H100]},
                "grid": grid, "files": files}
    finalize_output_dir(folder, manifest)
    return rack


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hand") / "run"
    rack = write_hand_run(folder)
    return folder, rack


def test_run_output_reads_series_by_column_name(hand_run):
    folder, rack = hand_run
    run = RunOutput.open(folder)
    assert run.levels() == ["site", "racks"]
    ent = run.entities("racks")
    assert ent.power_w.shape == (3, 1440) and ent.ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(ent.power_w[2], rack)
    assert run.entity_rows("racks", ent.ids).tolist() == [0, 0, 0]


def test_analyze_exports_are_energy_consistent(hand_run, tmp_path):
    """Facility power is 1.5 x 3 x (10 + h) kW. The run wrote no CSV, so analysis writes the
    15-minute CSV: its kWh sum to the fine trace's energy. The annual profile with scale 1 and
    no growth is 365 x the day's energy, and both its CSV and its OpenDSS multipliers x base
    give it back; the daily pattern is 4.5 x (10 + h) kW exactly."""
    folder, rack = hand_run
    a = analyze_run(folder, AnalysisOptions(exports_dir=tmp_path))
    e = a.doc["exports"]
    fine_j = PUE * 3 * rack.sum() * 60.0
    q = e["site_15min_csv"]
    assert q["written"] and q["intervals"] == 96
    kwh = np.loadtxt(tmp_path / "site_900s.csv", delimiter=",", skiprows=1, usecols=4)
    assert kwh.size == 96
    # the CSV writer prints at least 6 significant digits; these kWh (4.5 (10 + h) / 4) need 5
    assert kwh.sum() * 3.6e6 == pytest.approx(fine_j, rel=1e-12)
    y = e["annual_8760h"]
    np.testing.assert_allclose(y["hourly_pattern_facility_w"], 4.5e3 * (10 + np.arange(24)),
                               rtol=1e-14)
    assert y["facility_energy_j"] == pytest.approx(365 * fine_j, rel=1e-12)
    assert y["daily_facility_energy_j"] == pytest.approx(fine_j, rel=1e-12)
    annual = np.loadtxt(tmp_path / "annual_8760h.csv", delimiter=",", skiprows=1,
                        usecols=(4, 5, 6))
    assert annual.shape == (8760, 3)
    assert annual[:, 2].sum() * 3.6e6 == pytest.approx(365 * fine_j, rel=1e-12)
    np.testing.assert_allclose(annual[:, 1], annual[:, 0] * PUE, rtol=1e-14)
    dss = (tmp_path / "loadshape_site_8760h.dss").read_text().splitlines()
    new = [ln for ln in dss if ln.startswith("New Loadshape.")]
    assert new == ["New Loadshape.distgen_f00dfeed_8760h npts=8760 sinterval=3600 "
                   "mult=(file=loadshape_site_8760h.csv)"]
    mult = np.loadtxt(tmp_path / "loadshape_site_8760h.csv")
    base_kw = e["opendss_8760h"]["base_kw"]
    assert base_kw == pytest.approx(4.5 * 33, rel=1e-14) and mult.max() == 1.0
    assert any(f"kW={base_kw:.3f}" in ln for ln in dss)
    assert mult.sum() * base_kw * 3.6e6 == pytest.approx(365 * fine_j, rel=1e-12)
    m15 = np.loadtxt(tmp_path / "loadshape_site_15min.csv")
    assert m15.size == 96
    assert m15.sum() * e["opendss_15min"]["base_kw"] * 1e3 * 900 == pytest.approx(fine_j,
                                                                                   rel=1e-12)


def test_annual_profile_of_a_short_run_is_skipped_with_the_reason(tmp_path):
    folder = tmp_path / "short"
    write_hand_run(folder, hours=4)
    a = analyze_run(folder, AnalysisOptions(exports_dir=tmp_path / "x"))
    assert "at least 24 h" in a.doc["exports"]["annual_8760h"]["skipped"]
    assert not (tmp_path / "x" / "annual_8760h.csv").exists()
    assert (tmp_path / "x" / "site_900s.csv").is_file()


def test_hourly_only_run_skips_the_15min_exports_but_keeps_the_annual_profile(tmp_path):
    """Site and racks at 3600 s only: no 15-minute view exists (skipped with the reason), the
    ramps below 1 h are null, and the 8760-h profile still comes from the 24 hourly means."""
    folder = tmp_path / "hourly"
    rack = write_hand_run(folder, res_s=3600.0)
    a = analyze_run(folder, AnalysisOptions(exports_dir=tmp_path / "x"))
    e = a.doc["exports"]
    assert "dividing 900 s" in e["site_15min_csv"]["skipped"]
    assert "opendss_15min" not in e
    assert e["annual_8760h"]["facility_energy_j"] == pytest.approx(
        365 * PUE * 3 * rack.sum() * 3600.0, rel=1e-12)
    site = a.doc["levels"]["site"]["facility"]
    assert site["ramp_up_max_w_per_15min"] is None and site["ramp_up_max_w_per_1h"] == 4500.0


def test_analyze_oversubscription_on_the_hand_made_run(hand_run):
    """Racks of 2 servers x 8 H100 (4 TP2 deployments of 1400 W nameplate each) + 1 kW
    non-GPU per server. TDP rack = 2 x (4 x 1400 + 1000) = 13.2 kW -> 600 kW / 13.2 = 45.
    Mean rack = 2 x (4 x mean_w + 1000) with the artifact's mean_w; LUT rack likewise with the
    busiest phase. Every rack peaks at 33 kW at 23:00 together, so N racks peak at 33N kW:
    18 racks (594 kW; 19 would be 627) -- drawn with replacement from 4 on (pool of 3)."""
    folder, _ = hand_run
    a = analyze_run(folder, AnalysisOptions(write_exports=False))
    o = a.doc["oversubscription"]
    assert (o["limit_w"], o["level"], o["unit"], o["percentile"]) == (600e3, "rows", "racks",
                                                                       95.0)
    r = o["by_serving"][H100]
    mean_rack = 2 * (4 * H100_ARTIFACT["baselines"]["mean_w"] + 1000.0)
    lut_rack = 2 * (4 * max(H100_ARTIFACT["baselines"]["lut_w"].values()) + 1000.0)
    assert r["unit_tdp_w"] == 13200.0 and r["units_tdp"] == 45
    assert r["unit_mean_baseline_w"] == pytest.approx(mean_rack, rel=1e-14)
    assert r["units_mean"] == math.floor(600e3 / mean_rack)
    assert r["units_lut"] == math.floor(600e3 / lut_rack)
    assert r["units_model"] == 18 and r["with_replacement_from"] == 4
    assert r["pool_units"] == 3 and r["gpus_per_unit"] == 16
    assert a.doc["levels"]["racks"]["coincidence"]["coincidence_factor"] == 1.0


def test_analyze_per_gpu_cap_at_rack_level(hand_run):
    """Only racks exist: each rack is capped at 2 servers x (8 x 1000 W + 1000 W) = 18 kW. The
    racks draw (10 + h) kW, above 18 kW from 09:00; the peak of the three racks falls from
    99 kW to 54 kW; energy is conserved (served + still deferred)."""
    folder, rack = hand_run
    a = analyze_run(folder, AnalysisOptions(write_exports=False,
                                            capping=CappingOptions(gpu_cap_w=1000.0)))
    c = a.doc["capping"]["per_gpu"]
    assert c["level"] == "racks" and c["entity_cap_w"]["max"] == 18000.0
    assert "share the headroom" in c["note"]
    assert c["level_sum_peak_before_w"] == 99e3 and c["level_sum_peak_after_w"] == 54e3
    assert c["energy_after_j"] + c["energy_still_deferred_j"] == pytest.approx(
        3 * rack.sum() * 60.0, rel=1e-12)
    # (10 + h) kW > 18 kW from 09:00 on and never below again: everything above stays deferred
    assert c["energy_served_back_j"] == 0.0


def test_analyze_demand_response_window(hand_run):
    """Facility 4.5 x (10 + h) kW; a 50 % cut 14:00-16:00 defers 0.5 x 4.5 x (24 + 25) =
    110.25 kWh. Deferred work comes back at up to the facility peak 148.5 kW, a headroom of
    4.5 x (23 - h) kW: 31.5 + 27 + 22.5 + 18 = 99 kWh in hours 16-19, then 13.5 kW in hour 20,
    so the last 11.25 kWh take exactly 50 minutes: the backlog is empty at 20:50, 290 min =
    17400 s after the window. Work drains slower than it arrived (31.5 < 54 kW), so delays
    grow: the longest is the last deferred minute's, 15:59 -> 20:49, also 290 min. All values
    are whole joules, so the comparisons are exact."""
    folder, _ = hand_run
    a = analyze_run(folder, AnalysisOptions(write_exports=False, capping=CappingOptions(
        dr_start="14:00", dr_duration_s=7200.0, dr_reduction_pct=50.0)))
    c = a.doc["capping"]["demand_response"]
    assert c["window_start_local"] == "2026-07-01T14:00:00" and c["window_s"] == 7200.0
    assert c["energy_deferred_j"] == pytest.approx(110.25 * 3.6e6, rel=1e-12)
    assert c["energy_still_deferred_j"] == 0.0
    assert c["drain_time_after_window_s"] == 17400.0
    assert c["max_delay_s"] == 17400.0
    assert c["rebound_peak_w"] == pytest.approx(4.5e3 * 33, rel=1e-14)
    assert c["window_peak_after_w"] == pytest.approx(0.5 * 4.5e3 * 25, rel=1e-14)
    assert c["peak_after_w"] == c["peak_before_w"] == pytest.approx(4.5e3 * 33, rel=1e-14)
    assert c["energy_after_j"] == pytest.approx(c["energy_before_j"], rel=1e-12)


@pytest.mark.parametrize("argv, words", [
    (["--dr-start", "25:00", "--dr-reduction-pct", "10"], ["--dr-start", "25:00"]),
    (["--dr-start", "2026-07-03T00:00", "--dr-cap-w", "1"], ["outside the run"]),
    (["--dr-start", "14:00"], ["exactly one of"]),
    (["--dr-reduction-pct", "10"], ["need --dr-start"]),
    (["--gpu-cap-w", "-5"], ["--gpu-cap-w"]),
    (["--limit-level", "rows", "--percentile", "0"], ["--percentile"]),
    (["--limit-resolution-s", "30"], ["--limit-resolution-s 30", "racks are at 60 s"]),
])
def test_analyze_bad_options_are_named(hand_run, capsys, argv, words):
    folder, _ = hand_run
    assert main(["analyze", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for w in words:
        assert w in err


# =============================================================================================
# refusing incomplete folders


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("distgen: error:"), captured.err
    return lines[0]


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_commands_refuse_folders_without_a_complete_manifest(tmp_path, capsys, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([command, str(empty)]) == 2
    assert "not a finished distgen run folder" in _one_error_line(capsys)
    running = tmp_path / "running"
    prepare_output_dir(running)
    assert (running / MARKER_NAME).is_file()
    assert main([command, str(running)]) == 2
    assert "incomplete" in _one_error_line(capsys)


def test_manifest_missing_a_key_or_a_file_is_named(tmp_path, capsys):
    folder = tmp_path / "run"
    write_hand_run(folder, hours=1)
    doc = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in doc.items()
                                                      if k != "grid"}))
    assert main(["analyze", str(folder)]) == 2
    assert "'grid'" in _one_error_line(capsys)
    (folder / "manifest.json").write_text(json.dumps(doc))
    (folder / "racks_60s.parquet").unlink()
    assert main(["analyze", str(folder)]) == 2
    line = _one_error_line(capsys)
    assert "racks_60s.parquet" in line and "missing" in line


# =============================================================================================
# a generated run, end to end through the CLI


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """2 rows (A100 TP1, H100 TP2) x 2 racks x 2 servers, 1 h, every level at 1 s."""
    from distgen.config import load_config
    from distgen.driver import generate

    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "duration_s=3600", "warmup_s=0", "facility.rows=2", "facility.racks_per_row=2",
        "facility.servers_per_rack=2", "shards=1", "traffic.site_rate_rps=40",
        "facility.row_serving=[qwen3-8b_A100_tp1,qwen3-30b-a3b_H100_tp2]",
        "output.site_resolutions_s=[1,60,900]", "output.racks_resolution_s=1",
        "output.servers_resolution_s=1", "output.rows_resolution_s=60"])
    manifest = generate(cfg, out)
    return out, manifest


def test_generated_run_energy_is_the_same_at_every_resolution(tiny_run):
    """Block means preserve energy: site 1 s = 60 s = 900 s (Parquet, float64: to rounding),
    and the 15-minute CSV's kWh sum to the same energy within the CSV's printed precision (at
    least 6 significant digits: each value within 5e-6 relative, so the sum too); the
    analysis's export check reports that difference."""
    out, _ = tiny_run
    run = RunOutput.open(out)
    energies = [run.site(r).facility_power_w.sum() * r for r in (1.0, 60.0, 900.0)]
    np.testing.assert_allclose(energies, energies[0], rtol=1e-12)
    csv = run.site_csv()
    assert csv.facility_energy_kwh.sum() * 3.6e6 == pytest.approx(energies[0], rel=5e-6)
    a = analyze_run(out, AnalysisOptions(write_exports=False))
    q = a.doc["exports"]["site_15min_csv"]
    assert not q["written"] and q["relative_difference"] < 5e-6
    assert q["fine_trace_facility_energy_j"] == pytest.approx(energies[0], rel=1e-12)
    # rack sums reproduce the site IT (the conservation the oversubscription pool relies on)
    racks = run.entities("racks")
    np.testing.assert_allclose(racks.power_w.sum(axis=0), run.site(1.0).it_power_w, rtol=1e-12)


def test_analyze_cli_prints_tables_and_writes_json(tiny_run, tmp_path, capsys):
    out, manifest = tiny_run
    js = tmp_path / "a.json"
    rc = main(["analyze", str(out), "--json", str(js), "--exports", str(tmp_path / "ex"),
               "--repetitions", "20", "--gpu-cap-w", "250"])
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("site facility", "load factor", "racks", "servers", "oversubscription",
                 "qwen3-8b_A100_tp1", "qwen3-30b-a3b_H100_tp2", "W per GPU"):
        assert word in text, word
    doc = json.loads(js.read_text())
    assert doc["format"] == "distgen.analysis"
    assert doc["run"]["config_hash"] == manifest["config_hash"]
    site = doc["levels"]["site"]["facility"]
    assert site["peak_w"] == pytest.approx(manifest["summary"]["site"]["1s"]["facility"]
                                           ["peak_w"], rel=1e-12)
    assert site["energy_j"] == pytest.approx(manifest["summary"]["site"]["1s"]["facility"]
                                             ["energy_j"], rel=1e-12)
    for key in ("ramp_up_max_w_per_1min", "ramp_down_max_w_per_15min", "demand_peak_15min_w",
                "load_factor", "p99_w"):
        assert key in site
    assert doc["levels"]["servers"]["entities"] == 8
    assert doc["capping"]["per_gpu"]["level"] == "servers"
    assert doc["oversubscription"]["resolution_s"] == 1.0
    assert (tmp_path / "ex" / "loadshape_site_15min.dss").is_file()
