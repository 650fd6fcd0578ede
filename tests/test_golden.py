"""Pinned outputs: the golden runs of tests/golden/ reproduce golden.json bit for bit.

The reference values were produced by ``python tests/golden/golden.py --write`` (the file
records the distgen version and command). A failure here means the generated numbers changed;
if the change is deliberate, regenerate the file and say why in the commit message.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden", HERE / "golden.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

PINNED = json.loads(golden.GOLDEN_FILE.read_text())["runs"]


@pytest.mark.parametrize("name", golden.RUNS)
def test_golden_run_reproduces_pinned_outputs(name, tmp_path):
    got = golden.generate_run(name, tmp_path / name)
    want = PINNED[name]
    assert got["workload"] == want["workload"]
    assert got["site_1s"] == want["site_1s"]
    assert got["series_sha256"] == want["series_sha256"]


def test_golden_runs_are_not_trivial():
    """The pinned runs exercise what they are meant to: requests in both, several series."""
    for name in golden.RUNS:
        run = PINNED[name]
        assert run["workload"]["requests_arrived"] > 100, name
        assert run["workload"]["prefill_tokens"] > run["workload"]["requests_arrived"], name
        assert {"site_0.25s.parquet", "site_1s.parquet", "rows_1s.parquet"} <= \
            set(run["series_sha256"]), name
