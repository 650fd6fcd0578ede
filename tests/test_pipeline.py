"""End-to-end generation with the local driver (no Ray): determinism under sharding and
chunking, conservation at every level, energy across resolutions, replay with routing, and
output-folder safety. Tiny fleets and short runs; outputs go to tmp_path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from distgen.config import load_config
from distgen.driver import generate
from distgen.errors import DistgenError
from distgen.io.series import read_series, read_series_metadata
from distgen.model.artifact import ModelLibrary

QWEN = "qwen3-8b_A100_tp1"
QWEN30 = "qwen3-30b-a3b_H100_tp2"
TRACE = Path(__file__).parent / "data" / "workloads" / "AzureLLMInferenceTrace_code_prefix38982.csv"

# 2 rows x 3 racks x 2 servers x 8 GPUs at TP1 = 96 deployments
FLEET = ["facility.rows=2", "facility.racks_per_row=3", "facility.servers_per_rack=2",
         "facility.gpus_per_server=8"]
SMALL = FLEET + [
    "seed=11", "duration_s=120", "warmup_s=30", "traffic.site_rate_rps=150",
    "traffic.modulation.interval_s=30", "traffic.modulation.correlation_time_s=60",
    "traffic.modulation.rho_rack=0.1", "traffic.bursts.kind=mmpp",
    "traffic.bursts.mean_burst_s=20", "traffic.bursts.mean_calm_s=40",
    "output.site_resolutions_s=[1,60]", "output.rows_resolution_s=1",
    "output.racks_resolution_s=1", "output.site_csv_resolution_s=null",
    "facility.non_gpu.idle_w=700", "facility.non_gpu.activity_w=300",
]


def config(*overrides, base=SMALL):
    return load_config(None, list(base) + list(overrides))


@pytest.fixture(scope="module")
def library():
    return ModelLibrary.load()


def run(cfg, out: Path, **kw) -> dict:
    return generate(cfg, out, **kw)


TABLES = ["entities.parquet", "row_stats.parquet", "shards.parquet"]  # beside the series


def parquet_files(out: Path) -> list[str]:
    """The power series files of a run (not its entity and shard tables)."""
    return sorted(p.name for p in out.glob("*.parquet") if p.name not in TABLES)


def read_all(out: Path) -> dict[str, dict[str, np.ndarray]]:
    return {name: read_series(out / name)[0] for name in parquet_files(out)}


def entity_matrix(cols: dict, id_col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long format -> (time_s (T,), ids (E,), power_w (T, E))."""
    ids = np.unique(cols[id_col])
    n_t = cols["time_s"].size // ids.size
    t = cols["time_s"].reshape(n_t, ids.size)
    e = cols[id_col].reshape(n_t, ids.size)
    assert np.all(e == ids[None, :]) and np.all(t == t[:, :1])
    return t[:, 0], ids, cols["power_w"].reshape(n_t, ids.size)


def to_mw(power_w: np.ndarray, factor: int) -> np.ndarray:
    """Block means [W] at ``factor`` base steps back to the exact integer block sums [mW]."""
    x = power_w * factor * 1000.0
    out = np.rint(x)
    assert np.abs(x - out).max() < 1e-3   # they are integers up to float rounding
    return out.astype(np.int64)


def summary_without_timing(manifest: dict) -> dict:
    """The manifest summary: per-shard facts (wall times, cuts) live in shards.parquet."""
    s = json.loads(json.dumps(manifest["summary"]))
    assert "shards" not in s and s["shards_table"] == "shards.parquet"
    return s


def shard_cuts(out: Path) -> list[tuple[int, int]]:
    from distgen.io.table import read_table

    cols, _ = read_table(out / "shards.parquet")
    return list(zip(cols["rack_start"], cols["rack_stop"]))


def assert_summaries_equal(a: dict, b: dict):
    """Every statistic comes from integer sums (milliwatts, whole tokens, request counts): the
    summaries are identical, not merely close."""
    assert a == b


# =============================================================================================
# determinism


@pytest.fixture(scope="module")
def by_shards(tmp_path_factory, library):
    """The SMALL run with 1, 2, 3 and 5 shards (3 and 5 cut inside rows), and 1 shard again."""
    out = {}
    for key, shards in (("1", 1), ("2", 2), ("3", 3), ("5", 5), ("1b", 1)):
        d = tmp_path_factory.mktemp(f"shards{key}") / "out"
        manifest = run(config(f"shards={shards}"), d, library=library)
        out[key] = (d, manifest)
    return out


