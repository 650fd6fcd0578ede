"""Outputs planners can use (issue #8 part 4, issue #13 item 5): UTC timestamps beside
``time_s``, the entity table, the shard table that keeps the manifest small, the summary's
resolutions and units, the serving mix as a pattern or shares, and a shortened run of the
1M-GPU preset."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from distgen.cli import format_summary
from distgen.config import load_config
from distgen.driver import generate
from distgen.io.entities import read_entity_table
from distgen.io.series import read_series, read_series_metadata
from distgen.io.table import read_table
from distgen.model.artifact import ModelLibrary
from distgen.pipeline import plan_run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
PRESET = ROOT / "configs" / "hyperscale-1m.yaml"
QWEN, QWEN30 = "qwen3-8b_A100_tp1", "qwen3-30b-a3b_H100_tp2"
SMALL = ["facility.racks_per_row=2", "facility.servers_per_rack=2", "duration_s=120",
         "warmup_s=10", "shards=2", "output.site_resolutions_s=[1,60]",
         "output.rows_resolution_s=60", "output.racks_resolution_s=60",
         "output.servers_resolution_s=60", "output.site_csv_resolution_s=60"]


@pytest.fixture(scope="module")
def library():
    return ModelLibrary.load()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, library):
    """The demo's 3 rows (2 x qwen3-8b TP1, 1 x qwen3-30b TP2) with a UTC offset of +02:00."""
    out = tmp_path_factory.mktemp("demo") / "out"
    cfg = load_config(DEMO, [*SMALL, "start_time='2026-07-01T09:00:00+02:00'"])
    return out, generate(cfg, out, library=library)


# --------------------------------------------------------------------------- time

def test_parquet_has_utc_timestamps_of_interval_starts(demo_run):
    out, manifest = demo_run
    start_utc = datetime(2026, 7, 1, 7, 0, tzinfo=timezone.utc)  # 09:00 at +02:00
    assert manifest["grid"]["start_utc"] == start_utc.isoformat()
    assert manifest["grid"]["utc_offset_s"] == 7200
    for name, res in (("site_1s.parquet", 1), ("site_60s.parquet", 60), ("rows_60s.parquet", 60)):
        cols, meta = read_series(out / name)
        stamps = cols["timestamp_utc"].astype("datetime64[ms]").astype(np.int64)
        # the same instants as time_s, counted from the start in UTC (ms since the epoch)
        want = int(start_utc.timestamp() * 1000) + np.round(cols["time_s"] * 1000)
        np.testing.assert_array_equal(stamps, want.astype(np.int64))
        assert np.all(np.diff(np.unique(stamps)) == res * 1000)
        assert meta["units"]["timestamp_utc"] == "UTC, interval start"
    import pyarrow.parquet as pq
    field = pq.read_schema(out / "site_1s.parquet").field("timestamp_utc")
    assert str(field.type) == "timestamp[ms, tz=UTC]"


def test_site_csv_keeps_the_configured_offset(demo_run):
    out, _ = demo_run
    first = (out / "site_60s.csv").read_text().splitlines()[1]
    assert first.startswith("2026-07-01 09:00:00+02:00,60,")


# --------------------------------------------------------------------------- entities

def test_entity_table_maps_every_deployment_to_its_place(demo_run, library):
    out, manifest = demo_run
    cols, meta = read_entity_table(out / "entities.parquet")
    t = manifest["topology"]
    assert cols["deployment_id"].size == t["deployments"] == 2 * 2 * 2 * 8 + 1 * 2 * 2 * 4
    assert cols["gpus"].sum() == t["gpus"] == 3 * 2 * 2 * 8          # every GPU, once
    assert np.unique(cols["server_id"]).size == t["servers"]
    assert np.unique(cols["rack_id"]).size == t["racks"]
    # the ids of the series files, and the serving configuration of each row
    plan = plan_run(load_config(DEMO, SMALL), library)
    fleet = plan.topology.fleet()
    np.testing.assert_array_equal(cols["deployment_id"], fleet.deployment_uid)
    np.testing.assert_array_equal(cols["server_id"], fleet.deployment_server_uid)
    np.testing.assert_array_equal(cols["row_id"], fleet.deployment_row)
    assert set(cols["serving_config"][cols["row_id"] == 2]) == {QWEN30}
    assert set(cols["gpus"][cols["row_id"] == 2]) == {2}
    np.testing.assert_array_equal(cols["first_gpu"][:8], np.arange(8))  # TP1: one per GPU
    servers = read_series(out / "servers_60s.parquet")[0]["server_id"]
    assert set(np.unique(servers)) == set(np.unique(cols["server_id"]))
    # deployment power is GPU-only; servers add non-GPU power: said in the file
    assert "GPU power only" in meta["power"] and "non-GPU" in meta["power"]
    assert "GPU power only" in read_series_metadata(out / "servers_60s.parquet")[
        "metadata"]["power"]


