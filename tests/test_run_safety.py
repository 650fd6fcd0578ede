"""Failures a user does not see until it is too late (issue #8): resumed folders that mix inputs,
two runs in one folder, interruptions, plans too large for the machine, and I/O errors. Each
ends in one named line (exit 2, or 130 / 143 for Ctrl-C / SIGTERM) and never in a folder that
looks complete but is not."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distgen import cli
from distgen.config import load_config
from distgen.distributed import LocalExecutor
from distgen.driver import generate
from distgen.errors import DistgenError
from distgen.io.manifest import file_digest
from distgen.io.outdir import LOCK_NAME, OutputLock, is_complete, lock_owner_alive
from distgen.io.series import read_series
from distgen.model.artifact import ModelLibrary

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
TRACE = ROOT / "tests" / "data" / "workloads" / "AzureLLMInferenceTrace_code_prefix38982.csv"
QWEN = "qwen3-8b_A100_tp1"
# 3 rows x 1 rack x 2 servers x 8 GPUs, 60 s: well under a second of generation
TINY = ["facility.racks_per_row=1", "facility.servers_per_rack=2", "duration_s=60",
        "warmup_s=10", "output.site_resolutions_s=[1,60]", "output.rows_resolution_s=60",
        "output.racks_resolution_s=null", "output.site_csv_resolution_s=null"]


@pytest.fixture(scope="module")
def library():
    return ModelLibrary.load()


def tiny(*overrides):
    return load_config(DEMO, [*TINY, "shards=3", *overrides])


class CrashAfterFirstShard(LocalExecutor):
    """Runs one shard, then fails as a killed driver would."""

    def map(self, job, items, **kw):
        super().map(job, list(items)[:1], **kw)
        raise KeyboardInterrupt


def series_equal(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("site_*.parquet")) + ["rows_60s.parquet"]
    for name in names:
        x, y = read_series(a / name)[0], read_series(b / name)[0]
        for col in x:
            np.testing.assert_array_equal(x[col], y[col], err_msg=f"{name}:{col}")


# --------------------------------------------------------------------------- resume and inputs

def test_resume_recomputes_shards_computed_from_another_trace_or_model(tmp_path, library):
    """Rows 0-5 from the old inputs and 6-9 from the new, in a folder that looked complete,
    was the bug. Now each committed shard records the hashes of its inputs and --resume
    recomputes the ones that differ, one line per cause."""
    trace = tmp_path / "trace.csv"
    shutil.copy(TRACE, trace)
    models = tmp_path / "models"
    shutil.copytree(Path(library.source), models)
    cfg = tiny("traffic.mode=replay", f"traffic.replay.path={trace}",
               f"model_library={models}")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, out, executor=CrashAfterFirstShard())
    # between the interruption and --resume: the trace and a model artifact change
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join(lines[:1] + lines[2:]))   # one request fewer
    artifact = models / f"{QWEN}.json"
    doc = json.loads(artifact.read_text())
    doc["provenance"]["note"] = "refitted"
    artifact.write_text(json.dumps(doc))
    notes = []
    manifest = generate(cfg, out, resume=True, log=notes.append)
    assert manifest["execution"]["resumed_shards"] == 0      # shard 0 was not kept
    assert len(notes) == 2, notes
    assert notes[0].startswith("shard 0 was computed from another request trace (sha256 ")
    assert notes[0].endswith(": recomputing")
    assert notes[1].startswith(f"shard 0 was computed with another model for {QWEN}")
    assert manifest["inputs"]["trace_sha256"] == file_digest(trace)
    assert manifest["model_library"]["models"][QWEN]["sha256"] == \
        manifest["inputs"]["models_sha256"][QWEN]
    # the result is that of a clean run on the new inputs
    clean = tmp_path / "clean"
    generate(cfg, clean)
    series_equal(clean, out)


def test_resume_keeps_shards_of_the_same_inputs_without_a_word(tmp_path, library):
    cfg = tiny()
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, out, library=library, executor=CrashAfterFirstShard())
    notes = []
    manifest = generate(cfg, out, library=library, resume=True, log=notes.append)
    assert manifest["execution"]["resumed_shards"] == 1 and notes == []


def test_rerun_without_resume_says_finished_work_is_redone(tmp_path, library):
    cfg = tiny()
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, out, library=library, executor=CrashAfterFirstShard())
    notes = []
    generate(cfg, out, library=library, log=notes.append)
    assert notes == [f"{out} holds an interrupted run with 1 finished shard(s); without "
                     "--resume they are computed again"]


def test_resume_of_a_missing_folder_leaves_nothing_behind(tmp_path, library, capsys):
    out = tmp_path / "not" / "there"
    assert cli.main(["generate", str(DEMO), *TINY, "--executor", "local", "--resume",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distgen: error: cannot resume in") and len(err.splitlines()) == 1
    assert not (tmp_path / "not").exists()


def test_manifest_records_the_inputs_and_every_files_sha256(tmp_path, library):
    cfg = tiny("traffic.mode=replay", f"traffic.replay.path={TRACE}",
               "output.site_csv_resolution_s=60")
    m = generate(cfg, tmp_path / "o", library=library)
    assert m["inputs"]["trace_path"] == str(TRACE)
    assert m["inputs"]["trace_sha256"] == file_digest(TRACE)
    records = {f["path"]: f for f in m["files"]}
    assert records["site_60s.csv"]["sha256"] == file_digest(tmp_path / "o" / "site_60s.csv")
    assert all(r["sha256"] == file_digest(tmp_path / "o" / p) for p, r in records.items())


# --------------------------------------------------------------------------- lock

def _start_generate(out: Path, *extra: str) -> subprocess.Popen:
    """``distgen generate`` of the demo (local executor, ~10 s) in a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "distgen.cli", "generate", str(DEMO), "--executor", "local",
         "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT)