def test_shard_plans_differ(by_shards):
    cuts = {k: shard_cuts(d) for k, (d, _) in by_shards.items()}
    assert cuts["1"] == [(0, 6)]
    assert cuts["2"] == [(0, 3), (3, 6)]
    assert len(cuts["3"]) == 3 and (0, 2) in cuts["3"]        # cut inside row 0
    assert len(cuts["5"]) == 5


@pytest.mark.parametrize("key", ["2", "3", "5", "1b"])
def test_same_output_for_any_shard_count(by_shards, key):
    ref_dir, ref_manifest = by_shards["1"]
    d, manifest = by_shards[key]
    assert parquet_files(d) == parquet_files(ref_dir) == [
        "racks_1s.parquet", "rows_1s.parquet", "site_1s.parquet", "site_60s.parquet"]
    ref, got = read_all(ref_dir), read_all(d)
    for name in ref:
        assert ref[name].keys() == got[name].keys()
        for col in ref[name]:
            np.testing.assert_array_equal(got[name][col], ref[name][col], err_msg=f"{name}:{col}")
    assert_summaries_equal(summary_without_timing(manifest), summary_without_timing(ref_manifest))
    assert manifest["config_hash"] != ref_manifest["config_hash"] or key == "1b"
    # files are byte-identical too (sha256 in the manifest), but for the shard table, which
    # records each run's own cuts and wall times
    digests = lambda m: {f["path"]: f.get("sha256") for f in m["files"]  # noqa: E731
                         if f["path"] != "shards.parquet"}
    assert digests(manifest) == digests(ref_manifest)
    assert "entities.parquet" in digests(manifest)


def test_different_seed_differs(by_shards, tmp_path, library):
    ref_dir, _ = by_shards["1"]
    run(config("seed=12"), tmp_path / "o", library=library)
    a = read_series(ref_dir / "site_1s.parquet")[0]["it_power_w"]
    b = read_series(tmp_path / "o" / "site_1s.parquet")[0]["it_power_w"]
    assert not np.array_equal(a, b)


def test_chunk_length_does_not_change_output(by_shards, tmp_path, library):
    """Memory independence: streaming in chunks of 7.25 s (29 steps: not a multiple of any
    output resolution) gives the same bits as one chunk for the whole run."""
    ref_dir, ref_manifest = by_shards["1"]
    m = run(config("chunk_s=7.25"), tmp_path / "o", library=library)
    ref, got = read_all(ref_dir), read_all(tmp_path / "o")
    for name in ref:
        for col in ref[name]:
            np.testing.assert_array_equal(got[name][col], ref[name][col], err_msg=f"{name}:{col}")
    assert_summaries_equal(summary_without_timing(m), summary_without_timing(ref_manifest))


# =============================================================================================
# conservation


