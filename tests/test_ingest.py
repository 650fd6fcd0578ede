"""Tests of the measured-run reader (distgen.ingest) on the fixture runs in tests/data/measured.

Reference values come from the fixture files themselves (manifest.json fields, power.csv rows
parsed here with the csv module), never from the reader under test.
"""

from __future__ import annotations

import csv
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from distgen.errors import InputError
from distgen.ingest import (EngineLog, RequestLog, RunTrace, config_id_for, discover_runs,
                            read_run, read_runs)

#: The prefix-cache agentic run (no engine.csv, two sampling gaps); kept apart from
#: tests/data/measured so that tests fitting the whole of that folder are unchanged.
AGENTIC_DIR = Path(__file__).parent / "data" / "measured_agentic"
OPENHANDS = "sealed_openhands_qwen3-8b_a100/a100_agentic_tp1_1784657707"
QWEN_R4 = "validate_qwen3-8b_a100/a100_validate_tp1_r4p0_b1p0_s20260712_1784415439"
QWEN_R2P5 = "arrival_rate_qwen3-8b_a100_r2p5/a100_validate_tp1_r2p5_b1p0_s20260712_1784415659"
GEMMA_TP2 = ("validate_gemma-4-26b-a4b_moe_transfer_a100/"
             "a100_validate_tp2_r4p0_b1p0_s20260712_1784415591")
ALL_RUNS = (QWEN_R4, QWEN_R2P5, GEMMA_TP2)


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
def copy_run(measured_dir, tmp_path):
    """Copy a fixture run into tmp_path and return the copy's folder."""
    def _copy(name: str = QWEN_R4, tag: str = "") -> Path:
        dst = tmp_path / (Path(name).name + tag)
        src = (AGENTIC_DIR if name == OPENHANDS else measured_dir) / name
        shutil.copytree(src, dst)
        for f in dst.iterdir():
            f.chmod(0o644)
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