def _wait_for(path_glob, folder: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(folder.glob(path_glob)):
        assert time.monotonic() < deadline, f"{folder}/{path_glob} never appeared"
        time.sleep(0.05)


def test_second_run_into_a_busy_folder_is_refused_and_a_dead_owner_does_not_block(tmp_path,
                                                                                  library):
    out = tmp_path / "out"
    first = _start_generate(out)
    try:
        _wait_for(LOCK_NAME, out)
        owner = json.loads((out / LOCK_NAME).read_text())
        assert owner["pid"] == first.pid and lock_owner_alive(owner) is True
        with pytest.raises(DistgenError) as err:
            generate(tiny(), out, library=library)
        assert f"pid {first.pid}" in str(err.value) and "in use by another distgen run" in \
            str(err.value)
        assert "NFS" not in str(err.value)
    finally:
        first.kill()   # SIGKILL: no clean-up, the lock file stays
        first.wait()
    assert (out / LOCK_NAME).is_file()
    assert lock_owner_alive(json.loads((out / LOCK_NAME).read_text())) is False
    manifest = generate(tiny(), out, library=library)   # the stale lock is taken over
    assert is_complete(out) and manifest["seed"] == 7
    assert not (out / LOCK_NAME).exists()                # and released at the end


def test_lock_of_another_machine_is_not_taken_over(tmp_path):
    folder = tmp_path / "o"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "elsewhere",
                                                "started_at": "2026-12-01T00:00:00+00:00",
                                                "token": "x"}))
    with pytest.raises(DistgenError, match="another machine.*pid 4242 on elsewhere.*delete"):
        OutputLock(folder).acquire()


# --------------------------------------------------------------------------- interruptions

def _interrupt(sig: int, *extra: str, tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    out = tmp_path / "out"
    proc = _start_generate(out, "shards=12", "facility.racks_per_row=8", *extra)
    _wait_for(".parts/shard-*.json", out, timeout_s=240)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc, err, out


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_interruption_ends_in_one_line_that_says_resume(sig, code, word, tmp_path, library):
    proc, err, out = _interrupt(sig, tmp_path=tmp_path)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"distgen: {word}; the finished work in {out} is kept")
    assert last.endswith("--resume)") and "--resume (distgen generate" in last
    assert not is_complete(out) and not (out / LOCK_NAME).exists()
    resumed = generate(load_config(DEMO, ["shards=12", "facility.racks_per_row=8"]), out,
                       library=library, resume=True)
    assert resumed["execution"]["resumed_shards"] >= 1 and is_complete(out)


