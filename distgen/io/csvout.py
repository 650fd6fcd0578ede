"""The site trace as a CSV a utility planner can open in a spreadsheet.

Columns: ``interval_start`` (local wall-clock time, ``YYYY-MM-DD HH:MM:SS[.fff]``),
``interval_s`` [s], ``it_power_kw`` [kW], ``facility_power_kw`` [kW] and
``facility_energy_kwh`` [kWh] = facility_power_kw * interval_s / 3600 (the energy drawn in
that interval, so the column sums to the period's energy). No comment lines; one header row.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from distgen.io.outdir import atomic_path, commit_file

SITE_CSV_COLUMNS = ("interval_start", "interval_s", "it_power_kw", "facility_power_kw",
                    "facility_energy_kwh")
_W_PER_KW = 1000.0
_S_PER_H = 3600.0


def _interval_starts(start_time: str, time_s: np.ndarray) -> pa.Array:
    """Local wall-clock text of ``start_time + time_s`` (offset dropped, no DST shifts)."""
    try:
        start = datetime.fromisoformat(start_time)
    except (TypeError, ValueError):
        raise ValueError(f"start_time {start_time!r} is not an ISO 8601 date/time") from None
    start = start.replace(tzinfo=None)  # local time as written in start_time
    offset_us = np.round(time_s * 1e6).astype(np.int64)
    stamps = np.datetime64(start, "us") + offset_us.astype("timedelta64[us]")
    if np.all(stamps.astype(np.int64) % 1_000_000 == 0):
        unit = "s"
    elif np.all(stamps.astype(np.int64) % 1_000 == 0):
        unit = "ms"
    else:
        unit = "us"
    arr = pa.array(stamps.astype(f"datetime64[{unit}]"))
    return pc.strftime(arr, format="%Y-%m-%d %H:%M:%S")


def write_site_csv(path: str | Path, *, start_time: str, time_s: np.ndarray,
                   interval_s: float | np.ndarray, it_power_w: np.ndarray,
                   facility_power_w: np.ndarray) -> Path:
    """Write the site series as a spreadsheet-friendly CSV, atomically.

    Parameters
    ----------
    path : the CSV file to write (replaced only once complete).
    start_time : ISO 8601 local date/time of the run start (``time_s == 0``); a UTC offset,
        if present, is dropped (times stay in the local clock given).
    time_s : [s] (n,) interval starts since the run start.
    interval_s : [s] interval length, scalar or (n,).
    it_power_w : [W] (n,) mean IT power in each interval.
    facility_power_w : [W] (n,) mean facility power (IT x PUE) in each interval.

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    t = np.asarray(time_s, dtype=np.float64).reshape(-1)
    n = t.size
    interval = np.broadcast_to(np.asarray(interval_s, dtype=np.float64), (n,))
    it_w = np.asarray(it_power_w, dtype=np.float64)
    fac_w = np.asarray(facility_power_w, dtype=np.float64)
    for name, arr in (("it_power_w", it_w), ("facility_power_w", fac_w)):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) like time_s")
    if not np.all(np.isfinite(t)):
        raise ValueError("time_s must be finite")
    fac_kw = fac_w / _W_PER_KW
    energy_kwh = fac_kw * interval / _S_PER_H
    interval_col = (pa.array(interval.astype(np.int64))
                    if np.all(interval == np.round(interval)) else pa.array(interval))
    table = pa.table({
        "interval_start": _interval_starts(start_time, t),
        "interval_s": interval_col,
        "it_power_kw": pa.array(it_w / _W_PER_KW),
        "facility_power_kw": pa.array(fac_kw),
        "facility_energy_kwh": pa.array(energy_kwh),
    })
    tmp = atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as fh:
            fh.write((",".join(SITE_CSV_COLUMNS) + "\n").encode("ascii"))
            pcsv.write_csv(table, fh, write_options=pcsv.WriteOptions(
                include_header=False, quoting_style="none"))
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
