"""The golden runs: two small generations whose outputs are pinned bit for bit.

``tests/test_golden.py`` regenerates both runs and compares their fingerprints with
``golden.json``. Any change of the numbers (kernel, serving model, power model, rates, routing,
bundled library) makes it fail; when the change is deliberate, regenerate and say why in the
commit message::

    python tests/golden/golden.py --write

The fingerprint of a run is the sha256 of every value column of its site and row series
(float64 little-endian bytes, after ``time_s``), which does not depend on the Parquet writer's
version, plus its workload summary (request and token counts, integers) and its site energy,
mean and peak.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN_FILE = HERE / "golden.json"
RUNS = ("synthetic", "replay")
TRACE = HERE.parent / "data" / "workloads" / "AzureLLMInferenceTrace_code_prefix38982.csv"


def run_config(name: str):
    from distgen.config import load_config

    overrides = [f"traffic.replay.path={TRACE}"] if name == "replay" else []
    return load_config(HERE / f"{name}.yaml", overrides)


def series_digest(path: Path) -> str:
    """sha256 over the names and float64 values of a series file's generated columns:
    ``time_s``, the entity id and the value columns (``timestamp_utc`` only restates
    ``time_s``)."""
    from distgen.io.series import read_series

    cols, meta = read_series(path)
    pinned = ["time_s", *([meta["entity_column"]] if meta.get("entity_column") else []),
              *meta["value_columns"]]
    h = hashlib.sha256()
    for name in sorted(pinned):
        h.update(name.encode())
        h.update(np.ascontiguousarray(cols[name], dtype="<f8").tobytes())
    return h.hexdigest()


def fingerprint(out: Path, manifest: dict) -> dict:
    """What is pinned of one run (see the module docstring)."""
    files = sorted(p.name for p in out.glob("site_*.parquet")) + \
        sorted(p.name for p in out.glob("rows_*.parquet"))
    site = manifest["summary"]["site"]
    return {
        "series_sha256": {name: series_digest(out / name) for name in files},
        "workload": manifest["summary"]["workload"],
        "site_1s": {k: site["1s"]["it"][k] for k in ("energy_j", "mean_w", "peak_w")},
    }


def generate_run(name: str, out: Path) -> dict:
    from distgen.driver import generate

    manifest = generate(run_config(name), out)
    return fingerprint(out, manifest)


def current() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: generate_run(name, Path(tmp) / name) for name in RUNS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite golden.json")
    args = p.parse_args(argv)
    import distgen

    doc = {
        "about": "pinned outputs of tests/golden/{synthetic,replay}.yaml; see golden.py",
        "regenerated_with": {"distgen_version": distgen.__version__,
                             "python": platform.python_version(),
                             "numpy": np.__version__,
                             "command": "python tests/golden/golden.py --write"},
        "runs": current(),
    }
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN_FILE.write_text(text)
        print(f"wrote {GOLDEN_FILE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