def _row_epoch_s(line: str) -> tuple[float, float]:
    """(epoch [s], power [W]) of one power.csv row of a fixture (local time, UTC-7)."""
    cells = line.split(",")
    t = datetime.strptime(cells[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
    return t.timestamp() + 25200.0, float(cells[3])


def test_long_gap_masked_by_default_and_refused_past_max_gap_s(copy_run, measured_dir):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    # Drop file lines 20..30 (11 samples): a gap of about 3 s between lines 19 and 31.
    write_lines(run / "power.csv", lines[:19] + lines[30:])
    (ta, _), (tb, _) = _row_epoch_s(lines[18]), _row_epoch_s(lines[30])
    got = read_run(run)  # default max_gap_s = 10 s accepts it
    ref = read_run(measured_dir / QWEN_R4)  # the fixture's own 0.763 s gap stays
    assert got.gaps.count == 2 and got.gaps.longest_s == pytest.approx(tb - ta, abs=1e-6)
    (a, b), other = got.gaps.intervals_s
    assert (a + got.start_s, b + got.start_s) == (pytest.approx(ta), pytest.approx(tb))
    assert other == pytest.approx(ref.gaps.intervals_s[0])
    inside = (got.time_s > ta + 1e-9) & (got.time_s < tb - 1e-9)
    assert inside.sum() >= 11
    np.testing.assert_array_equal(got.valid, ~inside & ref.valid)
    first = int(np.argmax(inside))
    assert got.gaps.step_ranges[0] == (first, first + int(inside.sum()))
    assert np.all(np.isfinite(got.power_w))  # interpolated for plotting, flagged invalid
    # past the threshold: refused, naming the line after the gap and the one before it
    err = raises(run, "power.csv", line=20, column="timestamp",
                 match=["gap of 3.0", "max_gap_s = 2.0", "after line 19"], max_gap_s=2.0)
    assert "--max-gap-s" in str(err)


def test_short_gap_interpolated_for_plotting_but_invalid(copy_run):
    run = copy_run()
    lines = lines_of(run / "power.csv")
    # Drop lines 100..102: a 1 s gap between lines 99 (289.57 W) and 103 (291.39 W).
    write_lines(run / "power.csv", lines[:99] + lines[102:])
    got = read_run(run)
    (ta, pa), (tb, pb) = _row_epoch_s(lines[98]), _row_epoch_s(lines[102])
    assert (pa, pb) == (289.57, 291.39)
    inside = (got.time_s > ta) & (got.time_s < tb)
    assert inside.sum() >= 3 and not got.valid[inside].any()
    expected = pa + (pb - pa) * (got.time_s[inside] - ta) / (tb - ta)
    np.testing.assert_allclose(got.power_w[inside], expected, atol=1e-6)
    # the steps at the samples on either side of the gap are measured: valid
    k = np.flatnonzero(inside)
    assert got.valid[k[0] - 1] and got.valid[k[-1] + 1]
    # ... and a tighter max_gap_s refuses that same gap.
    raises(run, "power.csv", line=100, match=["gap of 1.0", "after line 99"], max_gap_s=0.9)


def test_fixture_gaps_follow_the_1p5_interval_rule(measured_dir):
    """Every spacing over 1.5 x the median spacing of a fixture log is a gap, none other."""
    for name in ALL_RUNS:
        rows = read_power_rows(measured_dir / name / "power.csv")
        t = np.array(sorted({datetime.strptime(r["timestamp"], "%Y/%m/%d %H:%M:%S.%f")
                             .replace(tzinfo=timezone.utc).timestamp() for r in rows}))
        d = np.diff(t)
        expected = d[d > 1.5 * np.median(d)]
        got = read_run(measured_dir / name).gaps
        assert got.nominal_interval_s == pytest.approx(np.median(d))
        np.testing.assert_allclose([b - a for a, b in got.intervals_s], expected, atol=1e-6)
    # the r4.0 log's one gap (0.763 s, PROVENANCE.md) and the r2.5 log's (0.413 s)
    assert read_run(measured_dir / QWEN_R4).gaps.longest_s == pytest.approx(0.763, abs=1e-3)
    assert read_run(measured_dir / QWEN_R2P5).gaps.longest_s == pytest.approx(0.413, abs=1e-3)


# --------------------------------------------------------- the gap and clock cases


def test_real_2p03_s_gap_and_repeated_row_after_it(copy_run):
    """Issue #13: a 250 ms A100 log with a 2.03 s gap (and a 1.24 s one) is read with the
    default threshold; the gaps are masked; a row after a gap that repeats the previous row's
    power is stale and the gap runs on to the next row."""
    run = copy_run(OPENHANDS)
    lines = lines_of(run / "power.csv")
    rows = [_row_epoch_s(ln) for ln in lines[1:]]
    t = np.array([r[0] for r in rows])
    d = np.diff(t)
    big = np.flatnonzero(d > 0.375)
    # PROVENANCE.md: two gaps, 1.24 s and 2.03 s, the longer after file line 744
    np.testing.assert_allclose(d[big], [1.237, 2.028], atol=1e-3)
    assert big[1] + 2 == 744
    got = read_run(run)
    assert got.gaps.count == 2
    assert got.gaps.longest_s == pytest.approx(d[big[1]], abs=1e-6)
    assert got.gaps.total_s == pytest.approx(d[big].sum(), abs=1e-6)
    assert (~got.valid).sum() == got.gaps.invalid_steps == sum(
        int(((got.time_s > t[k] + 1e-9) & (got.time_s < t[k + 1] - 1e-9)).sum()) for k in big)

    # make file line 745 (the row after the 2.03 s gap) repeat line 744's power exactly
    lines[744] = set_field(lines[744], 3, lines[743].rstrip("\n").split(",")[3])
    write_lines(run / "power.csv", lines)
    stale = read_run(run)
    # the gap now ends at line 746: 2.028 s + the stale row's 0.25 s
    assert stale.gaps.longest_s == pytest.approx(t[big[1] + 2] - t[big[1]], abs=1e-6)
    assert stale.gaps.count == 2 and stale.gaps.invalid_steps == got.gaps.invalid_steps + 1
    # the old 2.0 s limit refuses it, naming the line that ends the gap
    raises(run, "power.csv", line=746, match=["gap of 2.2", "after line 744"], max_gap_s=2.0)


def test_tp2_second_gpu_7_ms_later(copy_run, measured_dir):
    """Issue #13: separate loggers (DCGM): GPU 1's rows are 7 ms after GPU 0's. Each GPU is
    interpolated onto one grid; the grid starts where both are logged."""
    run = copy_run(GEMMA_TP2)
    lines = lines_of(run / "power.csv")
    out = [lines[0]]
    for ln in lines[1:]:
        if ln.split(",")[1] == "1":
            t = datetime.strptime(ln.split(",")[0], "%Y/%m/%d %H:%M:%S.%f")
            ln = set_field(ln, 0, (t + timedelta(milliseconds=7)).strftime(
                "%Y/%m/%d %H:%M:%S.%f")[:-3])
        out.append(ln)
    write_lines(run / "power.csv", out)
    got = read_run(run)
    assert got.gaps.count == 0 and got.valid.all()
    by_gpu: dict[str, list] = {"0": [], "1": []}
    for ln in out[1:]:
        by_gpu[ln.split(",")[1]].append(_row_epoch_s(ln))
    (t0, p0), (t1, p1) = (np.array(by_gpu[g]).T for g in ("0", "1"))
    assert got.start_s == pytest.approx(t1[0], abs=1e-6)  # GPU 1 starts 7 ms later
    expected = np.interp(got.time_s, t0, p0) + np.interp(got.time_s, t1, p1)
    np.testing.assert_allclose(got.power_w, expected, atol=1e-6)
    # the same energy as the unshifted log, to within the shift's effect
    ref = read_run(measured_dir / GEMMA_TP2)
    assert got.power_w.mean() == pytest.approx(ref.power_w.mean(), rel=0.01)


def test_one_second_sampling_reordered_columns_header_without_units(copy_run, measured_dir):
    """Issue #13: 1 s sampling, reordered columns, 'power.draw' without a unit."""
    ref = read_run(measured_dir / QWEN_R4)
    run = copy_run()
    lines = lines_of(run / "power.csv")
    header = lines[0].rstrip("\n").split(",")
    keep = lines[1::4]  # every 4th sample: 1 s apart
    order = [3, 2, 0, 1]  # power, uuid, timestamp, index
    out = [",".join(header[j].replace("power.draw [W]", "power.draw") for j in order) + "\n"]
    out += [",".join(ln.rstrip("\n").split(",")[j] for j in order) + "\n" for ln in keep]
    write_lines(run / "power.csv", out)
    got = read_run(run)
    samples = np.array([_row_epoch_s(ln) for ln in keep])
    assert got.gaps.nominal_interval_s == pytest.approx(np.median(np.diff(samples[:, 0])))
    assert got.gaps.nominal_interval_s == pytest.approx(1.0, abs=0.01)
    # gaps by the rule of docs/DATA.md on the kept samples: a spacing over 1.5 x the median,
    # run on past a row that repeats the last power reading (idle readings often do)
    t, pw = samples.T
    d = np.diff(t)
    expected = []
    for k in np.flatnonzero(d > 1.5 * np.median(d)):
        stop = k + 2 if pw[k + 1] == pw[k] else k + 1
        expected.append(t[stop] - t[k])
    assert len(expected) == got.gaps.count == 1  # where the fixture's 0.76 s gap was
    assert got.gaps.longest_s == pytest.approx(expected[0], abs=1e-6)
    np.testing.assert_allclose(got.power_w, np.interp(got.time_s, *samples.T), atol=1e-6)
    assert got.start_s == ref.start_s and got.n_steps <= ref.n_steps


def test_tp2_instant_missing_one_gpu_is_a_gap(copy_run):
    run = copy_run(GEMMA_TP2)
    lines = lines_of(run / "power.csv")
    assert ",1,GPU-e2681f6e" in lines[10]
    t_missing = _row_epoch_s(lines[10])[0]
    del lines[10]  # file line 11 = GPU 1 at the 5th instant
    write_lines(run / "power.csv", lines)
    got = read_run(run)
    # GPU 1's samples on either side are 0.5 s apart: one gap, not an error
    assert got.gaps.count == 1
    (a, b), = got.gaps.intervals_s
    assert a + got.start_s < t_missing < b + got.start_s
    assert b - a == pytest.approx(0.5, abs=0.01)
    assert not got.valid[(got.time_s > a + got.start_s) & (got.time_s < b + got.start_s)].any()


def test_tp2_systematic_misalignment_is_an_error(copy_run):
    # GPU 1's log starts 30 s (120 samples) after GPU 0's: not a gap, a missing GPU
    run = copy_run(GEMMA_TP2)
    lines = lines_of(run / "power.csv")
    gpu1 = [i for i, ln in enumerate(lines) if ln.split(",")[1] == "1"]
    drop = set(gpu1[:120])
    write_lines(run / "power.csv", [ln for i, ln in enumerate(lines) if i not in drop])
    raises(run, "power.csv", match=["GPU-e2681f6e-8d94-2d66-484f-43ea602335f9's log starts 30.",
                                    "after another GPU's"])
    # GPU 1 logged every 0.5 s while GPU 0 every 0.25 s: not gaps, another cadence
    run = copy_run(GEMMA_TP2, tag="-cadence")
    drop = set(gpu1[1::2])
    write_lines(run / "power.csv", [ln for i, ln in enumerate(lines) if i not in drop])
    raises(run, "power.csv", match=["sampled every 0.500 s", "one cadence"])


def test_single_gpu_log_without_gpu_column_and_epoch_seconds(copy_run, measured_dir):
    """The minimal power CSV of docs/DATA.md: time [epoch s], watts; one GPU, no id column."""
    ref = read_run(measured_dir / QWEN_R4)
    run = copy_run()
    lines = lines_of(run / "power.csv")
    out = ["timestamp,power_w\n"] + [f"{_row_epoch_s(ln)[0]:.3f},{_row_epoch_s(ln)[1]}\n"
                                     for ln in lines[1:]]
    write_lines(run / "power.csv", out)
    edit_json(run / "manifest.json", lambda m: (m["clock"].update(power_timestamp_basis=
                                                                  "unix_epoch"),
                                                m["server"].pop("active_gpu_uuids")))
    got = read_run(run)
    assert got.start_s == pytest.approx(ref.start_s, abs=1e-6)
    np.testing.assert_allclose(got.power_w, ref.power_w, atol=1e-6)
    np.testing.assert_array_equal(got.valid, ref.valid)
    # ... but a TP2 log needs the GPU column
    edit_json(run / "manifest.json", lambda m: m.update(tp=2))
    raises(run, "power.csv", line=1, match=["no GPU-id column", "tp = 2", "uuid"])


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


# ------------------------------------------------------------------ prefix-cache requests


def test_cached_prompt_tokens_read_sorted_and_aligned():
    """The OpenHands log is in session order; cached tokens follow their requests when the
    reader sorts by arrival, and sum to the manifest's prefix-cache hit count."""
    run = read_run(AGENTIC_DIR / OPENHANDS)
    doc = json.loads((AGENTIC_DIR / OPENHANDS / "requests_core.json").read_text())
    man = json.loads((AGENTIC_DIR / OPENHANDS / "manifest.json").read_text())
    req = run.requests
    assert np.any(np.diff(doc["request_timestamps"]) < 0)  # not globally sorted in the file
    assert np.all(np.diff(req.arrival_s) >= 0) and len(req) == 119
    assert req.cached_tokens.dtype == np.int64
    # PROVENANCE.md: 1,280,816 of 1,409,992 prompt tokens cached (91 %)
    assert req.cached_tokens.sum() == man["instrumentation"]["prefix_cache"]["hit_token_increase"]
    assert req.cached_tokens.sum() == 1_280_816 and req.input_tokens.sum() == 1_409_992
    order = np.argsort(doc["request_timestamps"], kind="stable")
    for key, got in (("cached_prompt_tokens", req.cached_tokens), ("input_lens", req.input_tokens),
                     ("output_lens", req.output_tokens), ("turn_idx", req.turn_index)):
        np.testing.assert_array_equal(got, np.array(doc[key])[order], err_msg=key)
    assert np.all(req.cached_tokens <= req.input_tokens)
    assert run.serving.enable_prefix_caching is True  # manifest server.enable_prefix_caching
    assert run.serving.max_num_seqs == 128
    # a window keeps the arrays aligned
    w = req.window(req.arrival_s[10], req.arrival_s[20])
    np.testing.assert_array_equal(w.cached_tokens, req.cached_tokens[10:20])
    np.testing.assert_array_equal(w.turn_index, req.turn_index[10:20])


def test_cached_tokens_zero_when_absent(measured_dir):
    run = read_run(measured_dir / QWEN_R4)
    np.testing.assert_array_equal(run.requests.cached_tokens, np.zeros(200, np.int64))
    assert run.requests.turn_index is None
    assert run.serving.enable_prefix_caching is False  # manifest server: false


def test_cached_tokens_alias_flag_inference_and_errors(copy_run):
    run = copy_run(OPENHANDS)
    path = run / "requests_core.json"
    edit_json(path, lambda d: d.update(cached_tokens=d.pop("cached_prompt_tokens")))
    assert read_run(run).requests.cached_tokens.sum() == 1_280_816  # the alias
    # the manifest does not say: cached tokens in the log mean the cache was on
    edit_json(run / "manifest.json", lambda m: m["server"].pop("enable_prefix_caching"))
    assert read_run(run).serving.enable_prefix_caching is True
    # the manifest says off, the log has cached tokens: a contradiction, named
    edit_json(run / "manifest.json", lambda m: m["server"].update(enable_prefix_caching=False))
    raises(run, "manifest.json", column="server.enable_prefix_caching",
           match=["1280816 cached prompt tokens", "requests_core.json"])
    edit_json(run / "manifest.json", lambda m: m["server"].update(enable_prefix_caching=True))
    doc = json.loads(path.read_text())
    doc["cached_tokens"][7] = doc["input_lens"][7] + 1
    path.write_text(json.dumps(doc))
    raises(run, "requests_core.json", column="cached_tokens",
           match=["'cached_tokens'[7]", "more than the prompt's", "'input_lens'[7]"])


# ------------------------------------------------------- vLLM bench serve result JSON


def _bench_serve_result(doc: dict, monotonic_zero_s: float, fail: int | None = None) -> dict:
    """A `vllm bench serve --save-result --save-detailed` result built from a fixture log:
    the keys that command writes, with start_times on a monotonic clock (perf_counter)."""
    n = len(doc["input_lens"])
    out = {"date": "20260718-155900", "endpoint_type": "vllm", "backend": "vllm",
           "label": None, "model_id": "Qwen/Qwen3-8B", "tokenizer_id": "Qwen/Qwen3-8B",
           "num_prompts": n, "request_rate": 4.0, "burstiness": 1.0, "max_concurrency": None,
           "duration": 60.0, "completed": n, "failed": 0,
           "total_input_tokens": sum(doc["input_lens"]),
           "total_output_tokens": sum(doc["output_lens"]),
           "input_lens": list(doc["input_lens"]), "output_lens": list(doc["output_lens"]),
           "ttfts": list(doc["ttfts"]),
           "itls": [[0.02] * max(o - 1, 0) for o in doc["output_lens"]],
           "latencies": [t + 0.02 * max(o - 1, 0) for t, o in zip(doc["ttfts"],
                                                                    doc["output_lens"])],
           "start_times": [t - monotonic_zero_s for t in doc["request_timestamps"]],
           "generated_texts": [""] * n, "errors": [""] * n, "mean_ttft_ms": 40.0}
    if fail is not None:
        out["errors"][fail] = "Request timed out"
        out["output_lens"][fail], out["ttfts"][fail], out["itls"][fail] = 0, 0.0, []
        out["completed"], out["failed"] = n - 1, 1
    return out


def test_vllm_bench_serve_result_json(copy_run, measured_dir):
    ref = read_run(measured_dir / QWEN_R4).requests
    run = copy_run()
    doc = json.loads((run / "requests_core.json").read_text())
    (run / "requests_core.json").unlink()
    zero = 1784409000.0  # epoch of the client's monotonic zero (made up for the test)
    result = _bench_serve_result(doc, zero, fail=5)
    name = "vllm-4.0qps-Qwen3-8B-20260718-155900.json"  # the command's own file name
    (run / name).write_text(json.dumps(result))
    # start_times are not epoch: named, with what to set
    raises(run, name, column="start_times", match=["not a Unix-epoch time", "monotonic",
                                                   "clock.request_epoch_offset_s"])
    edit_json(run / "manifest.json", lambda m: m["clock"].update(
        request_timestamp_basis="monotonic", request_epoch_offset_s=zero))
    req = read_run(run).requests
    keep = np.arange(200) != 5  # the failed request (errors[5]) is dropped
    assert len(req) == 199
    np.testing.assert_allclose(req.arrival_s, np.array(doc["request_timestamps"])[keep],
                               atol=1e-6)
    np.testing.assert_array_equal(req.input_tokens, ref.input_tokens[keep])
    np.testing.assert_allclose(req.latency_s, np.array(result["latencies"])[keep])
    # the manifest key the monotonic basis needs, named when missing
    edit_json(run / "manifest.json", lambda m: m["clock"].pop("request_epoch_offset_s"))
    raises(run, "manifest.json", column="clock.request_epoch_offset_s", match="missing key")


def test_bench_result_without_arrival_times_or_arrays(copy_run):
    run = copy_run()
    doc = json.loads((run / "requests_core.json").read_text())
    (run / "requests_core.json").unlink()
    result = _bench_serve_result(doc, 0.0)
    # benchmark_serving.py (vLLM <= 0.10) writes no per-request times at all
    del result["start_times"]
    (run / "result.json").write_text(json.dumps(result))
    raises(run, "result.json", column="request_timestamps",
           match=["no per-request arrival times", "start_times", "request_rate",
                  "--save-detailed"])
    # saved without --save-detailed: no per-request arrays
    for key in ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors",
                "latencies"):
        del result[key]
    (run / "result.json").write_text(json.dumps(result))
    raises(run, "result.json", column="input_lens", match="re-run the benchmark with")


def test_request_log_discovery(copy_run):
    run = copy_run()
    core = (run / "requests_core.json").read_text()
    (run / "requests_core.json").unlink()
    (run / "vllm-result.json").write_text(core)
    (run / "vllm-result.pytorch.json").write_text("[]")  # a side file vllm may write
    assert len(read_run(run).requests) == 200  # the only other JSON is the log
    (run / "notes.json").write_text("{}")
    err = raises(run, run.name, match=["several JSON files", "notes.json", "vllm-result.json"])
    assert "pytorch" not in str(err)
    (run / "requests.json").write_text(core)  # requests.json wins over the rest
    assert len(read_run(run).requests) == 200


def test_minimal_manifest_of_data_md(copy_run, measured_dir):
    """docs/DATA.md's minimal manifest: model, gpu, tp and the clock of the power log."""
    ref = read_run(measured_dir / QWEN_R4)
    run = copy_run()
    (run / "engine.csv").unlink()
    (run / "manifest.json").write_text(json.dumps({
        "model": "Qwen/Qwen3-8B", "gpu": "a100", "tp": 1,
        "clock": {"power_timestamp_basis": "local_wall_time", "local_utc_offset_s": -25200}}))
    got = read_run(run)
    assert (got.config_id, got.run_id) == ("qwen3-8b_A100_tp1", run.name)
    assert got.start_s == ref.start_s
    np.testing.assert_array_equal(got.power_w, ref.power_w)
    assert got.serving == type(ref.serving)()  # defaults
    assert got.engine is None


def test_max_gap_s_must_be_positive(measured_dir):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_gap_s"):
            read_run(measured_dir / QWEN_R4, max_gap_s=bad)


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
