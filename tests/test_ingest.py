"""Tests of the measured-run reader (distgen.ingest) on the fixture runs in tests/data/measured.

Reference values come from the fixture files themselves (manifest.json fields, power.csv rows
parsed here with the csv module), never from the reader under test.
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from distgen.errors import InputError
from distgen.ingest import (EngineLog, RequestLog, RunTrace, config_id_for, discover_runs,
                            read_run, read_runs)

QWEN_R4 = "validate_qwen3-8b_a100/a100_validate_tp1_r4p0_b1p0_s20260712_1784415439"
QWEN_R2P5 = "arrival_rate_qwen3-8b_a100_r2p5/a100_validate_tp1_r2p5_b1p0_s20260712_1784415659"
GEMMA_TP2 = ("validate_gemma-4-26b-a4b_moe_transfer_a100/"
             "a100_validate_tp2_r4p0_b1p0_s20260712_1784415591")
ALL_RUNS = (QWEN_R4, QWEN_R2P5, GEMMA_TP2)


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def copy_run(measured_dir, tmp_path):
    """Copy a fixture run into tmp_path and return the copy's folder."""
    def _copy(name: str = QWEN_R4) -> Path:
        dst = tmp_path / Path(name).name
        shutil.copytree(measured_dir / name, dst)
        return dst
    return _copy


def lines_of(path: Path) -> list[str]:
    """File lines with their own line endings (CRLF kept)."""
    return path.read_bytes().decode().splitlines(keepends=True)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_bytes("".join(lines).encode())


def set_field(line: str, j: int, value: str) -> str:
    """Replace field j of one CSV line, keeping its line ending."""
    body = line.rstrip("\r\n")
    cells = body.split(",")
    cells[j] = value
    return ",".join(cells) + line[len(body):]


