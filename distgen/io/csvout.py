"""The site trace as a CSV a utility planner can open in a spreadsheet.

Columns: ``interval_start`` (site-local wall-clock time with its UTC offset,
``YYYY-MM-DD HH:MM:SS[.fff]+HH:MM``), ``interval_s`` [s], ``it_power_kw`` [kW],
``facility_power_kw`` [kW] and ``facility_energy_kwh`` [kWh] = facility_power_kw * interval_s /
3600 (the energy drawn in that interval, so the column sums to the period's energy). Values are
printed with 6 significant digits (well beyond the model's accuracy; a day at 15 minutes stays
a small file). No comment lines; one header row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from distgen.io.outdir import atomic_path, commit_file

SITE_CSV_COLUMNS = ("interval_start", "interval_s", "it_power_kw", "facility_power_kw",
                    "facility_energy_kwh")
SIGNIFICANT_DIGITS = 6
_W_PER_KW = 1000.0
_S_PER_H = 3600.0


def _interval_starts(start_time: str, time_s: np.ndarray) -> pa.Array:
    """Local wall-clock text of ``start_time + time_s`` with the UTC offset of ``start_time``
    (``+00:00`` when it has none: the site clock is UTC). A fixed offset: no DST shifts."""
    try:
        start = datetime.fromisoformat(start_time)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"start_time {start_time!r} is not an ISO 8601 date/time") from exc
    offset = start.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    suffix = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
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
    text = pc.strftime(arr, format="%Y-%m-%d %H:%M:%S")
    return pc.binary_join_element_wise(text, pa.scalar(suffix), "")


def _significant(values: np.ndarray, digits: int = SIGNIFICANT_DIGITS) -> pa.Array:
    """Numbers as text with ``digits`` significant digits (``1234567.0 -> '1.23457e+06'``)."""
    return pa.array(np.char.mod(f"%.{digits}g", np.asarray(values, np.float64)))


def write_site_csv(path: str | Path, *, start_time: str, time_s: np.ndarray,
                   interval_s: float | np.ndarray, it_power_w: np.ndarray,
                   facility_power_w: np.ndarray) -> Path:
    """Write the site series as a spreadsheet-friendly CSV, atomically.

    Parameters
    ----------
    path : the CSV file to write (replaced only once complete).
    start_time : ISO 8601 site-local date/time of the run start (``time_s == 0``), with its
        UTC offset (none = UTC); the offset is kept in every ``interval_start``.
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
        "it_power_kw": _significant(it_w / _W_PER_KW),
        "facility_power_kw": _significant(fac_kw),
        "facility_energy_kwh": _significant(energy_kwh),
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
