"""`distgen inspect`: what distgen reads in a measured run, before any fitting.

Reference values come from the fixture files (parsed here with csv / json), from
tests/data/measured/PROVENANCE.md and shared/data/measured/PROVENANCE.md (quoted where used),
or restate the documented rule of distgen/ingest/inspection.py (idle level, busy share).
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from distgen.cli import main
from distgen.ingest import read_run
from distgen.ingest.inspection import (BUSY_FACTOR, RunInspection, Unreadable, format_gap_lines,
                                       format_inspections, inspect_paths, inspect_run)

AGENTIC_DIR = Path(__file__).parent / "data" / "measured_agentic"
OPENHANDS = "sealed_openhands_qwen3-8b_a100/a100_agentic_tp1_1784657707"
QWEN_R4 = "validate_qwen3-8b_a100/a100_validate_tp1_r4p0_b1p0_s20260712_1784415439"
GEMMA_TP2 = ("validate_gemma-4-26b-a4b_moe_transfer_a100/"
             "a100_validate_tp2_r4p0_b1p0_s20260712_1784415591")


def power_rows(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(epoch [s], W) of a TP1 fixture's power.csv (local wall time, UTC-7)."""
    with open(run_dir / "power.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([datetime.strptime(r["timestamp"], "%Y/%m/%d %H:%M:%S.%f")
                  .replace(tzinfo=timezone.utc).timestamp() + 25200.0 for r in rows])
    return t, np.array([float(r["power.draw [W]"]) for r in rows])


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


# ---------------------------------------------------------------------------- inspect_run


