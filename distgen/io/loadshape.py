"""Load-profile exports for utility studies: the 8760-hour annual CSV and OpenDSS loadshapes.

Numbers are written with full float precision (``repr``), so sums of the written columns
reproduce the energies computed in memory to float rounding.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from distgen.io.outdir import write_bytes_atomic

ANNUAL_COLUMNS = ("hour_start", "hour_of_year", "day_type", "scale", "it_power_kw",
                  "facility_power_kw", "facility_energy_kwh")
_W_PER_KW = 1000.0


def _num(v: float) -> str:
    return repr(float(v))


def write_annual_csv(path: str | Path, *, hour_start: np.ndarray, weekend: np.ndarray,
                     scale: np.ndarray, it_power_w: np.ndarray,
                     facility_power_w: np.ndarray) -> Path:
    """Write an hourly annual profile (one row per hour), atomically.

    Columns: ``hour_start`` (local ``YYYY-MM-DD HH:MM``), ``hour_of_year`` (0-based),
    ``day_type`` (``weekday``/``weekend``), ``scale`` [-] (day type x growth factor),
    ``it_power_kw`` [kW], ``facility_power_kw`` [kW] and ``facility_energy_kwh`` [kWh]
    (= facility_power_kw x 1 h, so the column sums to the year's energy).

    Parameters
    ----------
    hour_start : (n,) ``datetime64[h]`` local hour starts.
    weekend : (n,) bool.
    scale : [-] (n,) factors applied to the daily pattern.
    it_power_w, facility_power_w : [W] (n,) mean power per hour.
    """
    n = len(hour_start)
    for name, arr in (("weekend", weekend), ("scale", scale), ("it_power_w", it_power_w),
                      ("facility_power_w", facility_power_w)):
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} values, expected {n} like hour_start")
    stamps = np.datetime_as_string(np.asarray(hour_start, dtype="datetime64[m]"), unit="m")
    lines = [",".join(ANNUAL_COLUMNS)]
    for i in range(n):
        fac_kw = float(facility_power_w[i]) / _W_PER_KW
        lines.append(",".join((stamps[i].replace("T", " "), str(i),
                               "weekend" if weekend[i] else "weekday", _num(scale[i]),
                               _num(float(it_power_w[i]) / _W_PER_KW), _num(fac_kw),
                               _num(fac_kw))))
    return write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("ascii"))


def opendss_name(text: str) -> str:
    """An OpenDSS element name from free text (letters, digits, underscores)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    return name or "distgen"


def write_opendss_loadshape(dss_path: str | Path, *, name: str, multipliers: np.ndarray,
                            interval_s: float, base_kw: float, description: str,
                            attach: str = "yearly") -> tuple[Path, Path]:
    """Write an OpenDSS loadshape: a multiplier file and a ``.dss`` file to ``Redirect``.

    The ``.dss`` file holds comment lines (what the shape is, the kW base) and one
    ``New Loadshape.<name> npts=<n> sinterval=<s> mult=(file=<csv>)`` line, ready to paste. The
    multiplier file (same name, ``.csv``) holds one per-unit value P / P_base per line; attach
    the shape to a load of ``kW=<base_kw>`` as its ``attach`` shape (``yearly`` for an
    8760-hour shape, ``daily`` for 24 hours, ``duty`` for a shorter or finer one).

    Returns
    -------
    (dss_path, multipliers_path).
    """
    dss_path = Path(dss_path)
    mult_path = dss_path.with_suffix(".csv")
    mult = np.asarray(multipliers, dtype=np.float64).reshape(-1)
    if mult.size == 0 or not np.all(np.isfinite(mult)):
        raise ValueError("multipliers must be a non-empty finite series")
    name = opendss_name(name)
    write_bytes_atomic(mult_path, ("\n".join(_num(m) for m in mult) + "\n").encode("ascii"))
    text = "\n".join([
        f"! {description}",
        f"! per-unit multipliers = P / P_base, P_base = {base_kw:.3f} kW; {mult.size} points "
        f"of {interval_s:g} s",
        f"! use with e.g.: New Load.<name> bus1=<bus> kW={base_kw:.3f} pf=1 {attach}={name}",
        f"New Loadshape.{name} npts={mult.size} sinterval={interval_s:g} "
        f"mult=(file={mult_path.name})",
        ""])
    write_bytes_atomic(dss_path, text.encode("ascii"))
    return dss_path, mult_path
