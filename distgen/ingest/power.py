"""Reader for ``power.csv`` (an ``nvidia-smi --query-gpu`` log) and the CSV helpers it shares.

The log holds one row per GPU per sampling instant (~0.25 s). :func:`read_power` checks it,
sums the tensor-parallel group's GPUs at each instant and resamples the sum onto a regular
grid. Parsing works on whole columns with NumPy (chunks of rows), so a day-long log with
millions of rows costs little more than the ``csv`` parsing itself.
"""

from __future__ import annotations

import csv
import gc
import re
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from distgen.errors import InputError

_CHUNK_ROWS = 1 << 16
_POWER_COLUMN = re.compile(r"^power\.draw(\s*\[[^\]]*\])?$")
#: ``YYYY/MM/DD HH:MM:SS.mmm``: positions of the separators, the rest are digits.
_WALL_FORMAT = "YYYY/MM/DD HH:MM:SS.mmm"
_WALL_SEPARATORS = {4: "/", 7: "/", 10: " ", 13: ":", 16: ":", 19: "."}


# --------------------------------------------------------------------------- CSV helpers


def iter_csv_columns(path: Path, resolve: Callable[[list[str]], Sequence[int]],
                     chunk_rows: int = _CHUNK_ROWS) -> Iterator[tuple[int, list[list[str]]]]:
    """Read a CSV file column-wise, a chunk of rows at a time.

    Parameters
    ----------
    path : CSV file; opened with ``newline=''`` so CRLF and LF files both parse.
    resolve : called once with the header (cells stripped); returns the column indices wanted
        (it raises :class:`InputError` for missing columns).
    chunk_rows : rows per chunk.

    Yields
    ------
    (first_line, columns) : 1-based file line of the chunk's first row, and one list of
        strings per wanted column (leading blanks skipped, trailing ones kept). Every data
        row must have as many fields as the header; blank lines may only end the file.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise InputError(path, "empty file: no header line", line=1)
            wanted = list(resolve(header))
            n_fields = len(header)
            line = 2
            blank_line = None  # first line of a trailing run of blank lines
            while True:
                chunk = _take(reader, chunk_rows)
                if not chunk:
                    return
                if blank_line is not None:
                    raise InputError(path, "blank line inside the data", line=blank_line)
                if set(map(len, chunk)) != {n_fields}:
                    k = next(i for i, r in enumerate(chunk) if len(r) != n_fields)
                    if chunk[k]:
                        raise InputError(path, f"expected {n_fields} fields as in the header, "
                                         f"found {len(chunk[k])}", line=line + k)
                    if any(chunk[k:]):
                        raise InputError(path, "blank line inside the data", line=line + k)
                    blank_line, chunk = line + k, chunk[:k]
                if chunk:
                    yield line, [list(map(itemgetter(j), chunk)) for j in wanted]
                line += len(chunk)
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(path, f"CSV syntax error: {exc}") from None


def _take(reader: Iterator[list[str]], n: int) -> list[list[str]]:
    """The next ``n`` rows; the cyclic GC is paused meanwhile (rows are plain lists of str,
    and a GC pass per few hundred new lists would otherwise cost about a third of the time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return list(islice(reader, n))
    finally:
        if was_enabled:
            gc.enable()


def find_columns(path: Path, header: list[str], names: Sequence[str]) -> list[int]:
    """Indices of ``names`` in ``header``; an :class:`InputError` names any that are missing."""
    missing = [n for n in names if n not in header]
    if missing:
        raise InputError(path, f"missing column(s) {missing}; columns found: {header}", line=1)
    return [header.index(n) for n in names]


def parse_floats(values: list[str], path: Path, first_line: int, column: str,
                 unit: str | None = None) -> np.ndarray:
    """Convert a column of strings to float64, rejecting anything non-numeric or non-finite.

    Parameters
    ----------
    values : cells of one column, rows ``first_line, first_line + 1, ...``.
    unit : an optional suffix a cell may carry, e.g. ``"W"`` for ``"123.4 W"``.

    Returns
    -------
    float64 (len(values),); an :class:`InputError` names the line and column of the first bad
    cell.
    """
    try:
        out = np.array(values, dtype=np.float64)
    except ValueError:
        out = None
    if out is None and unit:
        stripped = [v[: -len(unit)].rstrip() if v.endswith(unit) else v for v in values]
        try:
            out = np.array(stripped, dtype=np.float64)
            values = stripped
        except ValueError:
            pass
    if out is None:
        for i, v in enumerate(values):
            try:
                float(v)
            except ValueError:
                raise InputError(path, f"not a number: {v!r}", line=first_line + i,
                                 column=column) from None
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        i = int(bad[0])
        raise InputError(path, f"not a finite number: {values[i]!r}", line=first_line + i,
                         column=column)
    return out


def parse_wall_time(values: list[str], path: Path, first_line: int, column: str) -> np.ndarray:
    """Seconds since 1970-01-01 of naive ``YYYY/MM/DD HH:MM:SS.mmm`` times read as UTC.

    Returns
    -------
    float64 (len(values),) [s]; an :class:`InputError` names the first cell that does not
    have exactly this format or is not a valid calendar time.
    """
    n = len(values)
    width = len(_WALL_FORMAT)
    try:
        raw = np.array(values, dtype=f"S{width + 1}")
    except UnicodeEncodeError:
        raw = None
    ok = np.array([v.isascii() for v in values]) if raw is None else np.ones(n, bool)
    if raw is not None and n:
        b = raw.view(np.uint8).reshape(n, width + 1)
        ok = b[:, width] == 0  # exactly `width` characters
        digit = np.ones(width, bool)
        for pos, ch in _WALL_SEPARATORS.items():
            ok &= b[:, pos] == ord(ch)
            digit[pos] = False
        d = b[:, :width][:, digit].astype(np.int64) - ord("0")
        ok &= ((d >= 0) & (d <= 9)).all(axis=1)
        num = lambda lo, hi: (d[:, lo:hi] * 10 ** np.arange(hi - lo - 1, -1, -1)).sum(axis=1)
        year, month, day = num(0, 4), num(4, 6), num(6, 8)
        hour, minute, sec, ms = num(8, 10), num(10, 12), num(12, 14), num(14, 17)
        ok &= (month >= 1) & (month <= 12) & (day >= 1) & (hour < 24) & (minute < 60) & (sec < 60)
        month_start = ((np.where(ok, year, 1970) - 1970).astype("datetime64[Y]")
                       .astype("datetime64[M]") + (np.where(ok, month, 1) - 1))
        date = month_start.astype("datetime64[D]") + (np.where(ok, day, 1) - 1)
        ok &= date.astype("datetime64[M]") == month_start  # day exists in that month
    if n and not ok.all():
        stripped = [v.strip() for v in values]
        if stripped != values:
            return parse_wall_time(stripped, path, first_line, column)
        i = int(np.flatnonzero(~ok)[0])
        raise InputError(path, f"timestamp {values[i]!r} is not local wall time "
                         f"'{_WALL_FORMAT}' (clock.power_timestamp_basis = local_wall_time)",
                         line=first_line + i, column=column)
    if not n:
        return np.zeros(0)
    ms_total = (date.astype(np.int64) * 86_400 + hour * 3600 + minute * 60 + sec) * 1000 + ms
    return ms_total / 1000.0


# --------------------------------------------------------------------------- power.csv


@dataclass(frozen=True)
class PowerLog:
    """Deployment power at the sampling instants, before resampling.

    Attributes
    ----------
    time_s : float64 (k,) [s, Unix epoch] sampling instants, strictly increasing.
    power_w : float64 (k,) [W] sum over the GPUs at each instant.
    line : int64 (k,) file line of the first GPU's row at each instant (for messages).
    uuids : GPU uuids in order of first appearance.
    """

    time_s: np.ndarray
    power_w: np.ndarray
    line: np.ndarray
    uuids: tuple[str, ...]


def read_power(path: Path, *, tp: int, active_uuids: Sequence[str] | None,
               basis: str, utc_offset_s: float, epoch_offset_s: float) -> PowerLog:
    """Read ``power.csv`` and sum the tensor-parallel group at each sampling instant.

    Parameters
    ----------
    path : the nvidia-smi log (columns ``timestamp``, ``uuid``, ``power.draw [W]``, ...).
    tp : GPUs in the deployment; the file must hold exactly this many distinct uuids.
    active_uuids : the manifest's GPU uuids, or None to skip that check.
    basis : ``"local_wall_time"`` or ``"unix_epoch"`` (the manifest's
        ``clock.power_timestamp_basis``).
    utc_offset_s : [s] local time minus UTC (``clock.local_utc_offset_s``; -25200 for UTC-7).
    epoch_offset_s : [s] added after conversion (``clock.power_epoch_offset_s``).
    """
    names: dict[str, str] = {}

    def resolve(header: list[str]) -> list[int]:
        hits = [h for h in header if _POWER_COLUMN.match(h)]
        if len(hits) != 1:
            raise InputError(path, f"need one column 'power.draw' (optionally with a unit "
                             f"suffix such as 'power.draw [W]'), found {len(hits)}; columns "
                             f"found: {header}", line=1)
        names["power"] = hits[0]
        return find_columns(path, header, ["timestamp", "uuid", hits[0]])

    times, powers, codes = [], [], []
    uuid_code: dict[str, int] = {}  # stripped uuid -> GPU number
    raw_code: dict[str, int] = {}  # uuid as written -> GPU number
    first_line = {}
    for line0, (ts, uu, pw) in iter_csv_columns(path, resolve):
        if basis == "local_wall_time":
            t = parse_wall_time(ts, path, line0, "timestamp") - utc_offset_s
        else:
            t = parse_floats(ts, path, line0, "timestamp")
        times.append(t + epoch_offset_s)
        powers.append(parse_floats(pw, path, line0, names["power"], unit="W"))
        for u in set(uu).difference(raw_code):
            raw_code[u] = uuid_code.setdefault(u.strip(), len(uuid_code))
            first_line.setdefault(u.strip(), line0 + uu.index(u))
        codes.append(np.fromiter(map(raw_code.__getitem__, uu), np.int64, len(uu)))
    if not times:
        raise InputError(path, "no data rows")
    t, p, code = np.concatenate(times), np.concatenate(powers), np.concatenate(codes)
    line = np.arange(t.size) + 2
    uuids = tuple(uuid_code)

    if len(uuids) != tp:
        raise InputError(path, f"manifest tp = {tp} but the file holds {len(uuids)} GPU(s): "
                         f"{list(uuids)}", column="uuid")
    if active_uuids is not None:
        for u in uuids:
            if u not in active_uuids:
                raise InputError(path, f"GPU {u!r} is not in the manifest's "
                                 f"server.active_gpu_uuids {list(active_uuids)}",
                                 line=first_line[u], column="uuid")
        absent = [u for u in active_uuids if u not in uuids]
        if absent:
            raise InputError(path, f"GPU(s) {absent} of the manifest's server.active_gpu_uuids "
                             f"have no rows (tp = {tp})", column="uuid")
    ref_t = ref_line = None
    for g, u in enumerate(uuids):
        rows = np.flatnonzero(code == g)
        tg = t[rows]
        step = np.diff(tg)
        bad = np.flatnonzero(step <= 0)
        if bad.size:
            k = int(bad[0]) + 1
            what = "duplicated" if step[k - 1] == 0 else "goes backwards from the previous"
            raise InputError(path, f"timestamp {what} sample of GPU {u} (line "
                             f"{int(line[rows[k - 1]])})", line=int(line[rows[k]]),
                             column="timestamp")
        if g == 0:
            ref_t, ref_line, total = tg, line[rows], p[rows].copy()
            continue
        if tg.size != ref_t.size or not np.array_equal(tg, ref_t):
            n = min(tg.size, ref_t.size)
            diff = np.flatnonzero(tg[:n] != ref_t[:n])
            k = int(diff[0]) if diff.size else n
            if k < ref_t.size and (k >= tg.size or ref_t[k] < tg[k]):
                where, msg = int(ref_line[k]), f"GPU {u} has no row at this instant"
            else:
                where, msg = int(line[rows[k]]), f"GPU {uuids[0]} has no row at this instant"
            raise InputError(path, f"each sampling instant needs exactly one row per GPU "
                             f"(tp = {tp}): {msg}", line=where, column="timestamp")
        total += p[rows]
    return PowerLog(ref_t, total, ref_line, uuids)


def resample(log: PowerLog, path: Path, *, interval_s: float, max_gap_s: float
             ) -> tuple[float, np.ndarray]:
    """Linear interpolation of the instants onto ``start + interval_s * k``.

    Returns
    -------
    (start_s, power_w) : [s, Unix epoch] first instant, and float64 (n_steps,) [W] with
        ``n_steps = floor((last - first) / interval_s) + 1``. A gap between consecutive
        instants longer than ``max_gap_s`` [s] is an :class:`InputError` naming its line.
    """
    gaps = np.diff(log.time_s)
    bad = np.flatnonzero(gaps > max_gap_s)
    if bad.size:
        k = int(bad[0])
        raise InputError(path, f"gap of {gaps[k]:.3f} s between samples (longer than "
                         f"max_gap_s = {max_gap_s} s) after line {int(log.line[k])}",
                         line=int(log.line[k + 1]), column="timestamp")
    start = float(log.time_s[0])
    n_steps = int(np.floor((log.time_s[-1] - start) / interval_s + 1e-9)) + 1
    grid = start + interval_s * np.arange(n_steps)
    return start, np.interp(grid, log.time_s, log.power_w)