def test_sigterm_on_ray_is_one_line_not_a_crash_dump(tmp_path):
    """What timeout, Slurm, docker and systemd send, with the default (Ray) executor."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distgen.cli", "generate", str(DEMO), "shards=12",
         "facility.racks_per_row=8", "--out", str(out)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    _wait_for(".parts/shard-*.json", out, timeout_s=240)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[")]  # progress bars
    assert lines[0].startswith("distgen: starting a local Ray on 127.0.0.1")
    assert lines[-1].startswith("distgen: terminated (SIGTERM); the finished work in")
    assert len(lines) == 2 and "Traceback" not in err, err


# --------------------------------------------------------------------------- size before work

@pytest.fixture
def laptop(monkeypatch):
    """A laptop with 8 GiB available, whatever this machine has (the check is tested, not the
    machine)."""
    import distgen.driver
    monkeypatch.setattr(distgen.driver, "available_memory_bytes", lambda: 8 * 2 ** 30)


def _refused(argv, capsys, monkeypatch) -> str:
    """Run the CLI; nothing may be planned, started or created before the refusal."""
    import distgen.distributed
    import distgen.driver

    def must_not_run(*a, **k):
        raise AssertionError("work started before the size check")

    monkeypatch.setattr(distgen.driver, "plan_run", must_not_run)
    monkeypatch.setattr(distgen.distributed, "make_executor", must_not_run)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("distgen: error: "), err
    return err


@pytest.mark.parametrize("overrides, fragments", [
    # a billion rows: the size is judged from the mix, no row is laid out
    (["facility.rows=1000000000", f"facility.row_serving=[{QWEN}]"],
     ["facility.rows = 1000000000", "memory", "shards = 3"]),
    # a typo: 6000 racks per row, 192,000 deployments (one TP1 row) per shard: ~9 GB
    (["facility.racks_per_row=6000"], ["one shard task would need about", "192,000 deployments",
                                       "facility.racks_per_row = 6000", "more shards"]),
    # 1e12 s: terabytes of site series (it used to fail inside a Ray worker)
    (["duration_s=1e12"], ["duration_s = 1e+12"]),
])
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_oversized_plans_are_refused_before_any_work(overrides, fragments, executor, tmp_path,
                                                     capsys, monkeypatch, laptop):
    out = tmp_path / "o"
    err = _refused(["generate", str(DEMO), *overrides, "--executor", executor, "--out",
                    str(out)], capsys, monkeypatch)
    for f in fragments:
        assert f in err, err
    assert not out.exists()


def test_a_billion_rows_in_the_demo_mix_is_a_config_error(tmp_path, capsys, monkeypatch):
    err = _refused(["generate", str(DEMO), "facility.rows=1000000000", "--out",
                    str(tmp_path / "o")], capsys, monkeypatch)
    assert "facility.row_serving" in err and "row_serving_pattern" in err


def test_estimate_is_recorded_and_printed(tmp_path, capsys):
    assert cli.main(["generate", str(DEMO), *TINY, "--executor", "local", "--out",
                     str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    est = manifest["estimate"]
    # 3 rows x 1 rack x 2 servers: 2 rows of 16 TP1 deployments + 1 row of 8 TP2 = 40;
    # (60 s + 10 s warm-up) / 0.25 s = 280 steps
    assert est["deployments"] == 40 and est["deployment_steps"] == 40 * 280
    assert "estimate before the run: 1.12e+04 deployment-steps (with warm-up)" in printed


# --------------------------------------------------------------------------- I/O errors

def test_read_only_output_folder_is_one_line_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec "
              f"{sys.executable} -m distgen.cli generate {DEMO} --executor local "
              f"--out {ro}/run")
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"distgen: error: cannot write to output folder {ro}/run "
                                   f"(it would be created in {ro}): Read-only file system")


def test_full_disk_is_judged_before_work(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {small} && exec {sys.executable} -m "
              f"distgen.cli generate {DEMO} --executor local --out {small}/run")
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "this run would write about" in err
    assert "disk has 262 kB free" in err and "duration_s = 14400" in err


def test_disk_full_during_the_run_is_one_line_and_no_complete_looking_folder(tmp_path, capsys,
                                                                             monkeypatch):
    import errno

    import distgen.io.outdir

    real_commit = distgen.io.outdir.commit_file

    def full(tmp, final):
        if str(final).endswith("rows_60s.parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return real_commit(tmp, final)

    monkeypatch.setattr("distgen.io.series.commit_file", full)
    out = tmp_path / "o"
    assert cli.main(["generate", str(DEMO), *TINY, "--executor", "local", "--out",
                     str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("No space left on device (the disk is full)") and \
        len(err.splitlines()) == 1, err
    assert not is_complete(out) and not (out / "rows_60s.parquet").exists()
    assert not [p for p in out.iterdir() if ".distgen-tmp-" in p.name]


def test_fit_and_validate_check_their_outputs_before_the_work(tmp_path, capsys, monkeypatch,
                                                              measured_dir):
    import distgen.ingest

    monkeypatch.setattr(distgen.ingest, "read_runs", lambda *a, **k: pytest.fail("work began"))
    a_file = tmp_path / "models.json"
    a_file.write_text("{}")
    cases = [
        (["fit", str(measured_dir), "--out", str(a_file)],
         f"output path {a_file} exists and is not a folder"),
        (["validate", "--data", str(measured_dir), "--json", str(tmp_path / "no" / "r.json")],
         f"folder {tmp_path / 'no'} does not exist"),
    ]
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    cases.append((["fit", str(measured_dir), "--out", str(foreign)],
                  "holds files that distgen did not write (chapter1.tex); pass --overwrite"))
    for argv, fragment in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err


def test_validate_with_zero_seeds_is_a_usage_error(capsys, measured_dir):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["validate", "--data", str(measured_dir), "--seeds", "0"])
    assert exit_.value.code == 2
    assert "argument --seeds: must be >= 1, got 0" in capsys.readouterr().err


def test_fit_refuses_numerics_the_runs_cannot_support_with_a_named_error(tmp_path, capsys,
                                                                        monkeypatch,
                                                                        measured_dir):
    """A ValueError from the fitting numerics reaches the user as one line naming the
    configuration and its runs, with the cause kept."""
    import distgen.model.fit

    def too_few(*a, **k):
        raise ValueError("only 3 busy intervals")

    monkeypatch.setattr(distgen.model.fit, "fit_power_model", too_few)
    assert cli.main(["fit", str(measured_dir / "validate_qwen3-8b_a100"), "--out",
                     str(tmp_path / "m"), "--no-scores"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distgen: error: cannot fit ") and err.endswith(
        "only 3 busy intervals")