# --------------------------------------------------------------------------- shards, manifest

def test_shard_table_replaces_per_shard_manifest_entries(demo_run):
    out, manifest = demo_run
    assert "shards" not in manifest["summary"]
    assert manifest["summary"]["shards_table"] == "shards.parquet"
    cols, meta = read_table(out / "shards.parquet")
    assert cols["shard"] == [0, 1] and meta["format"] == "distgen.shards"
    assert sum(cols["requests_arrived"]) == manifest["summary"]["workload"]["requests_arrived"]
    by_config = [json.loads(b) for b in cols["by_config"]]
    for cid, w in manifest["summary"]["by_config"].items():
        assert sum(b.get(cid, {}).get("decode_tokens", 0) for b in by_config) == \
            w["decode_tokens"]
    assert set(cols["inputs_sha256"]) == {manifest["inputs"]["sha256"]}


def test_row_statistics_table_is_referenced_and_adds_up(demo_run):
    out, manifest = demo_run
    assert manifest["summary"]["rows_table"] == "row_stats.parquet"
    assert "row_stats.parquet" in {f["path"] for f in manifest["files"]}
    cols, meta = read_table(out / "row_stats.parquet")
    assert cols["row_id"] == [0, 1, 2] and cols["serving_config"] == [QWEN, QWEN, QWEN30]
    assert meta["resolution_s"] == 60.0 and meta["units"]["peak_w"] == "W"
    # the same figures as the rows series (60 s means over the 120 s run)
    series = read_series(out / "rows_60s.parquet")[0]
    for i, row in enumerate(cols["row_id"]):
        power = series["power_w"][series["row_id"] == row]
        assert cols["energy_j"][i] == pytest.approx(power.sum() * 60, rel=1e-12)
        assert cols["mean_w"][i] == pytest.approx(power.mean(), rel=1e-12)
        assert cols["peak_w"][i] == power.max() and cols["min_w"][i] == power.min()
    assert sum(cols["energy_j"]) == pytest.approx(manifest["summary"]["rows"]["energy_j"],
                                                  rel=1e-12)


# --------------------------------------------------------------------------- summary

def test_summary_states_resolutions_and_one_unit_per_column(demo_run):
    out, manifest = demo_run
    text = format_summary(manifest, out)
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("level"))
    units = re.findall(r"\[(\w+)\]", header)
    assert units[0] in ("Wh", "kWh", "MWh", "GWh") and units[1] == units[2]
    scale_e = {"Wh": 3.6e3, "kWh": 3.6e6, "MWh": 3.6e9, "GWh": 3.6e12}[units[0]]
    scale_p = {"W": 1.0, "kW": 1e3, "MW": 1e6, "GW": 1e9}[units[1]]
    site = manifest["summary"]["site"]
    rows = [ln.split() for ln in lines if ln.startswith(("site IT", "site facility"))]
    for r in rows:
        kind = "it" if r[1] == "IT" else "facility"
        stats = site[r[2]][kind]          # the resolution column, e.g. "60s"
        assert float(r[3]) == pytest.approx(stats["energy_j"] / scale_e, abs=5e-4)
        assert float(r[4]) == pytest.approx(stats["mean_w"] / scale_p, abs=5e-4)
        assert float(r[5]) == pytest.approx(stats["peak_w"] / scale_p, abs=5e-4)
    assert len(rows) == 4                 # IT and facility at 1 s and 60 s
    assert any(ln.startswith("rows (3, per entity)") and " 60s " in ln for ln in lines)
    assert "on a 0.25 s grid" in text and "(UTC+2 h)" in text
    assert "requests over the 120 s:" in text
    assert "0.25 s deployment-steps outside" in text


# --------------------------------------------------------------------------- mixes

