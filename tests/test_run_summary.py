"""The figures planners read (manifest summary, sweep metrics), recomputed from the written files.

The 15-minute ramp, the P99, peak-to-average and energy are recomputed here from the Parquet
files with pyarrow and NumPy alone, by their definitions, and compared with what the manifest
and :func:`distgen.sweep.results.point_metrics` report. The workload summary is checked to
count only the output period: a run with a warm-up against the same simulation written from
its start.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from distgen.config import load_config
from distgen.driver import generate
from distgen.model.artifact import ModelLibrary
from distgen.sweep.results import point_metrics

QWEN = "qwen3-8b_A100_tp1"
#: 1 row x 2 racks x 4 servers x 8 GPUs at TP1: 64 deployments.
FLEET = ["facility.rows=1", "facility.racks_per_row=2", "facility.servers_per_rack=4",
         "facility.gpus_per_server=8", f"facility.row_serving=[{QWEN}]"]
#: No rate randomness beyond the arrivals: a flat day, no modulation, no bursts.
STEADY = ["traffic.modulation.cv=0", "traffic.bursts.kind=none"]


@pytest.fixture(scope="module")
def library() -> ModelLibrary:
    return ModelLibrary.load()


def column(path: Path, name: str) -> np.ndarray:
    return pq.read_table(path, columns=[name]).column(name).to_numpy()


def percentile_linear(x: np.ndarray, q: float) -> float:
    """The q-th percentile by linear interpolation between order statistics (Hyndman & Fan
    definition 7, the usual spreadsheet and NumPy default): position h = (n - 1) q / 100 in
    the sorted values, x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h])."""
    s = np.sort(x)
    h = (s.size - 1) * q / 100.0
    i = int(math.floor(h))
    return float(s[i] + (h - i) * (s[min(i + 1, s.size - 1)] - s[i]))


def test_percentile_linear_hand_case():
    # 1..5: P99 at h = 3.96 -> 4 + 0.96 = 4.96; P50 at h = 2 -> 3
    assert percentile_linear(np.array([5.0, 1.0, 3.0, 2.0, 4.0]), 99) == pytest.approx(4.96)
    assert percentile_linear(np.array([5.0, 1.0, 3.0, 2.0, 4.0]), 50) == 3.0


# =============================================================================================
# ramp, P99, peak-to-average: a site whose load falls through the run


#: One hour from 20:30 with the diurnal peak at 15:00 and trough/peak 0.05: the request rate
#: falls by about 6 % of its daily mean every quarter hour (steepest at 21:00), so every
#: 15-minute step of the site load is downward; an up-ramp-only ramp would miss all of them.
FALLING = [*FLEET, *STEADY, "start_time=2026-07-01T20:30:00", "duration_s=3600", "seed=2",
           "traffic.diurnal.peak_hour=15", "traffic.diurnal.trough_ratio=0.05",
           "traffic.site_rate_rps=40", "output.site_resolutions_s=[1,60,900]",
           "output.rows_resolution_s=null", "output.racks_resolution_s=null",
           "output.site_csv_resolution_s=null"]


@pytest.fixture(scope="module")
def falling(tmp_path_factory, library) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("falling") / "run"
    manifest = generate(load_config(None, FALLING), out, library=library)
    return out, manifest


def test_15_minute_ramp_is_the_largest_change_either_way(falling):
    """The ramp is max |P(q + 1) - P(q)| over consecutive 15-minute means of facility power.
    The quarter-hour means are recomputed from the 1 s file (900 samples each) and agree with
    the 900 s file; every change is a fall here, so the ramp is the largest fall."""
    out, manifest = falling
    per_second = column(out / "site_1s.parquet", "facility_power_w")
    quarter = per_second.reshape(-1, 900).mean(axis=1)
    np.testing.assert_allclose(column(out / "site_900s.parquet", "facility_power_w"), quarter,
                               rtol=1e-12)
    change = np.diff(quarter)
    assert change.size == 3 and np.all(change < 0), change   # the case is what it claims
    ramp = float(np.max(np.abs(change)))
    assert manifest["summary"]["max_15min_ramp_w"] == pytest.approx(ramp, rel=1e-9)
    assert point_metrics(out)["max_15min_ramp_w"] == pytest.approx(ramp, rel=1e-9)


@pytest.mark.parametrize("label, resolution_s", [("1s", 1.0), ("60s", 60.0), ("900s", 900.0)])
def test_site_statistics_match_the_files(falling, label, resolution_s):
    """Per site file: energy = sum of block means x block length [J], mean, peak, minimum and
    peak-to-average = peak / mean, for IT and facility power."""
    out, manifest = falling
    stats = manifest["summary"]["site"][label]
    assert stats["resolution_s"] == resolution_s
    for col, key in (("it_power_w", "it"), ("facility_power_w", "facility")):
        p = column(out / f"site_{label}.parquet", col)
        got = stats[key]
        assert got["energy_j"] == pytest.approx(p.sum() * resolution_s, rel=1e-12)
        assert got["mean_w"] == pytest.approx(p.mean(), rel=1e-12)
        assert got["peak_w"] == pytest.approx(p.max(), rel=1e-12)
        assert got["min_w"] == pytest.approx(p.min(), rel=1e-12)
        assert got["peak_to_average"] == pytest.approx(p.max() / p.mean(), rel=1e-12)


def test_sweep_metrics_match_the_files(falling):
    """The sweep's row for a run: P99 of facility power at 1 s (linear interpolation), and
    peak, mean, peak-to-average and energy at 1 s. The case has a P95 well below the P99
    (by about 1 % of the load), so a P95 reported as P99 fails."""
    out, _ = falling
    p = column(out / "site_1s.parquet", "facility_power_w")
    it = column(out / "site_1s.parquet", "it_power_w")
    p99, p95 = percentile_linear(p, 99), percentile_linear(p, 95)
    assert p99 - p95 > 100.0   # W: the case separates the two
    m = point_metrics(out)
    assert m["p99_facility_w"] == pytest.approx(p99, rel=1e-12)
    assert m["peak_facility_w"] == pytest.approx(p.max(), rel=1e-12)
    assert m["mean_facility_w"] == pytest.approx(p.mean(), rel=1e-12)
    assert m["peak_to_average"] == pytest.approx(p.max() / p.mean(), rel=1e-12)
    assert m["energy_facility_j"] == pytest.approx(p.sum(), rel=1e-12)
    assert m["peak_it_w"] == pytest.approx(it.max(), rel=1e-12)
    assert m["mean_it_w"] == pytest.approx(it.mean(), rel=1e-12)
    assert m["energy_it_j"] == pytest.approx(it.sum(), rel=1e-12)


# =============================================================================================
# the workload summary counts the output period only

#: A constant request rate, so that a warm-up is exactly the first part of a longer run (the
#: rate of a step does not depend on whether the step is warm-up or output).
CONSTANT = [*FLEET, *STEADY, "traffic.diurnal.trough_ratio=1", "traffic.site_rate_rps=32",
            "seed=9", "output.site_resolutions_s=[1,60]", "output.rows_resolution_s=null",
            "output.racks_resolution_s=null", "output.site_csv_resolution_s=null"]
WARMUP_S, OUTPUT_S = 60, 60


def _workload(tmp_path, library, name, warmup_s, duration_s) -> tuple[Path, dict]:
    out = tmp_path / name
    m = generate(load_config(None, [*CONSTANT, f"warmup_s={warmup_s}",
                                    f"duration_s={duration_s}"]), out, library=library)
    return out, m["summary"]["workload"]


def test_warm_up_work_is_simulated_but_not_counted(tmp_path, library):
    """Run A: 60 s warm-up, then 60 s written. Run B: the same 120 s written from the start;
    run C: B's first 60 s. With a constant rate the three are one simulation (random numbers
    are keyed by the global step), so A's output is B's second minute, bit for bit, and A's
    workload summary must be B's minus C's: requests arrived and running request-steps
    exactly, prompt and decode tokens up to the summary's rounding to whole tokens per
    deployment (at most 1 token per deployment, 64 here). The warm-up minute carries
    thousands of tokens, so counting it would be far outside that."""
    a_dir, a = _workload(tmp_path, library, "a", WARMUP_S, OUTPUT_S)
    b_dir, b = _workload(tmp_path, library, "b", 0, WARMUP_S + OUTPUT_S)
    _, c = _workload(tmp_path, library, "c", 0, WARMUP_S)
    # the premise: the warm-up is the same simulation, only not written
    for col in ("it_power_w", "facility_power_w"):
        np.testing.assert_array_equal(column(a_dir / "site_1s.parquet", col),
                                      column(b_dir / "site_1s.parquet", col)[WARMUP_S:])
    n_deployments = 64
    assert a["deployment_steps"] == n_deployments * OUTPUT_S * 4
    assert a["requests_arrived"] == b["requests_arrived"] - c["requests_arrived"]
    assert a["running_request_steps"] == b["running_request_steps"] - c["running_request_steps"]
    for key in ("prefill_tokens", "decode_tokens"):
        assert c[key] > 20 * n_deployments, (key, c[key])   # the warm-up did real work
        assert abs(a[key] - (b[key] - c[key])) <= n_deployments, (key, a[key], b[key], c[key])
    assert a["mean_running_per_deployment"] == pytest.approx(
        a["running_request_steps"] / a["deployment_steps"])
