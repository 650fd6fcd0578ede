"""Sweep results: the facility metrics of a finished point, and the sweep table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from distgen.errors import DistgenError
from distgen.results import RunSummary, resolution_label
from distgen.sweep.spec import P99_RESOLUTION_S, SWEEP_FORMAT, SweepSpec

#: Result columns after ``point_id`` and the override keys, with units in the names.
METRIC_COLUMNS = (
    "energy_it_j", "energy_facility_j",
    "peak_it_w", "mean_it_w", "peak_facility_w", "mean_facility_w",
    "peak_to_average", "max_15min_ramp_w", "p99_facility_w",
)


def point_metrics(out_dir: str | Path) -> dict:
    """Facility metrics of a finished run folder (see :data:`METRIC_COLUMNS`)."""
    from distgen.io.manifest import read_manifest
    from distgen.io.series import read_series

    out = Path(out_dir)
    summary = RunSummary.from_dict(read_manifest(out)["summary"])
    try:
        site = summary.site_at(P99_RESOLUTION_S)
    except KeyError:
        raise DistgenError(f"{out}: no {P99_RESOLUTION_S:g} s site series (needed for the "
                           f"sweep's P99)") from None
    label = resolution_label(P99_RESOLUTION_S)
    cols, _ = read_series(out / f"site_{label}.parquet", columns=["facility_power_w"])
    ramp = summary.max_15min_ramp_w
    return {
        "energy_it_j": site.it.energy_j, "energy_facility_j": site.facility.energy_j,
        "peak_it_w": site.it.peak_w, "mean_it_w": site.it.mean_w,
        "peak_facility_w": site.facility.peak_w, "mean_facility_w": site.facility.mean_w,
        "peak_to_average": site.facility.peak_to_average,
        "max_15min_ramp_w": float("nan") if ramp is None else float(ramp),
        "p99_facility_w": float(np.percentile(cols["facility_power_w"], 99)),
    }


def table_columns(spec: SweepSpec) -> list[str]:
    return ["point_id", *spec.keys, *METRIC_COLUMNS, "wall_s", "path"]


def write_table(rows: list[dict], columns: list[str], out_dir: str | Path) -> list[Path]:
    """Write ``sweep.parquet`` and ``sweep.csv`` (one row per point) atomically."""
    from distgen.io.table import write_table as _write

    out = Path(out_dir)
    units = {c: c.rsplit("_", 1)[-1].upper() for c in METRIC_COLUMNS if c.endswith(("_w", "_j"))}
    return _write(out / "sweep.parquet", out / "sweep.csv",
                  {c: [r.get(c) for r in rows] for c in columns},
                  metadata={"format": SWEEP_FORMAT, "units": units})


def format_sweep(rows: list[dict], spec: SweepSpec) -> str:
    """A compact text table of the sweep results (facility power at 1 s)."""
    header = ["point", *spec.keys, "energy MWh", "mean kW", "peak kW", "P99 kW", "PAR",
              "15-min ramp kW"]
    body = []
    for r in rows:
        ramp = r["max_15min_ramp_w"]
        body.append([r["point_id"], *(json.dumps(r[k]) if isinstance(r[k], (list, dict))
                                      else f"{r[k]:g}" if isinstance(r[k], float) else str(r[k])
                                      for k in spec.keys),
                     f"{r['energy_facility_j'] / 3.6e9:.3f}", f"{r['mean_facility_w'] / 1e3:.1f}",
                     f"{r['peak_facility_w'] / 1e3:.1f}", f"{r['p99_facility_w'] / 1e3:.1f}",
                     f"{r['peak_to_average']:.3f}",
                     "-" if not math.isfinite(ramp) else f"{ramp / 1e3:.2f}"])
    width = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 1 + len(spec.keys) else c.rjust(w)
                       for i, (c, w) in enumerate(zip(cells, width))) for cells in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in width))
    return "\n".join(lines)
