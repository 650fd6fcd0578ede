"""Fit + validate of the whole model library, timed (target: under 5 minutes on 2 cores).

    python benchmarks/bench_fit.py [DATA_DIR] [--record]

Runs ``distgen fit DATA --out <tmp>`` (which also stores each model's held-out scores) and
``distgen validate --models <tmp> --data DATA``, as a user would, and prints the wall times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import machine  # noqa: E402


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data", nargs="?", default=str(ROOT.parent / "shared" / "data" / "measured"))
    p.add_argument("--record", action="store_true")
    args = p.parse_args()
    distgen = [sys.executable, "-m", "distgen.cli"]
    lib = tempfile.mkdtemp()
    fit_s = timed(distgen + ["fit", args.data, "--out", lib])
    val_s = timed(distgen + ["validate", "--models", lib, "--data", args.data])
    text = ("| step | wall [s] |\n|---|---:|\n"
            f"| fit (5 configurations, with held-out scores) | {fit_s:.0f} |\n"
            f"| validate (5 seeds, baselines) | {val_s:.0f} |\n"
            f"| total | {fit_s + val_s:.0f} (target < 300) |")
    print(text)
    if args.record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Fit + validate ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}\n\n"
                     f"Command: `python benchmarks/bench_fit.py ../shared/data/measured`\n\n{text}\n")


if __name__ == "__main__":
    main()