def edit_json(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def read_power_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def first_power_epoch_s(manifest: dict) -> float:
    """Epoch of the first power row, from the manifest's own epoch <-> local-time pair.

    clock.reference_epoch_s and clock.reference_local_iso8601 name one instant on both clocks;
    clock.power_first_timestamp is the first power.csv row in local wall time. So the first
    row's epoch = reference_epoch_s + (power_first_timestamp - reference_local) [s].
    """
    clock = manifest["clock"]
    ref_local = datetime.fromisoformat(clock["reference_local_iso8601"]).replace(tzinfo=None)
    first_local = datetime.strptime(clock["power_first_timestamp"], "%Y/%m/%d %H:%M:%S.%f")
    return clock["reference_epoch_s"] + (first_local - ref_local).total_seconds()


def raises(run_dir: Path, file: str, *, line=None, column=None, match=None, **kw) -> InputError:
    """read_run must raise an InputError naming `file` (and line / column when given)."""
    with pytest.raises(InputError) as info:
        read_run(run_dir, **kw)
    err = info.value
    assert Path(err.path).name == file and file in str(err)
    if line is not None:
        assert err.line == line and f"line {line}" in str(err)
    if column is not None:
        assert err.column == column and column in str(err)
    if match is not None:
        for text in ([match] if isinstance(match, str) else match):
            assert text in str(err), str(err)
    return err


# ------------------------------------------------------------------------------ good runs


@pytest.mark.parametrize("name, config_id, tp", [
    (QWEN_R4, "qwen3-8b_A100_tp1", 1),
    (QWEN_R2P5, "qwen3-8b_A100_tp1", 1),
    (GEMMA_TP2, "gemma-4-26b-a4b-it_A100_tp2", 2),
])
def test_read_fixture_run(measured_dir, name, config_id, tp):
    run = read_run(measured_dir / name)
    man = json.loads((measured_dir / name / "manifest.json").read_text())
    assert isinstance(run, RunTrace)
    assert run.config_id == config_id == config_id_for(man["model"], man["hardware"], man["tp"])
    assert (run.tp, run.gpu, run.model_name, run.run_id) == (tp, "A100", man["model"],
                                                             man["run_id"])
    assert run.interval_s == 0.25
    assert run.start_s == pytest.approx(first_power_epoch_s(man), abs=1e-3)
    # Grid length: floor((last - first) / 0.25) + 1 over the instants of power.csv.
    rows = read_power_rows(measured_dir / name / "power.csv")
    assert len(rows) == man["instrumentation"]["power"]["samples"] * tp
    t0 = datetime.strptime(rows[0]["timestamp"], "%Y/%m/%d %H:%M:%S.%f")
    t1 = datetime.strptime(rows[-1]["timestamp"], "%Y/%m/%d %H:%M:%S.%f")
    assert run.n_steps == int((t1 - t0).total_seconds() // 0.25) + 1
    assert run.power_w.dtype == np.float64 and np.all(np.isfinite(run.power_w))

    req = run.requests
    assert isinstance(req, RequestLog) and len(req) == 200
    assert req.input_tokens.sum() == man["probe"]["levels"][0]["summary"]["total_input_tokens"]
    assert req.output_tokens.sum() == man["probe"]["levels"][0]["summary"]["total_output_tokens"]
    assert np.all(np.diff(req.arrival_s) >= 0)
    assert req.ttft_s is not None and req.latency_s is None  # requests_core.json has no itls

    assert isinstance(run.engine, EngineLog)
    assert len(run.engine) == man["instrumentation"]["engine"]["samples"]
    assert run.engine.time_s[0] == pytest.approx(man["clock"]["engine_first_epoch_s"])
    assert run.serving.max_num_seqs == man["server"]["max_num_seqs"]

    # Clock check (PROVENANCE.md): once local power time is converted to epoch, power first
    # rises above 150 W per GPU (idle is 82-88 W per A100) within 0.5 s of the first request.
    rise_s = run.time_s[np.argmax(run.power_w / tp > 150.0)]
    assert abs(rise_s - req.arrival_s[0]) < 0.5


def test_tp2_power_is_sum_of_gpus(measured_dir):
    run = read_run(measured_dir / GEMMA_TP2)
    rows = read_power_rows(measured_dir / GEMMA_TP2 / "power.csv")
    per_instant: dict[str, dict[str, float]] = {}
    for r in rows:
        per_instant.setdefault(r["timestamp"], {})[r["uuid"]] = float(r["power.draw [W]"])
    assert all(len(v) == 2 for v in per_instant.values())
    offset = run.start_s - datetime.strptime(rows[0]["timestamp"], "%Y/%m/%d %H:%M:%S.%f")\
        .replace(tzinfo=timezone.utc).timestamp()
    times = np.array([datetime.strptime(k, "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
                      .timestamp() for k in per_instant]) + offset
    sums = np.array([sum(v.values()) for v in per_instant.values()])
    assert offset == pytest.approx(25200.0)  # UTC-7 local time
    # Grid points that fall on a sampling instant (the first one at least; the instants drift
    # against the 0.25 s grid) carry exactly the sum of both GPUs there.
    on = np.abs(run.time_s[:, None] - times[None, :]) < 1e-6
    k_grid, k_inst = np.nonzero(on)
    assert k_grid[0] == 0 and k_inst[0] == 0
    np.testing.assert_allclose(run.power_w[k_grid], sums[k_inst], rtol=0, atol=1e-9)
    # ... and the rest is the linear interpolation of those sums.
    np.testing.assert_allclose(run.power_w, np.interp(run.time_s, times, sums), atol=1e-6)


def test_unix_epoch_power_basis_and_unit_suffix(copy_run, measured_dir):
    """The same run with epoch-second power timestamps and 'W'-suffixed power reads the same."""
    ref = read_run(measured_dir / QWEN_R4)
    run = copy_run(QWEN_R4)
    lines = lines_of(run / "power.csv")
    out = [lines[0].replace("power.draw [W]", "power.draw")]
    for ln in lines[1:]:
        cells = ln.rstrip("\n").split(",")
        t = datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
        cells[0] = f"{t.timestamp() + 25200.0:.3f}"
        cells[3] += " W"
        out.append(", ".join(cells) + "\n")  # ", " separators as nvidia-smi writes them
    write_lines(run / "power.csv", out)
    edit_json(run / "manifest.json",
              lambda m: m["clock"].update(power_timestamp_basis="unix_epoch"))
    got = read_run(run)
    assert got.start_s == pytest.approx(ref.start_s, abs=1e-6)
    np.testing.assert_allclose(got.power_w, ref.power_w, atol=1e-6)


def test_read_runs_and_discover(measured_dir):
    campaign = measured_dir / "validate_qwen3-8b_a100"
    assert discover_runs(campaign) == [(measured_dir / QWEN_R4).resolve()]
    assert discover_runs(measured_dir / QWEN_R4) == [(measured_dir / QWEN_R4).resolve()]
    found = discover_runs(measured_dir, campaign, measured_dir / QWEN_R4)  # duplicates dropped
    assert found == sorted((measured_dir / n).resolve() for n in ALL_RUNS)
    runs = read_runs(measured_dir)
    assert [r.config_id for r in runs] == ["qwen3-8b_A100_tp1", "gemma-4-26b-a4b-it_A100_tp2",
                                           "qwen3-8b_A100_tp1"]


def test_discover_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*holds no run"):
        discover_runs(tmp_path / "empty")
    with pytest.raises(InputError, match="nowhere.*not found"):
        discover_runs(tmp_path / "nowhere")


# ------------------------------------------------------------------------------ power.csv


def test_missing_power_column(copy_run):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    write_lines(run / "power.csv", [lines[0].replace("power.draw [W]", "power [W]")] + lines[1:])
    raises(run, "power.csv", line=1, match=["power.draw", "columns found", "power [W]"])


def test_non_numeric_power(copy_run):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    lines[9] = set_field(lines[9], 3, "N/A")  # file line 10
    write_lines(run / "power.csv", lines)
    raises(run, "power.csv", line=10, column="power.draw [W]", match="N/A")


@pytest.mark.parametrize("source_line, word", [(10, "duplicated"), (9, "backwards")])
def test_power_timestamp_not_increasing(copy_run, source_line, word):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    lines[10] = set_field(lines[10], 0, lines[source_line - 1].split(",")[0])  # line 11
    write_lines(run / "power.csv", lines)
    raises(run, "power.csv", line=11, column="timestamp", match=word)


def test_bad_local_timestamp_format(copy_run):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    lines[4] = set_field(lines[4], 0, lines[4].split(",")[0].replace("/", "-"))  # line 5
    write_lines(run / "power.csv", lines)
    raises(run, "power.csv", line=5, column="timestamp", match="local wall time")


def test_wrong_field_count(copy_run):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    lines[6] = lines[6].rstrip("\n") + ",extra\n"  # line 7
    write_lines(run / "power.csv", lines)
    raises(run, "power.csv", line=7, match="expected 10 fields")


def test_long_gap_rejected_short_gap_interpolated(copy_run):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    # Drop file lines 20..30 (11 samples): a gap of about 3 s > max_gap_s = 2 s.
    write_lines(run / "power.csv", lines[:19] + lines[30:])
    err = raises(run, "power.csv", line=20, column="timestamp", match=["gap of 3.0", "max_gap_s"])
    assert "after line 19" in str(err)

    # Drop only lines 20..22: a 1 s gap, interpolated between lines 19 and 23.
    write_lines(run / "power.csv", lines[:19] + lines[22:])
    got = read_run(run)
    parse = lambda ln: (datetime.strptime(ln.split(",")[0], "%Y/%m/%d %H:%M:%S.%f")
                        .replace(tzinfo=timezone.utc).timestamp() + 25200.0,
                        float(ln.split(",")[3]))
    (ta, pa), (tb, pb) = parse(lines[18]), parse(lines[22])
    inside = (got.time_s > ta) & (got.time_s < tb)
    assert inside.sum() >= 3
    expected = pa + (pb - pa) * (got.time_s[inside] - ta) / (tb - ta)
    np.testing.assert_allclose(got.power_w[inside], expected, atol=1e-6)
    # ... and a tighter max_gap_s rejects that same gap.
    raises(run, "power.csv", line=20, match="gap of 1.0", max_gap_s=0.5)


def test_manifest_tp_disagrees_with_power_file(copy_run):
    run = copy_run()
    edit_json(run / "manifest.json", lambda m: m.update(tp=2))
    raises(run, "power.csv", column="uuid", match=["tp = 2", "holds 1 GPU"])


def test_uuid_not_in_active_gpu_uuids(copy_run):
    run = copy_run(GEMMA_TP2)
    edit_json(run / "manifest.json", lambda m: m["server"].update(
        active_gpu_uuids=[m["server"]["active_gpu_uuids"][0], "GPU-00000000-other"]))
    raises(run, "power.csv", line=3, column="uuid",
           match=["GPU-e2681f6e-8d94-2d66-484f-43ea602335f9", "active_gpu_uuids"])


def test_tp2_instant_missing_one_gpu(copy_run):
    run = copy_run(GEMMA_TP2)
    lines = lines_of(run / "power.csv")
    assert ",1,GPU-e2681f6e" in lines[10]
    del lines[10]  # file line 11 = GPU 1 at the 5th instant; GPU 0's row there is line 10
    write_lines(run / "power.csv", lines)
    raises(run, "power.csv", line=10,
           match=["exactly one row per GPU", "GPU-e2681f6e-8d94-2d66-484f-43ea602335f9 has no row"])


def test_missing_files(copy_run):
    run = copy_run()
    (run / "power.csv").unlink()
    raises(run, "power.csv", match="not found")
    run = copy_run(QWEN_R2P5)
    (run / "requests_core.json").unlink()
    raises(run, "requests.json", match=["not found", "requests_core.json"])
    run = copy_run(GEMMA_TP2)
    (run / "manifest.json").unlink()
    raises(run, "manifest.json", match="not found")


# ------------------------------------------------------------------------------ manifest


def test_broken_manifest_json(copy_run):
    run = copy_run()
    lines = lines_of(run / "manifest.json")
    k = next(i for i, ln in enumerate(lines) if ln.strip() == '"tp": 1,')
    lines[k] = lines[k].replace(",", "")
    write_lines(run / "manifest.json", lines)
    raises(run, "manifest.json", line=k + 2, match="invalid JSON")  # the next key's line


def test_manifest_missing_key_and_server_defaults(copy_run):
    run = copy_run()
    edit_json(run / "manifest.json", lambda m: m.pop("model"))
    raises(run, "manifest.json", column="model", match="missing key")
    run = copy_run(QWEN_R2P5)
    edit_json(run / "manifest.json", lambda m: [m["server"].pop(k) for k in
                                                ("max_num_seqs", "max_model_len")])
    assert read_run(run).serving.max_num_seqs == 256  # the ServingSettings default


# ------------------------------------------------------------------------------ requests


def test_requests_do_not_overlap_power(copy_run):
    run = copy_run()
    edit_json(run / "requests_core.json", lambda d: d.update(
        request_timestamps=[t + 86400.0 for t in d["request_timestamps"]]))
    raises(run, "requests_core.json", column="request_timestamps",
           match=["power window [1784415445.621", "requests span [1784501"])


def test_request_array_lengths_disagree(copy_run):
    run = copy_run()
    edit_json(run / "requests_core.json", lambda d: d["input_lens"].pop())
    raises(run, "requests_core.json", column="input_lens", match=["199", "200"])


def test_negative_tokens_and_non_finite_arrival(copy_run):
    run = copy_run()
    edit_json(run / "requests_core.json", lambda d: d["output_lens"].__setitem__(5, -3))
    raises(run, "requests_core.json", column="output_lens", match="'output_lens'[5]")
    run = copy_run(QWEN_R2P5)
    edit_json(run / "requests_core.json",
              lambda d: d["request_timestamps"].__setitem__(3, float("nan")))
    raises(run, "requests_core.json", column="request_timestamps",
           match="'request_timestamps'[3]")


def test_requests_json_with_itls(copy_run):
    """A full requests.json (preferred over requests_core.json) gives latency = ttft + sum(itls)."""
    run = copy_run()
    doc = json.loads((run / "requests_core.json").read_text())
    n = len(doc["output_lens"])
    doc["itls"] = [[0.02] * max(o - 1, 0) for o in doc["output_lens"]]
    # Swap two requests so the log is out of arrival order; the reader sorts it.
    for key in doc:
        doc[key][0], doc[key][1] = doc[key][1], doc[key][0]
    doc["extra_key"] = list(range(n))
    (run / "requests.json").write_text(json.dumps(doc))
    req = read_run(run).requests
    order = np.argsort(doc["request_timestamps"], kind="stable")
    ttft = np.array(doc["ttfts"])[order]
    out = np.array(doc["output_lens"])[order]
    np.testing.assert_array_equal(req.arrival_s, np.array(doc["request_timestamps"])[order])
    np.testing.assert_array_equal(req.output_tokens, out)
    np.testing.assert_allclose(req.latency_s, ttft + 0.02 * np.maximum(out - 1, 0))
    assert req.arrival_s[0] < req.arrival_s[1]


def test_requests_core_without_ttfts(copy_run):
    run = copy_run()
    edit_json(run / "requests_core.json", lambda d: d.pop("ttfts"))
    req = read_run(run).requests
    assert len(req) == 200 and req.ttft_s is None and req.latency_s is None


# ------------------------------------------------------------------------------ engine.csv


def test_engine_missing_column(copy_run):
    run = copy_run()
    lines = lines_of(run / "engine.csv")
    lines[0] = lines[0].replace("iteration_tokens_total_count", "iterations")
    write_lines(run / "engine.csv", lines)
    raises(run, "engine.csv", line=1,
           match=["iteration_tokens_total_count", "columns found", "'iterations'"])


def test_engine_non_numeric_cell(copy_run):
    run = copy_run()
    lines = lines_of(run / "engine.csv")
    assert lines[4].endswith("\r\n")  # CRLF file
    lines[4] = set_field(lines[4], 3, "abc")  # line 5, gpu_cache_usage_perc
    write_lines(run / "engine.csv", lines)
    raises(run, "engine.csv", line=5, column="gpu_cache_usage_perc", match="abc")


def test_engine_timestamp_not_increasing(copy_run):
    run = copy_run()
    lines = lines_of(run / "engine.csv")
    lines[5] = set_field(lines[5], 0, lines[4].split(",")[0])  # line 6 repeats line 5
    write_lines(run / "engine.csv", lines)
    raises(run, "engine.csv", line=6, column="timestamp", match="strictly increase")


def test_run_without_engine(copy_run):
    run = copy_run()
    (run / "engine.csv").unlink()
    trace = read_run(run)
    assert trace.engine is None and len(trace.requests) == 200