def test_shares_and_pattern_are_assigned_and_reported(tmp_path, library):
    shares = load_config(DEMO, [*SMALL, "facility.row_serving=null", "facility.rows=4",
                                f"facility.row_serving_shares={{{QWEN}: 3, {QWEN30}: 1}}"])
    m = generate(shares, tmp_path / "shares", library=library)
    assert m["topology"]["serving_mix"] == {
        "form": "row_serving_shares", "rows": {QWEN: 3, QWEN30: 1},
        "requested_shares": {QWEN: 0.75, QWEN30: 0.25}}
    # positions (j + 1/2) * 4 / n: qwen3-8b at 0.67, 2, 3.33, the TP2 row at 2; the tie goes
    # to the id listed first
    assert m["topology"]["row_serving"] == [QWEN, QWEN, QWEN30, QWEN]
    pattern = load_config(DEMO, [*SMALL, "facility.row_serving=null", "facility.rows=4",
                                 f"facility.row_serving_pattern=[{QWEN30},{QWEN}]"])
    m = generate(pattern, tmp_path / "pattern", library=library)
    assert m["topology"]["row_serving"] == [QWEN30, QWEN, QWEN30, QWEN]
    assert m["config"]["facility"]["row_serving_pattern"] == [QWEN30, QWEN]


# --------------------------------------------------------------------------- the 1M preset

def test_hyperscale_preset_fits_on_one_screen_and_plans_1m_gpus(library):
    from distgen.footprint import estimate_footprint

    assert len(PRESET.read_text().splitlines()) < 40
    cfg = load_config(PRESET)
    plan = plan_run(cfg, library)
    assert plan.topology.n_gpus == 1_000_000 and plan.n_deployments == 800_000
    assert plan.topology.row_serving[:10] == plan.topology.row_serving[490:]
    fp = estimate_footprint(cfg, library)
    # 800,000 deployments x (86,400 s + 600 s warm-up) / 0.25 s
    assert fp.deployments == 800_000 and fp.deployment_steps == 800_000 * 348_000
    # 12,500 racks in 2000 shards: 6.25 racks a shard, at most 7 racks x 10 servers x 8 (TP1)
    assert fp.largest_shard_deployments == 560
    sizes = [plan.topology.fleet(s.rack_start, s.rack_stop).n_deployments for s in plan.shards]
    assert max(sizes) == 560


def test_hyperscale_preset_shortened_runs_with_a_small_manifest(tmp_path, library):
    """One 10-row block of the preset (the mix repeats every 10 rows), 60 s, 40 shards."""
    cfg = load_config(PRESET, ["facility.rows=10", "duration_s=60", "warmup_s=0", "shards=40",
                               "output.site_resolutions_s=[1,60]",
                               "output.site_csv_resolution_s=null"])
    out = tmp_path / "h1m"
    m = generate(cfg, out, library=library)
    assert m["topology"]["gpus"] == 20_000 and m["topology"]["deployments"] == 16_000
    assert m["topology"]["serving_mix"]["rows"] == {
        "qwen3-8b_H100_tp1": 3, "qwen3-8b_A100_tp1": 2, "qwen3-14b_A100_tp1": 1,
        "qwen3-30b-a3b_H100_tp2": 3, "gemma-4-26b-a4b-it_A100_tp2": 1}
    assert read_table(out / "shards.parquet")[0]["shard"] == list(range(40))
    assert read_entity_table(out / "entities.parquet")[0]["deployment_id"].size == 16_000
    # the manifest does not grow with the shards: 40 here, 2000 in the full preset
    assert (out / "manifest.json").stat().st_size < 20_000
    rows = read_series(out / "rows_60s.parquet")[0]
    assert np.unique(rows["row_id"]).tolist() == list(range(10))


def test_short_replay_trace_gets_a_coverage_warning(tmp_path, library):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time_s,input_tokens,output_tokens\n0,100,10\n0.5,100,10\n")
    cfg = load_config(DEMO, [*SMALL, "traffic.mode=replay", f"traffic.replay.path={trace}"])
    notes = []
    generate(cfg, tmp_path / "o", library=library, log=notes.append)
    # 0.5 s of trace over a 120 s run: 0.42 %
    assert notes == [f"warning: the request trace {trace} spans 0.5 s of the run "
                     "(traffic.replay.time_scale = 1), 0.42 % of duration_s = 120 s: it "
                     "repeats about 240 times"]
