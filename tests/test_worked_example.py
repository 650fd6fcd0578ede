"""docs/DATA.md's worked example, run as written: `distgen inspect`, `fit` and `validate` on
the prefix-cache agentic run of tests/data/measured_agentic (a power log, a request log and a
manifest; no engine log).

The commands and the expected output are read from docs/DATA.md itself, so the page and the
program cannot drift apart: the inspect output shown there must be what `inspect` prints (bar
the folder path and the model line, which depend on the checkout and the bundled library),
and the gap lines shown for `fit` must be what `fit` and `validate` print.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest

from distgen.cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA_MD = ROOT / "docs" / "DATA.md"
RUN_ID = "a100_agentic_tp1_1784657707"


def _blocks(kind: str) -> list[str]:
    """The fenced ``kind`` blocks of the worked-example section, in order."""
    text = DATA_MD.read_text()
    section = text[text.index("## Worked example"):]
    return re.findall(rf"```{kind}\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    (bash,) = _blocks("bash")
    cmds = [shlex.split(line) for line in bash.strip().splitlines()]
    assert [c[:2] for c in cmds] == [["distgen", "inspect"], ["distgen", "fit"],
                                     ["distgen", "validate"]]
    return cmds


def _run(argv: list[str], models: Path, capsys) -> tuple[int, str]:
    args = [str(models) if a == "models/agentic" else a for a in argv[1:]]
    rc = main(args)
    return rc, capsys.readouterr().out


def test_worked_example(commands, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the page runs the commands from the repository root
    models = tmp_path / "models"
    inspect_shown, fit_shown = _blocks("text")

    # 1. inspect: the output shown in DATA.md
    rc, out = _run(commands[0], models, capsys)
    assert rc == 0, out
    got = out.splitlines()
    shown = inspect_shown.rstrip("\n").splitlines()
    assert len(got) == len(shown)
    head, *body, model_line = shown
    assert head.startswith(f"run {RUN_ID}  (.../tests/data/measured_agentic/")
    assert got[0].startswith(f"run {RUN_ID}  (") and got[0].endswith(head.split("...")[1])
    assert got[1:-1] == body
    prefix, suffix = model_line.split("...")
    assert got[-1].startswith(prefix) and got[-1].endswith(suffix)
    share = float(got[-1][len(prefix):-len(suffix)])
    assert 0.0 <= share <= 100.0

    # 2. fit from the power and request logs alone (no engine.csv)
    assert not list((ROOT / "tests/data/measured_agentic").rglob("engine.csv"))
    rc, out = _run(commands[1], models, capsys)
    assert rc == 0, out
    assert fit_shown.rstrip("\n") in out  # the gap lines of DATA.md
    artifact = models / "qwen3-8b_A100_tp1.json"
    assert artifact.is_file()
    doc = json.loads(artifact.read_text())
    assert doc["config_id"] == "qwen3-8b_A100_tp1"
    row = next(ln for ln in out.splitlines() if ln.startswith("qwen3-8b_A100_tp1 "))
    assert row.split()[1] == "1"  # one run

    # 3. validate the fitted model on the run: held-out time split, with baselines
    rc, out = _run(commands[2], models, capsys)
    assert rc == 0, out
    assert fit_shown.rstrip("\n") in out  # the same gap lines
    row = next(ln for ln in out.splitlines() if ln.startswith("qwen3-8b_A100_tp1 "))
    assert "time split 70/30" in row
    energy_err_pct = float(row.split("70/30")[1].split()[0])
    assert math.isfinite(energy_err_pct)
