"""distgen.io: run folders, shard parts, Parquet series, site CSV, manifest, request traces."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from distgen.errors import DistgenError, InputError
from distgen.io import (MANIFEST_NAME, MARKER_NAME, PARTS_DIR_NAME, PartWriter, SeriesWriter,
                        atomic_path, commit_file, completed_shards, file_digest,
                        finalize_output_dir, is_complete, is_ours, open_part, parts_dir,
                        prepare_output_dir, read_manifest, read_request_trace, read_series,
                        verify_manifest, write_site_csv)
from distgen.io.parts import marker_path, stream_path

WORKLOADS = Path(__file__).parent / "data" / "workloads"
AZURE = WORKLOADS / "AzureLLMInferenceTrace_code_prefix38982.csv"
AZURE_SHA256 = "0d43ae1ed22df74245d89ee977b422197b080395e245a7abe65cf9109de9e3c5"
GRID = {"start_time": "2025-01-01T00:00:00", "interval_s": 0.25, "n_steps": 40}


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _fake_run(folder: Path, files=("site.parquet", "rows.parquet")) -> None:
    """A completed distgen run in ``folder`` listing ``files``."""
    prepare_output_dir(folder)
    for f in files:
        (folder / f).write_bytes(b"old")
    finalize_output_dir(folder, {"files": [{"path": f} for f in files]})


# ---------------------------------------------------------------------- outdir

def test_missing_and_empty_folder_are_prepared(tmp_path):
    out = prepare_output_dir(tmp_path / "a" / "b")
    assert (out / MARKER_NAME).is_file()
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["pid"] == os.getpid() and "start_time" in marker
    assert not is_complete(out) and is_ours(out)


def test_foreign_nonempty_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DistgenError) as err:
        prepare_output_dir(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "--overwrite" in msg and "another folder" in msg
    assert _names(tmp_path) == {"notes.txt"}


def test_foreign_folder_with_overwrite_keeps_user_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "site.parquet").write_text("user's own file of the same name")
    (tmp_path / MANIFEST_NAME).write_text('{"format": "something-else"}')
    prepare_output_dir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "site.parquet").exists()  # replaced only when we commit ours
    tmp = atomic_path(tmp_path / "site.parquet")
    tmp.write_text("ours")
    commit_file(tmp, tmp_path / "site.parquet")
    finalize_output_dir(tmp_path, {"files": ["site.parquet"]})
    assert (tmp_path / "site.parquet").read_text() == "ours"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert read_manifest(tmp_path)["files"] == ["site.parquet"]


def test_previous_run_is_replaced_removing_only_its_files(tmp_path):
    _fake_run(tmp_path)
    (tmp_path / "my_analysis.ipynb").write_text("user")
    (tmp_path / PARTS_DIR_NAME).mkdir()
    (tmp_path / PARTS_DIR_NAME / "shard-00000.json").write_text("{}")
    prepare_output_dir(tmp_path)
    assert _names(tmp_path) == {"my_analysis.ipynb", MARKER_NAME}
    assert not is_complete(tmp_path) and is_ours(tmp_path)


def test_manifest_file_list_cannot_escape_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    prepare_output_dir(run)
    finalize_output_dir(run, {"files": ["../precious.txt", str(outside), {"path": "a.csv"}]})
    prepare_output_dir(run)
    assert outside.read_text() == "keep"


def test_interrupted_run_is_ours(tmp_path):
    prepare_output_dir(tmp_path)
    (tmp_path / "rows.parquet").write_text("partial")
    (tmp_path / ".rows.parquet.distgen-tmp-999").write_text("tmp")
    (tmp_path / "user.txt").write_text("user")
    # No manifest: not complete, but ours, so neither refused nor needing --overwrite.
    assert not is_complete(tmp_path) and is_ours(tmp_path)
    with pytest.raises(DistgenError, match="incomplete"):
        read_manifest(tmp_path)
    prepare_output_dir(tmp_path)
    assert "user.txt" in _names(tmp_path)
    assert ".rows.parquet.distgen-tmp-999" not in _names(tmp_path)  # our stale temp file


def test_old_file_list_survives_a_stop_after_the_manifest_was_removed(tmp_path):
    """The marker carries the old file list, so an interrupted clean-up is finished later."""
    _fake_run(tmp_path)
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    # simulate a crash right after the manifest was removed
    from distgen.io.outdir import _write_marker
    _write_marker(tmp_path, ["site.parquet", "rows.parquet"])
    (tmp_path / MANIFEST_NAME).unlink()
    assert doc["files"]
    prepare_output_dir(tmp_path)
    assert _names(tmp_path) == {MARKER_NAME}


def test_finalize_writes_manifest_then_removes_marker_and_parts(tmp_path):
    prepare_output_dir(tmp_path)
    pdir = parts_dir(tmp_path)
    (pdir / "x.npy").write_bytes(b"1")
    path = finalize_output_dir(tmp_path, {"seed": np.int64(7), "units": {"power_w": "W"}})
    assert path == tmp_path / MANIFEST_NAME
    assert _names(tmp_path) == {MANIFEST_NAME}
    doc = read_manifest(tmp_path)
    assert doc["format"] == "distgen.run" and doc["seed"] == 7
    assert is_complete(tmp_path)
    assert read_manifest(tmp_path / MANIFEST_NAME) == doc


def test_finalize_order_manifest_before_marker(tmp_path, monkeypatch):
    """If finalize dies after the manifest, the folder is complete; never marker-less first."""
    prepare_output_dir(tmp_path)
    import distgen.io.outdir as outdir
    seen = []
    real_unlink = Path.unlink

    def spy(self, *a, **k):
        if self.name == MARKER_NAME:
            seen.append((self.parent / MANIFEST_NAME).is_file())
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", spy)
    outdir.finalize_output_dir(tmp_path, {})
    assert seen == [True]


def test_complete_folder_and_resume(tmp_path):
    prepare_output_dir(tmp_path)
    pdir = parts_dir(tmp_path)
    (pdir / "keep.npy").write_bytes(b"1")
    prepare_output_dir(tmp_path, resume=True)
    assert (pdir / "keep.npy").exists()
    with pytest.raises(DistgenError, match="resume"):
        prepare_output_dir(tmp_path / "fresh", resume=True)
    other = tmp_path / "foreign"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(DistgenError, match="not a distgen run folder"):
        prepare_output_dir(other, resume=True)


def test_resume_of_a_complete_run_makes_it_incomplete_again(tmp_path):
    _fake_run(tmp_path)
    prepare_output_dir(tmp_path, resume=True)
    assert not is_complete(tmp_path) and is_ours(tmp_path)
    assert (tmp_path / "site.parquet").exists()


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DistgenError, match="not a folder"):
        prepare_output_dir(f)


# ---------------------------------------------------------------------- manifest

def test_read_manifest_errors(tmp_path):
    with pytest.raises(DistgenError, match="not found"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{\n "format": "distgen.run",\n oops}')
    with pytest.raises(InputError) as err:
        read_manifest(tmp_path)
    assert MANIFEST_NAME in str(err.value) and err.value.line == 3
    (tmp_path / MANIFEST_NAME).write_text('[1, 2]')
    with pytest.raises(InputError, match="JSON object"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"format": "other"}')
    with pytest.raises(InputError, match="format"):
        read_manifest(tmp_path)


def test_file_digest_and_verify(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert file_digest(tmp_path / "a.bin") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert file_digest(AZURE) == AZURE_SHA256
    prepare_output_dir(tmp_path, overwrite=True)
    finalize_output_dir(tmp_path, {"files": [
        {"path": "a.bin", "bytes": 3, "sha256": file_digest(tmp_path / "a.bin")}]})
    verify_manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"abd")
    with pytest.raises(InputError, match="sha256"):
        verify_manifest(tmp_path)


# ---------------------------------------------------------------------- parts

def _streams():
    return {"rows_0.25": (np.array([3, 5, 9], dtype=np.int64), 10),
            "racks_60": (np.arange(4, dtype=np.int64), 2)}


def _fill(writer: PartWriter, scale: float = 1.0) -> dict[str, np.ndarray]:
    rows = (np.arange(30, dtype=np.int64).reshape(10, 3) * int(scale))
    racks = np.full((2, 4), 75 * int(scale), dtype=np.int32)
    writer.write("rows_0.25", 0, rows[:4])
    writer.write("rows_0.25", 4, rows[4:].astype(np.int32))
    writer.write("racks_60", 0, racks)
    return {"rows_0.25": rows, "racks_60": racks.astype(np.int64)}


def test_part_writer_round_trip(tmp_path):
    with PartWriter(tmp_path, 3, _streams()) as w:
        expected = _fill(w)
        marker = w.commit({"energy_j": np.float64(12.5), "n_servers": 6})
    assert marker.name == "shard-00003.json"
    done = completed_shards(tmp_path)
    assert list(done) == [3]
    assert done[3]["summary"] == {"energy_j": 12.5, "n_servers": 6}
    assert done[3]["streams"]["rows_0.25"]["shape"] == [10, 3]
    for name, want in expected.items():
        values, ids = open_part(tmp_path, 3, name)
        np.testing.assert_array_equal(values, want)
        np.testing.assert_array_equal(ids, _streams()[name][0])
        assert values.dtype == np.int64 and not values.flags.writeable
    assert all(not n.startswith(".") for n in _names(tmp_path))


def test_part_writer_retry_is_idempotent(tmp_path):
    for _ in range(2):
        with PartWriter(tmp_path, 0, _streams()) as w:
            _fill(w, scale=2.0)
            w.commit({"attempt": "same"})
    names = _names(tmp_path)
    assert names == {"shard-00000.json", "shard-00000.rows_0.25.npy", "shard-00000.racks_60.npy"}
    values, _ = open_part(tmp_path, 0, "rows_0.25")
    np.testing.assert_array_equal(values, np.arange(30.0).reshape(10, 3) * 2)


def test_part_writer_abort_leaves_no_files(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with PartWriter(tmp_path, 1, _streams()) as w:
            w.write("rows_0.25", 0, np.ones((2, 3), dtype=np.int64))
            raise RuntimeError("boom")
    assert _names(tmp_path) == set()
    w = PartWriter(tmp_path, 2, _streams())
    w.abort()
    assert _names(tmp_path) == set()
    assert completed_shards(tmp_path) == {}


def test_part_writer_abort_keeps_an_earlier_commit(tmp_path):
    with PartWriter(tmp_path, 0, _streams()) as w:
        _fill(w)
        w.commit({})
    with pytest.raises(RuntimeError):
        with PartWriter(tmp_path, 0, _streams()) as w:
            raise RuntimeError("retry died")
    assert list(completed_shards(tmp_path)) == [0]


def test_part_writer_checks(tmp_path):
    with PartWriter(tmp_path, 0, _streams()) as w:
        ones = np.ones((2, 3), dtype=np.int64)
        with pytest.raises(ValueError, match="shape"):
            w.write("rows_0.25", 0, np.ones((2, 2), dtype=np.int64))
        with pytest.raises(ValueError, match="outside"):
            w.write("rows_0.25", 9, ones)
        with pytest.raises(TypeError, match="integer"):
            w.write("rows_0.25", 0, np.ones((2, 3)))
        with pytest.raises(KeyError):
            w.write("nope", 0, ones)
        w.write("rows_0.25", 0, np.ones((10, 3), dtype=np.int64))
        with pytest.raises(ValueError, match="never written"):
            w.commit({})  # racks_60 unwritten
    assert _names(tmp_path) == set()
    with pytest.raises(ValueError, match="stream name"):
        PartWriter(tmp_path, 0, {".hidden": (np.arange(2), 3)})


def test_completed_shards_ignores_half_written(tmp_path):
    for i in range(3):
        with PartWriter(tmp_path, i, _streams()) as w:
            _fill(w, scale=i + 1.0)
            w.commit({"i": i})
    # shard 3: temp files present, no marker (a task that died mid-write)
    w = PartWriter(tmp_path, 3, _streams())
    _fill(w)
    del w
    # shard 1: marker present but a data file truncated
    p = stream_path(tmp_path, 1, "rows_0.25")
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 8)
    # shard 2: marker present but a data file missing
    stream_path(tmp_path, 2, "racks_60").unlink()
    # a marker that is not JSON
    marker_path(tmp_path, 7).write_text("{not json")
    assert list(completed_shards(tmp_path)) == [0]
    with pytest.raises(DistgenError, match="damaged"):
        open_part(tmp_path, 1, "rows_0.25")
    with pytest.raises(DistgenError, match="not finished"):
        open_part(tmp_path, 3, "rows_0.25")
    with pytest.raises(DistgenError, match="no stream"):
        open_part(tmp_path, 0, "servers_1")
    assert completed_shards(tmp_path / "missing") == {}


def test_empty_stream(tmp_path):
    with PartWriter(tmp_path, 0, {"rows_1": (np.array([], dtype=np.int64), 4)}) as w:
        w.write("rows_1", 0, np.zeros((4, 0), dtype=np.int64))
        w.commit({})
    values, ids = open_part(tmp_path, 0, "rows_1")
    assert values.shape == (4, 0) and ids.size == 0
    assert list(completed_shards(tmp_path)) == [0]


# ---------------------------------------------------------------------- series

def test_series_site_round_trip(tmp_path):
    t = np.arange(40) * 0.25
    it = np.linspace(1e6, 2e6, 40)
    fac = it * 1.3
    with SeriesWriter(tmp_path / "site.parquet", level="site", resolution_s=0.25,
                      value_columns=["it_power_w", "facility_power_w"], entity_column=None,
                      units={"it_power_w": "W", "facility_power_w": "W"}, grid=GRID,
                      metadata={"seed": np.int64(1)}) as w:
        w.write(t[:10], {"it_power_w": it[:10], "facility_power_w": fac[:10]})
        w.write(t[10:], {"it_power_w": it[10:], "facility_power_w": fac[10:]})
    assert _names(tmp_path) == {"site.parquet"}
    cols, meta = read_series(tmp_path / "site.parquet")
    assert list(cols) == ["time_s", "it_power_w", "facility_power_w"]
    np.testing.assert_array_equal(cols["time_s"], t)
    np.testing.assert_array_equal(cols["it_power_w"], it)
    np.testing.assert_array_equal(cols["facility_power_w"], fac)
    assert meta["level"] == "site" and meta["resolution_s"] == 0.25
    assert meta["units"] == {"time_s": "s", "it_power_w": "W", "facility_power_w": "W"}
    assert meta["grid"] == GRID and meta["metadata"] == {"seed": 1}


def test_series_rows_round_trip_and_close_record(tmp_path):
    ids = np.array([10, 11, 12])
    p = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = SeriesWriter(tmp_path / "rows.parquet", level="rows", resolution_s=60.0,
                     value_columns=["power_w"], entity_column="row_id",
                     units={"power_w": "W"}, grid=GRID)
    w.write(np.array([0.0, 60.0]), {"power_w": p[:2]}, entity_ids=ids)
    w.write(np.array([120.0, 180.0]), {"power_w": p[2:]})  # ids reused
    rec = w.close()
    path = tmp_path / "rows.parquet"
    assert rec == {"path": "rows.parquet", "level": "rows", "rows": 12,
                   "sha256": file_digest(path), "bytes": path.stat().st_size}
    cols, meta = read_series(path)
    assert list(cols) == ["time_s", "row_id", "power_w"]
    assert cols["row_id"].dtype == np.int64 and cols["power_w"].dtype == np.float64
    np.testing.assert_array_equal(cols["time_s"], np.repeat([0.0, 60.0, 120.0, 180.0], 3))
    np.testing.assert_array_equal(cols["row_id"], np.tile(ids, 4))
    np.testing.assert_array_equal(cols["power_w"], p.ravel())  # time-major
    assert meta["entity_column"] == "row_id" and meta["units"]["power_w"] == "W"
    assert meta["grid"]["n_steps"] == 40


def test_series_many_chunks_equal_one(tmp_path):
    rng = np.random.default_rng(0)
    n_t, n_e = 500, 7
    t = np.arange(n_t) * 0.25
    p = rng.random((n_t, n_e)) * 1e4
    ids = np.arange(100, 100 + n_e)
    kw = dict(level="racks", resolution_s=0.25, value_columns=["power_w"],
              entity_column="rack_id", units={"power_w": "W"}, grid=GRID)
    with SeriesWriter(tmp_path / "one.parquet", **kw) as w:
        w.write(t, {"power_w": p}, entity_ids=ids)
    with SeriesWriter(tmp_path / "many.parquet", row_group_rows=64, **kw) as w:
        for a in range(0, n_t, 37):
            w.write(t[a:a + 37], {"power_w": p[a:a + 37]}, entity_ids=ids)
    one, _ = read_series(tmp_path / "one.parquet")
    many, _ = read_series(tmp_path / "many.parquet")
    for c in one:
        np.testing.assert_array_equal(one[c], many[c])
    import pyarrow.parquet as pq
    md = pq.ParquetFile(tmp_path / "many.parquet").metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert max(sizes) <= 64 and sum(sizes) == n_t * n_e
    assert all(s == 64 for s in sizes[:-1])  # bounded, full groups


def test_series_checks_and_abort(tmp_path):
    path = tmp_path / "site.parquet"
    path.write_text("previous")
    w = SeriesWriter(path, level="site", resolution_s=1.0, value_columns=["it_power_w"],
                     entity_column=None, units={"it_power_w": "W"}, grid=GRID)
    with pytest.raises(ValueError, match="shape"):
        w.write(np.arange(3.0), {"it_power_w": np.ones(2)})
    w.write(np.arange(3.0), {"it_power_w": np.ones(3)})
    with pytest.raises(ValueError, match="increasing"):
        w.write(np.arange(3.0), {"it_power_w": np.ones(3)})
    with pytest.raises(ValueError, match="columns"):
        w.write(np.arange(3.0, 4.0), {"x": np.ones(1)})
    w.abort()
    assert _names(tmp_path) == {"site.parquet"} and path.read_text() == "previous"
    with pytest.raises(ValueError, match="units"):
        SeriesWriter(path, level="site", resolution_s=1.0, value_columns=["it_power_w"],
                     entity_column=None, units={}, grid=GRID)
    with pytest.raises(ValueError, match="grid"):
        SeriesWriter(path, level="site", resolution_s=1.0, value_columns=["it_power_w"],
                     entity_column=None, units={"it_power_w": "W"}, grid={})
    with pytest.raises(RuntimeError):
        with SeriesWriter(tmp_path / "rows.parquet", level="rows", resolution_s=1.0,
                          value_columns=["power_w"], entity_column="row_id",
                          units={"power_w": "W"}, grid=GRID) as w2:
            with pytest.raises(ValueError, match="entity_ids"):
                w2.write(np.arange(2.0), {"power_w": np.ones((2, 1))})
            raise RuntimeError("stop")
    assert _names(tmp_path) == {"site.parquet"}
    with pytest.raises(InputError, match="not found"):
        read_series(tmp_path / "nope.parquet")


# ---------------------------------------------------------------------- CSV

def test_site_csv_hand_computed(tmp_path):
    path = write_site_csv(tmp_path / "site.csv", start_time="2025-07-01T23:45:00",
                          time_s=np.array([0.0, 900.0, 1800.0]), interval_s=900,
                          it_power_w=np.array([1_000_000.0, 2_000_000.0, 1_500_000.0]),
                          facility_power_w=np.array([1_200_000.0, 2_400_000.0, 1_800_000.0]))
    text = path.read_text()
    assert text.splitlines()[0] == ("interval_start,interval_s,it_power_kw,facility_power_kw,"
                                    "facility_energy_kwh")
    rows = list(csv.DictReader(text.splitlines()))
    # no offset in start_time: the site clock is UTC, and the file says so
    assert [r["interval_start"] for r in rows] == [
        "2025-07-01 23:45:00+00:00", "2025-07-02 00:00:00+00:00", "2025-07-02 00:15:00+00:00"]
    assert [r["interval_s"] for r in rows] == ["900", "900", "900"]
    assert [float(r["it_power_kw"]) for r in rows] == [1000.0, 2000.0, 1500.0]
    assert [float(r["facility_power_kw"]) for r in rows] == [1200.0, 2400.0, 1800.0]
    # 1200 kW for 15 min = 300 kWh; 2400 kW -> 600 kWh; 1800 kW -> 450 kWh
    assert [float(r["facility_energy_kwh"]) for r in rows] == [300.0, 600.0, 450.0]
    assert _names(tmp_path) == {"site.csv"}


def test_site_csv_subsecond_intervals(tmp_path):
    path = write_site_csv(tmp_path / "s.csv", start_time="2025-01-01 00:00:00",
                          time_s=np.arange(3) * 0.25, interval_s=0.25,
                          it_power_w=np.full(3, 3600.0), facility_power_w=np.full(3, 7200.0))
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert [r["interval_start"] for r in rows] == [
        "2025-01-01 00:00:00.000+00:00", "2025-01-01 00:00:00.250+00:00",
        "2025-01-01 00:00:00.500+00:00"]
    assert rows[0]["interval_s"] == "0.25"
    # 7.2 kW for 0.25 s = 0.0005 kWh, printed with 6 significant digits
    assert rows[0]["facility_energy_kwh"] == "0.0005"
    with pytest.raises(ValueError, match="start_time"):
        write_site_csv(tmp_path / "t.csv", start_time="yesterday", time_s=np.zeros(1),
                       interval_s=1, it_power_w=np.zeros(1), facility_power_w=np.zeros(1))


def test_site_csv_keeps_the_utc_offset_and_prints_six_significant_digits(tmp_path):
    path = write_site_csv(tmp_path / "s.csv", start_time="2026-03-01T23:30:00-05:30",
                          time_s=np.array([0.0, 1800.0]), interval_s=1800,
                          it_power_w=np.array([1_234_567.891, 98.76543219]),
                          facility_power_w=np.array([1_604_938.258, 128.3950618]))
    rows = list(csv.DictReader(path.read_text().splitlines()))
    # local wall-clock time as configured, crossing midnight, offset kept
    assert [r["interval_start"] for r in rows] == ["2026-03-01 23:30:00-05:30",
                                                   "2026-03-02 00:00:00-05:30"]
    # 1234.567891 kW -> 1234.57; 0.09876543219 kW -> 0.0987654 (6 significant digits, "%.6g")
    assert [r["it_power_kw"] for r in rows] == ["1234.57", "0.0987654"]
    # 1604.938258 kW for half an hour = 802.469129 kWh -> 802.469
    assert rows[0]["facility_energy_kwh"] == "802.469"


# ---------------------------------------------------------------------- request traces

def test_azure_trace():
    assert file_digest(AZURE) == AZURE_SHA256  # byte-exact copy, CRLF kept
    assert b"\r\n" in AZURE.read_bytes()[:200]
    trace = read_request_trace(AZURE)
    arrival, inp, out = trace.arrival_s, trace.input_tokens, trace.output_tokens
    assert arrival.size == inp.size == out.size == 1074
    np.testing.assert_array_equal(trace.cached_tokens, np.zeros(1074, np.int64))  # no column
    assert arrival.dtype == np.float64 and inp.dtype == np.int64 and out.dtype == np.int64
    assert arrival[0] == 0.0 and np.all(np.diff(arrival) >= 0)
    assert arrival[1] == pytest.approx(0.052, abs=1e-9)  # 18:17:04.0319600 - 18:17:03.9799600
    assert arrival[-1] == pytest.approx(565.481864, abs=1e-6)  # -> 18:26:29.46182
    assert inp[0] == 4808 and out[0] == 10
    assert inp.mean() == pytest.approx(2134, abs=1)
    assert out.mean() == pytest.approx(28.4, abs=0.1)


def _csv(tmp_path, text: str, name="t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_plain_trace_seconds_unsorted(tmp_path):
    p = _csv(tmp_path, "Arrival_Time_S,Prompt_Tokens,Completion_Tokens\n"
                       "5.5,10,1\n2.0,20,2\n\n3.25,30,3\n")
    trace = read_request_trace(p)
    arrival, inp, out = trace.arrival_s, trace.input_tokens, trace.output_tokens
    np.testing.assert_array_equal(arrival, [0.0, 1.25, 3.5])
    np.testing.assert_array_equal(inp, [20, 30, 10])
    np.testing.assert_array_equal(out, [2, 3, 1])


def test_plain_trace_iso_and_lens(tmp_path):
    p = _csv(tmp_path, "timestamp,input_lens,output_lens,extra\n"
                       "2024-01-01T00:00:01.5,100,5,x\n2024-01-01T00:00:00,200,6,y\n")
    trace = read_request_trace(p)
    arrival, inp = trace.arrival_s, trace.input_tokens
    np.testing.assert_array_equal(arrival, [0.0, 1.5])
    np.testing.assert_array_equal(inp, [200, 100])
    p = _csv(tmp_path, "timestamp,input_tokens,output_tokens\n"
                       "2024-01-01T00:00:00Z,1,1\n2024-01-01T01:00:00+01:00,1,1\n", "z.csv")
    arrival = read_request_trace(p).arrival_s  # same instant in two zones
    np.testing.assert_array_equal(arrival, [0.0, 0.0])


def test_trace_cached_tokens_column(tmp_path):
    """An optional cached-tokens column is read and sorted with its requests."""
    p = _csv(tmp_path, "arrival_s,prompt_tokens,output_tokens,Cached_Prompt_Tokens\n"
                       "3.0,300,3,256\n1.0,100,1,0\n2.0,200,2,192\n")
    trace = read_request_trace(p)
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(trace.input_tokens, [100, 200, 300])
    np.testing.assert_array_equal(trace.cached_tokens, [0, 192, 256])
    assert trace.cached_tokens.dtype == np.int64 and len(trace) == 3
    # more cached than prompt tokens (file line 3) is a named error
    p = _csv(tmp_path, "arrival_s,prompt_tokens,output_tokens,cached_tokens\n"
                       "1.0,100,1,0\n2.0,200,2,201\n", "bad.csv")
    with pytest.raises(InputError) as err:
        read_request_trace(p)
    assert err.value.line == 3 and err.value.column == "cached_tokens"
    assert "201 cached tokens is more than the prompt's 200" in str(err.value)


@pytest.mark.parametrize("text, line, column, fragment", [
    ("timestamp,input_tokens,output_tokens\n1.0,10,2\n2.0,abc,3\n", 3, "input_tokens",
     "not a number"),
    ("timestamp,input_tokens,output_tokens\n1.0,10,2\n2.0,11,-3\n", 3, "output_tokens",
     "negative"),
    ("timestamp,input_tokens,output_tokens\n1.0,10,2\n2.0,1.5,3\n", 3, "input_tokens",
     "whole number"),
    ("timestamp,input_tokens,output_tokens\n1.0,10,2\n\n2.0,,3\n", 4, "input_tokens",
     "not a number"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.9799600,1,1\r\n"
     "2023-11-16 18:17:0x,1,1\r\n", 3, "TIMESTAMP", "cannot parse timestamp"),
    ("timestamp,input_tokens,output_tokens\n2024-01-01 00:00:00,1,1\n5.0,1,1\n", 3,
     "timestamp", "seconds"),
    ("timestamp,input_tokens,output_tokens\n2024-01-01 00:00:00,1,1\n"
     "2024-01-01 00:00:00Z,1,1\n", 3, "timestamp", "offset"),
    ("timestamp,input_tokens,output_tokens\n1.0,1,1\n2.0,1\n", 3, None, "fields"),
    # a nan in a column of seconds is blamed on its own line (not on the first row)
    ("arrival_time_s,input_tokens,output_tokens\n0.5,10,10\n1.0,10,10\nnan,5,5\n2,3,3\n", 4,
     "arrival_time_s", "'nan' is not a number of seconds"),
    ("arrival_time_s,input_tokens,output_tokens\n0.5,10,10\n,5,5\n", 3, "arrival_time_s",
     "'' is not a number of seconds"),
])
def test_trace_bad_values(tmp_path, text, line, column, fragment):
    p = _csv(tmp_path, text)
    with pytest.raises(InputError) as err:
        read_request_trace(p)
    e = err.value
    assert e.path == str(p) and e.line == line and e.column == column
    assert fragment in str(e) and str(p) in str(e)


def test_trace_missing_column_lists_found_and_accepted(tmp_path):
    p = _csv(tmp_path, "timestamp,tokens_in,output_tokens\n1.0,1,1\n")
    with pytest.raises(InputError) as err:
        read_request_trace(p)
    msg = str(err.value)
    assert "input tokens" in msg and "tokens_in" in msg and "prompt_tokens" in msg
    assert err.value.line == 1


def test_trace_missing_file_and_empty(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_request_trace(tmp_path / "nope.csv")
    assert "nope.csv" in str(err.value)
    with pytest.raises(InputError, match="empty trace"):
        read_request_trace(_csv(tmp_path, "timestamp,input_tokens,output_tokens\r\n"))
    with pytest.raises(InputError, match="empty trace"):
        read_request_trace(_csv(tmp_path, "", "empty.csv"))