def test_conservation_site_rows_racks(by_shards):
    d, manifest = by_shards["3"]
    site = read_series(d / "site_1s.parquet")[0]
    _, row_ids, rows_w = entity_matrix(read_series(d / "rows_1s.parquet")[0], "row_id")
    _, rack_ids, racks_w = entity_matrix(read_series(d / "racks_1s.parquet")[0], "rack_id")
    f = 4                                           # 1 s = 4 steps
    rows, racks, it = to_mw(rows_w, f), to_mw(racks_w, f), to_mw(site["it_power_w"], f)
    assert list(row_ids) == [0, 1] and list(rack_ids) == list(range(6))
    for r in row_ids:                               # racks of row r: 3r .. 3r+2
        np.testing.assert_array_equal(racks[:, rack_ids // 3 == r].sum(axis=1), rows[:, r])
    np.testing.assert_array_equal(rows.sum(axis=1), it)
    np.testing.assert_allclose(site["facility_power_w"], site["it_power_w"] * 1.3, rtol=1e-12)
    # physically plausible: 12 servers of 8 A100s at 82-400 W each plus 700-1000 W non-GPU
    assert 12 * (8 * 60 + 700) < it.min() / f / 1000 and it.max() / f / 1000 < 12 * (8 * 520 + 1000)


def test_conservation_servers_and_deployments(tmp_path, library):
    """servers = sum of their deployments + non-GPU power (idle_w + activity_w x clipped GPU
    activity, per 0.25 s step); racks = sum of servers. Checked at 0.25 s with a mixed-TP site."""
    cfg = config("duration_s=30", "warmup_s=5", f"facility.row_serving=[{QWEN},{QWEN30}]",
                 "output.site_resolutions_s=[0.25,1]", "output.rows_resolution_s=0.25",
                 "output.racks_resolution_s=0.25", "output.servers_resolution_s=0.25",
                 "output.deployments_resolution_s=0.25", "traffic.modulation.interval_s=5",
                 "shards=4")
    out = tmp_path / "o"
    m = run(cfg, out, library=library)
    _, dep_ids, dep_w = entity_matrix(read_series(out / "deployments_0.25s.parquet")[0],
                                      "deployment_id")
    _, srv_ids, srv_w = entity_matrix(read_series(out / "servers_0.25s.parquet")[0], "server_id")
    _, rack_ids, rack_w = entity_matrix(read_series(out / "racks_0.25s.parquet")[0], "rack_id")
    dep, srv, rack = to_mw(dep_w, 1), to_mw(srv_w, 1), to_mw(rack_w, 1)
    # row 0: 6 servers x 8 TP1 deployments; row 1: 6 servers x 4 TP2 deployments
    assert dep_ids.size == 6 * 8 + 6 * 4 and srv_ids.size == 12
    assert m["topology"]["deployments"] == 72
    server_of = dep_ids // 8                        # deployment id = server * 8 + first GPU
    assert np.all(np.isin(dep_ids[server_of >= 6] % 8, [0, 2, 4, 6]))
    gpu = np.zeros_like(srv)
    np.add.at(gpu.T, server_of, dep.T)
    models = [library[QWEN]] * 6 + [library[QWEN30]] * 6
    per_server = [8, 8, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4]
    idle = np.array([n * mo.idle_w for n, mo in zip(per_server, models)])
    tdp = np.array([n * mo.tdp_w for n, mo in zip(per_server, models)])
    activity = np.clip((gpu / 1000.0 - idle) / (tdp - idle), 0.0, 1.0)
    non_gpu = np.rint((700.0 + 300.0 * activity) * 1000.0).astype(np.int64)
    assert np.abs(srv - gpu - non_gpu).max() <= 1       # 1 mW: rounding of the activity share
    assert 700_000 <= (srv - gpu).min() and (srv - gpu).max() <= 1_000_000
    racks_from_servers = np.zeros_like(rack)
    np.add.at(racks_from_servers.T, srv_ids // 2, srv.T)
    np.testing.assert_array_equal(racks_from_servers, rack)
    site = read_series(out / "site_0.25s.parquet")[0]
    np.testing.assert_array_equal(to_mw(site["it_power_w"], 1), rack.sum(axis=1))
    # TP2 deployments draw the power of two GPUs (qwen3-30b H100 idle state ~237 W per pair)
    tp2 = server_of >= 6
    assert dep[:, tp2].mean() > dep[:, ~tp2].mean()


def test_hourly_pue(tmp_path, library):
    """Facility = IT x PUE of the hour of day (site local), per block; the run crosses 06:00."""
    pue = [1.1 + 0.01 * h for h in range(24)]
    cfg = config("start_time=2026-07-01T05:59:00",
                 f"facility.pue_hourly=[{','.join(map(str, pue))}]")
    out = tmp_path / "o"
    run(cfg, out, library=library)
    s1 = read_series(out / "site_1s.parquet")[0]
    hour = np.where(s1["time_s"] < 60, 5, 6)
    np.testing.assert_allclose(s1["facility_power_w"], s1["it_power_w"] * np.array(pue)[hour],
                               rtol=1e-12)
    s60 = read_series(out / "site_60s.parquet")[0]
    np.testing.assert_allclose(s60["facility_power_w"], s60["it_power_w"] * [pue[5], pue[6]],
                               rtol=1e-12)


def test_energy_same_at_every_resolution(tmp_path, library):
    cfg = config("duration_s=900", "warmup_s=0", "output.site_resolutions_s=[1,60,900]",
                 "output.rows_resolution_s=60", "output.racks_resolution_s=null",
                 "output.site_csv_resolution_s=900", "traffic.site_rate_rps=60")
    out = tmp_path / "o"
    m = run(cfg, out, library=library)
    energy = {}
    for res in (1, 60, 900):
        cols = read_series(out / f"site_{res}s.parquet")[0]
        assert cols["time_s"].size == 900 // res
        energy[res] = cols["it_power_w"].sum() * res
        fac = cols["facility_power_w"].sum() * res
        assert fac == pytest.approx(1.3 * energy[res], rel=1e-12)
    rows = read_series(out / "rows_60s.parquet")[0]
    e_rows = rows["power_w"].sum() * 60
    for res in (60, 900):
        assert energy[res] == pytest.approx(energy[1], rel=1e-9)
    assert e_rows == pytest.approx(energy[1], rel=1e-9)
    assert m["summary"]["site"]["900s"]["it"]["energy_j"] == pytest.approx(energy[1], rel=1e-9)
    assert m["summary"]["rows"]["energy_j"] == pytest.approx(energy[1], rel=1e-9)
    # the planners' CSV at 900 s (kW / kWh) carries the same energy
    import csv
    with open(out / "site_900s.csv") as fh:
        rows_csv = list(csv.DictReader(fh))
    assert len(rows_csv) == 1
    # (printed with 6 significant digits: a relative rounding of at most 5e-6)
    assert float(rows_csv[0]["it_power_kw"]) * 1000 * 900 == pytest.approx(energy[1], rel=5e-6)
    assert float(rows_csv[0]["facility_energy_kwh"]) * 3.6e6 == pytest.approx(1.3 * energy[1],
                                                                            rel=5e-6)


# =============================================================================================
# workload summary


STEADY = ["traffic.diurnal.trough_ratio=1", "traffic.modulation.cv=0", "traffic.bursts.kind=none",
          "traffic.site_rate_rps=60", "duration_s=300"]


def test_summary_counts_requests_of_the_output_period(tmp_path, library):
    """Flat traffic of 60 req/s for 300 s: about 18000 requests (Poisson sd 134: tolerance 4% ~
    5 sd), the same with and without warm-up; the mean running count per deployment is a
    steady-state property, so it does not depend on the warm-up length either (10%: its
    run-to-run noise over 96 deployments x 1200 steps is ~1%).

    Regression: warm-up requests and running request-steps are not counted (counting them
    would double `requests_arrived` and `mean_running_per_deployment` here, with warmup_s =
    duration_s). This test does not look at tokens; the exact output-period accounting,
    tokens included, is test_run_summary.py::test_warm_up_work_is_simulated_but_not_counted."""
    m0 = run(config(*STEADY, "warmup_s=0"), tmp_path / "a", library=library)
    m1 = run(config(*STEADY, "warmup_s=300"), tmp_path / "b", library=library)
    w0, w1 = m0["summary"]["workload"], m1["summary"]["workload"]
    assert w0["requests_arrived"] == pytest.approx(60 * 300, rel=0.04)
    assert w1["requests_arrived"] == pytest.approx(60 * 300, rel=0.04)
    assert w1["mean_running_per_deployment"] == pytest.approx(w0["mean_running_per_deployment"],
                                                              rel=0.10)


# =============================================================================================
# replay, heterogeneous rows, routing


@pytest.mark.parametrize("routing", ["random", "round_robin", "least_loaded"])
def test_replay_heterogeneous_rows(tmp_path, library, routing):
    from distgen.io.trace import read_request_trace
    from distgen.workload.routing import expand_trace

    replay = ["traffic.mode=replay", f"traffic.replay.path={TRACE}",
              f"traffic.replay.routing={routing}", "duration_s=240", "warmup_s=10",
              f"facility.row_serving=[{QWEN},{QWEN30}]", "output.rows_resolution_s=60",
              "output.racks_resolution_s=null", "output.site_resolutions_s=[1,60]"]
    cfg = config(*replay)
    a = run(cfg, tmp_path / "a", library=library)
    trace = read_request_trace(TRACE)
    expected = expand_trace(trace.arrival_s, trace.input_tokens, trace.output_tokens,
                            cfg.traffic.replay, cfg.duration_s, cfg.seed)[0].size
    assert expected > 300                                  # the trace has ~1.9 req/s
    assert a["summary"]["workload"]["requests_arrived"] == expected
    assert a["summary"]["workload"]["requests_dropped"] == 0
    assert a["topology"]["row_serving"] == [QWEN, QWEN30]
    # deterministic, and the same with 3 shards (cut inside a row)
    run(config(*replay, "shards=3"), tmp_path / "b", library=library)
    for name in parquet_files(tmp_path / "a"):
        x, y = read_series(tmp_path / "a" / name)[0], read_series(tmp_path / "b" / name)[0]
        for col in x:
            np.testing.assert_array_equal(x[col], y[col], err_msg=f"{name}:{col}")
    # the rows differ: 48 qwen3-8b A100 deployments vs 24 qwen3-30b H100 TP2 pairs
    _, _, rows = entity_matrix(read_series(tmp_path / "a" / "rows_60s.parquet")[0], "row_id")
    assert not np.allclose(rows[:, 0], rows[:, 1], rtol=0.01)


# =============================================================================================
# output folder safety


def test_foreign_folder_refused_and_untouched(tmp_path, library):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(DistgenError) as exc:
        run(config(), out, library=library)
    assert "overwrite" in str(exc.value)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]
    assert (out / "thesis.txt").read_text() == "precious"


def test_overwrite_keeps_user_files(tmp_path, library):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    run(config(), out, library=library, overwrite=True)
    assert (out / "thesis.txt").read_text() == "precious"
    assert (out / "manifest.json").is_file()
    # a later distgen run into it is "ours" now and replaces only distgen's files
    run(config("seed=3"), out, library=library)
    assert (out / "thesis.txt").read_text() == "precious"


def test_second_run_replaces_previous_output(tmp_path, library):
    out = tmp_path / "o"
    first = run(config(), out, library=library)
    assert "racks_1s.parquet" in parquet_files(out)
    second = run(config("seed=5", "output.racks_resolution_s=null"), out, library=library)
    assert parquet_files(out) == ["rows_1s.parquet", "site_1s.parquet", "site_60s.parquet"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["config_hash"] == second["config_hash"]
    assert manifest["config_hash"] != first["config_hash"]
    tables = [t for t in TABLES if (out / t).exists()]
    assert sorted(f["path"] for f in manifest["files"]) == sorted(parquet_files(out) + tables)
    assert not (out / ".parts").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json"] + tables
                                                           + parquet_files(out))


def test_manifest_written_last_and_interrupted_run_is_incomplete(tmp_path, library):
    from distgen.distributed import LocalExecutor
    from distgen.io.outdir import is_complete, is_ours

    out = tmp_path / "o"

    class CrashAfterFirstShard(LocalExecutor):
        def map(self, job, items, **kw):
            super().map(job, list(items)[:1], **kw)
            raise RuntimeError("node lost")

    with pytest.raises(RuntimeError):
        run(config("shards=2"), out, library=library, executor=CrashAfterFirstShard())
    assert not (out / "manifest.json").exists()
    assert not is_complete(out) and is_ours(out)
    assert parquet_files(out) == []
    # resume finishes only the missing shard and gives the same result as a clean run
    m = run(config("shards=2"), out, library=library, resume=True)
    assert m["execution"]["resumed_shards"] == 1
    assert is_complete(out)
    clean = tmp_path / "clean"
    run(config("shards=2"), clean, library=library)
    for name in parquet_files(clean):
        x, y = read_series(clean / name)[0], read_series(out / name)[0]
        for col in x:
            np.testing.assert_array_equal(x[col], y[col])
    # the manifest is the last file written
    manifest_mtime = (out / "manifest.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= manifest_mtime for p in out.glob("*.parquet"))


def test_series_metadata_carries_units_and_grid(by_shards):
    d, manifest = by_shards["1"]
    meta = read_series_metadata(d / "site_1s.parquet")
    assert meta["units"]["it_power_w"] == "W" and meta["units"]["time_s"] == "s"
    assert meta["grid"]["interval_s"] == 0.25
    assert meta["grid"]["n_steps"] == manifest["grid"]["n_steps"] == 480
    assert meta["resolution_s"] == 1.0
    rmeta = read_series_metadata(d / "racks_1s.parquet")
    assert rmeta["entity_column"] == "rack_id" and rmeta["units"]["power_w"] == "W"
    assert math.isclose(manifest["grid"]["duration_s"], 120.0)
