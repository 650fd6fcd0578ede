"""Sweeps (planning, a tiny grid on Ray, resume) and ``distgen bench``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from distgen.errors import ConfigError, DistgenError
from distgen.sweep import (METRIC_COLUMNS, load_sweep, parse_sweep, point_config, point_id,
                           sweep_points, table_columns)

ROOT = Path(__file__).resolve().parents[1]

#: A 64-GPU facility for 30 minutes: a point takes well under a second.
TINY_BASE = {
    "seed": 3, "duration_s": 1800, "start_time": "2026-07-01T13:00:00", "shards": 2,
    "facility": {"rows": 2, "racks_per_row": 2, "servers_per_rack": 2,
                 "row_serving": ["qwen3-8b_A100_tp1"]},
    "traffic": {"site_rate_rps": 60},
    "output": {"site_resolutions_s": [60, 900], "rows_resolution_s": 60,
               "racks_resolution_s": None, "site_csv_resolution_s": None},
}


def tiny_sweep(**extra):
    return parse_sweep({"base": TINY_BASE, "grid": {"traffic.site_rate_rps": [40, 80]},
                        "concurrency": 2, **extra})


# ------------------------------------------------------------------ planning (no Ray)

def test_points_grid_samples_and_ids():
    spec = parse_sweep({
        "base": TINY_BASE,
        "grid": {"traffic.site_rate_rps": [40, 80], "facility.row_serving":
                 [["qwen3-8b_A100_tp1"], ["qwen3-14b_A100_tp1"]]},
        "samples": {"n": 3, "seed": 5, "keys": {
            "traffic.modulation.cv": {"uniform": [0.1, 0.4]},
            "traffic.arrivals": {"choice": ["poisson", "gamma"]}}}})
    points = sweep_points(spec)
    assert len(points) == 2 * 2 * 3
    assert len({p.id for p in points}) == len(points)
    assert [p.id for p in points] == [p.id for p in sweep_points(spec)]  # stable
    for p in points:
        assert p.id == point_id(p.values) and len(p.id) == 10
        assert 0.1 <= p.values["traffic.modulation.cv"] <= 0.4
        assert p.values["traffic.arrivals"] in ("poisson", "gamma")
    # the same samples are crossed with every grid combination
    draws = {(p.values["traffic.modulation.cv"], p.values["traffic.arrivals"]) for p in points}
    assert len(draws) == 3
    cfg = point_config(spec, points[-1])
    assert cfg.traffic.site_rate_rps == 80.0
    assert cfg.facility.row_serving == ("qwen3-14b_A100_tp1",)
    assert 1.0 in cfg.output.site_resolutions_s  # added for the 1 s P99
    assert table_columns(spec)[:5] == ["point_id", "traffic.site_rate_rps",
                                       "facility.row_serving", "traffic.modulation.cv",
                                       "traffic.arrivals"]


@pytest.mark.parametrize("doc, key", [
    ({"grid": {"seed": [1]}, "colour": 1}, "colour"),
    ({"grid": {"seed": []}}, "grid.seed"),
    ({}, "grid"),
    ({"samples": {"n": 2, "keys": {"seed": {"normal": [0, 1]}}}}, "samples.keys.seed"),
    ({"samples": {"n": 0, "keys": {"seed": {"choice": [1]}}}}, "samples.n"),
    ({"grid": {"seed": [1]}, "concurrency": 0}, "concurrency"),
])
def test_bad_sweep_files_name_the_key(doc, key):
    with pytest.raises(ConfigError) as info:
        parse_sweep({"base": TINY_BASE, **doc})
    assert info.value.key == key


def test_bad_point_value_names_the_point():
    spec = parse_sweep({"base": TINY_BASE, "grid": {"facility.rows": [2, -1]}})
    bad = sweep_points(spec)[1]
    with pytest.raises(ConfigError, match=bad.id):
        point_config(spec, bad)


def test_demo_sweep_file_plans():
    spec = load_sweep(ROOT / "configs" / "sweep-demo.yaml")
    points = sweep_points(spec)
    assert len(points) == 8 and spec.concurrency == 2
    for p in points:
        point_config(spec, p)


def test_local_sweep_and_resume(tmp_path):
    from distgen.sweep import run_sweep

    spec = tiny_sweep()
    rows, files = run_sweep(spec, tmp_path / "s", executor="local")
    assert [f.name for f in files] == ["sweep.parquet", "sweep.csv"]
    assert len(rows) == 2 and all(r["wall_s"] is not None for r in rows)
    rows2, _ = run_sweep(spec, tmp_path / "s", executor="local", resume=True)
    assert all(r["wall_s"] is None for r in rows2)  # nothing recomputed
    for a, b in zip(rows, rows2):
        assert {k: a[k] for k in METRIC_COLUMNS} == {k: b[k] for k in METRIC_COLUMNS}
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DistgenError, match="not empty"):
        run_sweep(spec, tmp_path / "foreign", executor="local")


def test_bench_local_prints_table(capsys):
    from distgen.cli import main

    assert main(["bench", "--executor", "local", "--seconds", "60", "--no-warmup"]) == 0
    out = capsys.readouterr().out
    assert "512 GPUs" in out and "M dep-steps/s" in out and "total" in out
    assert "wall time" in out


# ------------------------------------------------------------------ on Ray

@pytest.fixture(scope="module")
def local_ray():
    import ray  # a dependency of distgen: its absence is an error, not a skip

    from distgen.distributed import connect

    if ray.is_initialized():
        ray.shutdown()
    info = connect(None, num_cpus=2)
    yield info
    ray.shutdown()


def _read_table(folder: Path):
    import pyarrow.parquet as pq
    return pq.read_table(folder / "sweep.parquet")


@pytest.mark.ray
def test_ray_sweep_tiny_grid_and_resume(local_ray, tmp_path, capsys):
    from distgen.cli import main
    from distgen.sweep import run_sweep

    spec = tiny_sweep()
    out = tmp_path / "sweep"
    rows, files = run_sweep(spec, out, executor="ray")
    table = _read_table(out)
    assert table.column_names == table_columns(spec)
    assert table.num_rows == 2
    assert table.column("traffic.site_rate_rps").to_pylist() == [40, 80]
    ids = table.column("point_id").to_pylist()
    assert ids == [p.id for p in sweep_points(spec)]
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == table_columns(spec) and len(csv_lines) == 3
    for r in rows:
        assert r["energy_facility_j"] > r["energy_it_j"] > 0
        assert r["mean_facility_w"] <= r["p99_facility_w"] <= r["peak_facility_w"]
        assert r["peak_to_average"] == pytest.approx(r["peak_facility_w"] / r["mean_facility_w"])
        assert math.isfinite(r["max_15min_ramp_w"]) and r["max_15min_ramp_w"] >= 0
        assert (out / r["path"] / "manifest.json").is_file()
        assert (out / r["path"] / "site_1s.parquet").is_file()
    # more traffic, more energy
    assert rows[1]["energy_it_j"] > rows[0]["energy_it_j"]

    # the same points run locally give the same numbers
    local_rows, _ = run_sweep(spec, tmp_path / "local", executor="local")
    for a, b in zip(rows, local_rows):
        assert {k: a[k] for k in METRIC_COLUMNS} == {k: b[k] for k in METRIC_COLUMNS}

    # resume: finished points are kept, not recomputed; a removed point is redone
    stamps = {i: (out / "points" / i / "manifest.json").stat().st_mtime_ns for i in ids}
    import shutil
    shutil.rmtree(out / "points" / ids[1])
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(json.dumps({"base": TINY_BASE,
                                      "grid": {"traffic.site_rate_rps": [40, 80]},
                                      "concurrency": 2}))
    assert main(["sweep", str(sweep_file), "--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "1 point(s) run, 1 kept" in captured.err
    assert ids[0] in captured.out and ids[1] in captured.out
    assert (out / "points" / ids[0] / "manifest.json").stat().st_mtime_ns == stamps[ids[0]]
    resumed = _read_table(out)
    assert resumed.column("point_id").to_pylist() == ids
    np.testing.assert_array_equal(resumed.column("energy_it_j").to_numpy(),
                                  table.column("energy_it_j").to_numpy())


@pytest.mark.ray
def test_ray_bench_prints_table(local_ray, capsys):
    from distgen.cli import main

    assert main(["bench", "--executor", "ray", "--seconds", "60"]) == 0
    out = capsys.readouterr().out
    assert "executor ray" in out and "M dep-steps/s" in out
    assert "total (shard phase wall)" in out and "peak RSS MiB" in out