def test_agentic_run_as_distgen_sees_it():
    run_dir = AGENTIC_DIR / OPENHANDS
    r = inspect_run(read_run(run_dir))
    assert (r.config_id, r.model_name, r.gpu, r.tp) == ("qwen3-8b_A100_tp1", "Qwen/Qwen3-8B",
                                                        "A100", 1)
    assert r.serving["enable_prefix_caching"] is True and r.serving["max_num_seqs"] == 128
    t, p = power_rows(run_dir)
    assert r.n_steps == int((t[-1] - t[0]) // 0.25) + 1 and r.duration_s == r.n_steps * 0.25
    assert r.start_utc == datetime.fromtimestamp(t[0], timezone.utc).isoformat(
        timespec="milliseconds")
    assert r.sampling_interval_s == pytest.approx(np.median(np.diff(t)))
    # PROVENANCE.md: two sampling gaps, 1.24 s and 2.03 s
    assert r.gaps.count == 2
    assert r.gaps.total_s == pytest.approx(1.237 + 2.028, abs=2e-3)
    assert r.gaps.longest_s == pytest.approx(2.028, abs=1e-3)
    # idle: 60 s lead-in, mean 82.9 W (PROVENANCE.md); the median of the samples up to 1 s
    # before the first request
    requests = json.loads((run_dir / "requests_core.json").read_text())
    first = min(requests["request_timestamps"])
    assert r.idle_source == "lead-in"
    assert r.idle_w == pytest.approx(np.median(p[t < first - 1.0]), abs=0.2)
    assert r.idle_w == pytest.approx(82.9, abs=0.3)
    run = read_run(run_dir)
    assert r.busy_share == pytest.approx(np.mean(run.power_w[run.valid] > BUSY_FACTOR * r.idle_w))
    assert 0.6 < r.busy_share < 0.8  # 172 s of load in 232 s
    # PROVENANCE.md: peak 518.6 W on the samples; the grid interpolates between them
    assert r.peak_w <= p.max() and r.peak_w > 500.0
    # 119 requests, 1,409,992 prompt tokens (1,280,816 cached), 31,474 output tokens
    assert (r.requests, r.requests_in_window) == (119, 119)
    assert (r.input_tokens, r.output_tokens, r.cached_tokens) == (1_409_992, 31_474, 1_280_816)
    assert r.cache_hit_share == pytest.approx(1_280_816 / 1_409_992)
    assert r.request_log == "requests_core.json"
    assert r.has_ttft and not r.engine_log
    assert r.model is None and r.outside_envelope_share is None


def test_idle_level_without_lead_in(measured_dir, tmp_path):
    """A log that starts with the load: the idle level is the 5 % quantile of power."""
    run_dir = copy_run(measured_dir / QWEN_R4, tmp_path / "r")
    requests = json.loads((run_dir / "requests_core.json").read_text())
    t, _ = power_rows(run_dir)
    lines = (run_dir / "power.csv").read_text().splitlines(keepends=True)
    start = int(np.searchsorted(t, min(requests["request_timestamps"]))) + 1  # file line
    (run_dir / "power.csv").write_text("".join(lines[:1] + lines[start - 1:]))
    run = read_run(run_dir)
    r = inspect_run(run)
    assert r.idle_source == "p5"
    assert r.idle_w == pytest.approx(np.quantile(run.power_w[run.valid], 0.05))
    # the full run's lead-in gives the GPU's idle (82-88 W per A100, PROVENANCE.md)
    full = inspect_run(read_run(measured_dir / QWEN_R4))
    assert full.idle_source == "lead-in" and 82.0 <= full.idle_w <= 88.0


def test_model_coverage_and_envelope_share_are_wired(measured_dir):
    calls = []
    model = object()

    def envelope_share(m, run):
        calls.append((m, run.config_id))
        return 0.125

    items = inspect_paths([measured_dir / QWEN_R4, measured_dir / GEMMA_TP2],
                          models={"qwen3-8b_A100_tp1": model}, envelope_share=envelope_share)
    qwen, gemma = items
    assert (qwen.model, qwen.outside_envelope_share) == ("qwen3-8b_A100_tp1", 0.125)
    assert (gemma.model, gemma.outside_envelope_share) == (None, None)
    assert calls == [(model, "qwen3-8b_A100_tp1")]  # once, for the covered run only
    text = format_inspections(items)
    assert "model          qwen3-8b_A100_tp1; 12.5% of valid steps outside its operating " \
           "envelope" in text
    assert "model          none in the library for this configuration" in text
    assert "unknown (no model library read)" in format_inspections(items, models_known=False)


def test_unreadable_runs_do_not_hide_the_others(measured_dir, tmp_path):
    good = copy_run(measured_dir / QWEN_R4, tmp_path / "runs" / "good")
    bad = copy_run(measured_dir / QWEN_R4, tmp_path / "runs" / "bad")
    lines = (bad / "power.csv").read_text().splitlines(keepends=True)
    cells = lines[9].split(",")
    cells[3] = "N/A"
    lines[9] = ",".join(cells)  # file line 10
    (bad / "power.csv").write_text("".join(lines))
    items = inspect_paths([tmp_path / "runs", tmp_path / "nowhere"])
    assert [type(i) for i in items] == [Unreadable, RunInspection, Unreadable]
    assert items[0].source == str(bad.resolve())
    assert f"{bad.resolve() / 'power.csv'}, line 10, column 'power.draw [W]'" in items[0].error
    assert items[1].source == str(good.resolve())
    assert "nowhere" in items[2].error and "not found" in items[2].error
    text = format_inspections(items)
    assert text.count("\nerror: ") + text.startswith("error: ") == 2
    assert f"run {items[1].run_id}" in text


# ------------------------------------------------------------------------------------ CLI


def test_cli_text_and_json(measured_dir, tmp_path, capsys):
    js = tmp_path / "inspect.json"
    rc = main(["inspect", str(measured_dir / QWEN_R4), str(AGENTIC_DIR), "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(js.read_text())
    assert doc["max_gap_s"] == 10.0 and doc["library"]["version"]
    qwen, agentic = doc["runs"]
    assert qwen["status"] == agentic["status"] == "ok"
    assert agentic["run_id"] == "a100_agentic_tp1_1784657707"
    assert agentic["gaps"]["count"] == 2 and agentic["gaps"]["longest_s"] == pytest.approx(
        2.028, abs=1e-3)
    assert len(agentic["gaps"]["intervals_s"]) == 2
    assert agentic["cached_tokens"] == 1_280_816 and agentic["engine_log"] is False
    assert agentic["serving"]["enable_prefix_caching"] is True
    # the bundled library covers Qwen3-8B on one A100
    assert qwen["model"] == agentic["model"] == "qwen3-8b_A100_tp1"
    assert 0.0 <= agentic["outside_envelope_share"] <= 1.0
    # the text says the same
    assert "run a100_agentic_tp1_1784657707" in out
    assert "prefix caching on" in out and "prefix caching off" in out
    assert "gaps           2 (3.27 s in all, longest 2.03 s;" in out
    assert "1,280,816 prompt tokens cached (90.8% of prompt tokens)" in out
    assert "engine log     none (power and request logs only)" in out
    assert "engine log     engine.csv" in out
    assert "idle           82.9 W (median of the idle lead-in)" in out


def test_cli_max_gap_s_and_named_errors(measured_dir, tmp_path, capsys):
    js = tmp_path / "inspect.json"
    rc = main(["inspect", str(AGENTIC_DIR), str(measured_dir / QWEN_R4), "--max-gap-s", "2",
               "--json", str(js)])
    out = capsys.readouterr().out
    assert rc == 2
    # the 2.028 s gap lies between file lines 744 and 745 (shared PROVENANCE.md: 2.03 s)
    assert "power.csv, line 745, column 'timestamp': gap of 2.028 s between samples after " \
           "line 744" in out
    assert "run a100_validate_tp1_r4p0_b1p0_s20260712_1784415439" in out  # the other run
    runs = json.loads(js.read_text())["runs"]
    assert [r["status"] for r in runs] == ["error", "ok"]
    # a bad option value is argparse's error (exit 2)
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(AGENTIC_DIR), "--max-gap-s", "0"])
    assert info.value.code == 2


def test_gap_lines_for_fit_and_validate(measured_dir):
    runs = [read_run(AGENTIC_DIR / OPENHANDS), read_run(measured_dir / GEMMA_TP2)]
    text = format_gap_lines(runs)
    masked = int((~runs[0].valid).sum())  # grid steps inside the two gaps
    assert 12 <= masked <= 14  # (1.237 + 2.028 s) / 0.25 s, less the ends
    assert text.splitlines() == [
        "sampling gaps (masked: not fitted on, not scored):",
        f"  a100_agentic_tp1_1784657707: 2 gaps, 3.27 s in all, longest 2.03 s "
        f"({masked} steps masked)"]
    assert format_gap_lines(runs[1:]) == ""  # the Gemma log has no gap
