"""The `distgen` command line, in-process (distgen.cli.main), local executor only (no Ray)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distgen.cli import main
from distgen.io.series import read_series_metadata

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
QWEN = "qwen3-8b_A100_tp1"
GEMMA = "gemma-4-26b-a4b-it_A100_tp2"
METRICS = {"energy_err_pct", "ks", "acf_r2", "nrmse", "p95_err_pct", "p99_err_pct"}


# =============================================================================================
# fit + validate


@pytest.fixture(scope="module")
def fitted_library(tmp_path_factory, measured_dir):
    """`distgen fit` on the three fixture runs. --no-scores skips the held-out scoring stored in
    each artifact: it is the very protocol `distgen validate` runs below (same refits), and
    running it twice would double the slowest part of this file."""
    out = tmp_path_factory.mktemp("lib") / "lib"
    rc = main(["fit", str(measured_dir), "--out", str(out), "--no-scores"])
    assert rc == 0
    return out


def test_fit_writes_one_artifact_per_configuration(fitted_library, capsys):
    names = sorted(p.name for p in fitted_library.glob("*.json"))
    assert names == [f"{GEMMA}.json", f"{QWEN}.json"]
    for name in names:
        doc = json.loads((fitted_library / name).read_text())
        assert doc["format"] == "distgen.power_model" and doc["format_version"] == 2
        assert doc["config_id"] + ".json" == name
        assert doc["scores"] == {}
    qwen = json.loads((fitted_library / f"{QWEN}.json").read_text())
    assert len(qwen["provenance"]["runs"]) == 2
    gemma = json.loads((fitted_library / f"{GEMMA}.json").read_text())
    assert gemma["tp"] == 2 and len(gemma["provenance"]["runs"]) == 1


@pytest.fixture(scope="module")
def validation(fitted_library, measured_dir, tmp_path_factory):
    js = tmp_path_factory.mktemp("val") / "v.json"
    return js, ["validate", "--models", str(fitted_library), "--data", str(measured_dir),
                "--json", str(js), "--seeds", "2"]


def test_validate_table_and_json(validation, capsys):
    js, argv = validation
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert QWEN in out and GEMMA in out and "energy%" in out
    results = json.loads(js.read_text())
    assert set(results) == {QWEN, GEMMA}
    for cid, r in results.items():
        assert {"runs", "baselines"} | METRICS <= set(r), cid
        assert set(r["baselines"]) == {"tdp", "mean", "lut"}
        for name, b in r["baselines"].items():
            assert set(b) == METRICS, (cid, name)
    q = results[QWEN]
    assert q["runs"] == 2 and q["split"] == "leave-one-run-out"
    assert results[GEMMA]["runs"] == 1 and results[GEMMA]["split"] == "time split 70/30"
    # the acceptance check: ours beats TDP on energy and every baseline in distribution (KS).
    # On these two chat runs (2.5 and 4 req/s) the phase LUT and the mean-power baseline,
    # fitted on the other chat run, land within 0.4 % by construction; ours is within its own
    # seed-to-seed noise of them (sd of pooled energy over seeds on these runs: ~0.3 %)
    assert q["energy_err_pct"] < q["baselines"]["tdp"]["energy_err_pct"]
    assert q["energy_err_pct"] <= max(q["baselines"]["lut"]["energy_err_pct"], 0.6)
    assert q["ks"] < min(b["ks"] for b in q["baselines"].values())
    # the TDP baseline (400 W on a ~250-300 W average) is far off: a sanity check of the scorer
    assert q["baselines"]["tdp"]["energy_err_pct"] > 30


def test_validate_reports_configuration_without_model(fitted_library, measured_dir, tmp_path,
                                                      capsys):
    data = tmp_path / "data"
    src = next(p for p in measured_dir.rglob("manifest.json") if "gemma" in str(p)).parent
    shutil.copytree(src, data / src.name)
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(fitted_library / f"{QWEN}.json", lib)
    js = tmp_path / "v.json"
    rc = main(["validate", "--models", str(lib), "--data", str(data), "--json", str(js),
               "--seeds", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert GEMMA in out and "no model" in out
    assert json.loads(js.read_text())[GEMMA]["status"] == "no model"


# =============================================================================================
# generate


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo preset for 30 minutes (its 900 s site resolution must divide duration_s, so
    the 600 s of the issue's example is refused; see test_demo_duration_must_fit_resolutions)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, ["generate", str(DEMO), "--out", str(out), "--executor", "local",
                 "duration_s=1800"]


def test_generate_demo(demo_run, capsys):
    from distgen.config import load_config

    out, argv = demo_run
    cfg = load_config(DEMO, ["duration_s=1800"])
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "site IT" in printed
    o = cfg.output
    label = lambda r: f"{r:g}s"  # noqa: E731
    expected = {f"site_{label(r)}.parquet" for r in o.site_resolutions_s}
    expected |= {f"{lvl}_{label(r)}.parquet" for lvl, r in (
        ("rows", o.rows_resolution_s), ("racks", o.racks_resolution_s),
        ("servers", o.servers_resolution_s), ("deployments", o.deployments_resolution_s))
        if r is not None}
    if o.site_csv_resolution_s is not None:
        expected.add(f"site_{label(o.site_csv_resolution_s)}.csv")
    assert {"site_1s.parquet", "rows_1s.parquet", "racks_60s.parquet"} <= expected  # the preset
    names = sorted(p.name for p in out.iterdir())
    tables = {"entities.parquet", "row_stats.parquet", "shards.parquet"}
    assert names == sorted(expected | tables | {"manifest.json"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"format", "distgen_version", "config", "config_hash", "seed", "model_library",
            "grid", "units", "files", "summary"} <= set(manifest)
    assert manifest["format"] == "distgen.run"
    assert manifest["seed"] == cfg.seed and manifest["config"]["duration_s"] == 1800
    assert manifest["grid"]["n_steps"] == 1800 * 4 and manifest["grid"]["interval_s"] == 0.25
    assert sorted(f["path"] for f in manifest["files"]) == sorted(expected | tables)
    assert manifest["units"]["power"] == "W"
    for name in names:
        if name.endswith(".parquet") and name not in tables:
            meta = read_series_metadata(out / name)
            assert meta["grid"]["n_steps"] == 7200 and meta["grid"]["interval_s"] == 0.25
            assert meta["grid"]["start_time"] == cfg.start_time
            assert meta["grid"]["start_utc"] == "2026-07-01T09:00:00+00:00"  # no offset: UTC
            assert all(u in ("W", "s", "UTC, interval start") for u in meta["units"].values())
            assert "time_s" in meta["units"] and "timestamp_utc" in meta["units"]


def test_generate_quiet_prints_nothing(tmp_path, capsys):
    argv = ["generate", str(DEMO), "--out", str(tmp_path / "o"), "--executor", "local",
            "--quiet", "duration_s=900", "warmup_s=0", "facility.rows=1",
            "facility.row_serving=[qwen3-8b_A100_tp1]", "shards=1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert (tmp_path / "o" / "manifest.json").is_file()


# =============================================================================================
# bad inputs: exit code 2, one line naming the key or file, no traceback


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("distgen: error:")
    return lines[0]


def _generate(tmp_path, *extra, config=DEMO, out=None):
    out = out or tmp_path / "out"
    return main(["generate", str(config), "--out", str(out), "--executor", "local", "--quiet",
                 *extra])


@pytest.mark.parametrize("override, words", [
    ("facility.rowz=3", ["facility.rowz"]),
    ("duration_s=-5", ["duration_s"]),
    ("facility.row_serving=[nope_X100_tp1]", ["facility.row_serving[0]", "nope_X100_tp1"]),
    ("duration_s=600", ["output.site_resolutions_s[2]", "900"]),
    ("traffic.replay.routing=nearest", ["traffic.replay.routing"]),
])
def test_generate_bad_config_value(tmp_path, capsys, override, words):
    assert _generate(tmp_path, override) == 2
    line = _error_line(capsys)
    for w in words:
        assert w in line
    assert not (tmp_path / "out").exists()       # refused before anything is written


def test_generate_missing_config_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.yaml"
    assert _generate(tmp_path, config=missing) == 2
    assert str(missing) in _error_line(capsys)


def test_generate_foreign_out_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert _generate(tmp_path, "duration_s=900", out=out) == 2
    line = _error_line(capsys)
    assert str(out) in line and "--overwrite" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_fit_missing_data_folder(tmp_path, capsys):
    rc = main(["fit", str(tmp_path / "no_runs_here"), "--out", str(tmp_path / "lib")])
    assert rc == 2
    assert "no_runs_here" in _error_line(capsys)
