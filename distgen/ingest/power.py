"""Reader for ``power.csv`` (an ``nvidia-smi --query-gpu`` log) and the CSV helpers it shares.

The log holds one row per GPU per sampling instant (~0.25 s). :func:`read_power` checks it;
:func:`resample` puts each GPU of the tensor-parallel group on one regular grid, sums them and
marks the sampling gaps (missing data, never fitted on or scored). Parsing works on whole
columns with NumPy (chunks of rows), so a day-long log with millions of rows costs little more
than the ``csv`` parsing itself.
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
from distgen.ingest.trace import GapReport

_CHUNK_ROWS = 1 << 16
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

#: A spacing between consecutive samples of one GPU longer than this many nominal intervals
#: (the median spacing) is a sampling gap: at least one sample is missing there.
GAP_FACTOR = 1.5
#: Power-column names in order of preference (matched case-insensitively; nvidia-smi's
#: ``power.draw`` may carry a unit suffix such as ``power.draw [W]``). ``power.draw`` comes
#: first because the bundled models were fitted on it.
POWER_COLUMNS = ("power.draw", "power.draw.average", "power.draw.instant", "power_w",
                 "power_draw_w")
#: GPU-id columns in order of preference; with none, a TP1 log is one GPU.
GPU_COLUMNS = ("uuid", "gpu_uuid", "index", "gpu_index", "gpu", "gpu_id")
#: Time columns.
TIME_COLUMNS = ("timestamp", "time", "time_s", "timestamp_s")
_UNIT_SUFFIX = re.compile(r"\s*\[[^\]]*\]$")


@dataclass(frozen=True)
class GpuSamples:
    """One GPU's samples as logged.

    Attributes
    ----------
    gpu : the GPU's id (uuid, or index when the log has no uuid column).
    time_s : float64 (k,) [s, Unix epoch] sampling instants, strictly increasing.
    power_w : float64 (k,) [W] board power.
    line : int64 (k,) file line of each sample (for messages).
    """

    gpu: str
    time_s: np.ndarray
    power_w: np.ndarray
    line: np.ndarray


@dataclass(frozen=True)
class PowerLog:
    """The tensor-parallel group's samples, one :class:`GpuSamples` per GPU (file order)."""

    gpus: tuple[GpuSamples, ...]

    @property
    def uuids(self) -> tuple[str, ...]:
        return tuple(g.gpu for g in self.gpus)


def _pick_column(header: list[str], accepted: Sequence[str]) -> str | None:
    """The first of ``accepted`` (in order) present in ``header``, ignoring case and a
    ``[unit]`` suffix; None when there is none."""
    bare = {_UNIT_SUFFIX.sub("", h).strip().lower(): h for h in reversed(header)}
    return next((bare[a] for a in accepted if a in bare), None)


def read_power(path: Path, *, tp: int, active_uuids: Sequence[str] | None,
               basis: str, utc_offset_s: float, epoch_offset_s: float) -> PowerLog:
    """Read ``power.csv``: every GPU's samples, checked, on the Unix-epoch clock.

    Parameters
    ----------
    path : a GPU power log with one row per GPU per sampling instant: a time column
        (:data:`TIME_COLUMNS`), a GPU-id column (:data:`GPU_COLUMNS`; optional when
        ``tp = 1``) and a power column (:data:`POWER_COLUMNS`), in any order; other columns
        are ignored. Power cells may carry a ``W`` suffix.
    tp : GPUs in the deployment; the file must hold exactly this many distinct GPU ids.
    active_uuids : the manifest's GPU uuids, or None to skip that check (also skipped when the
        GPU-id column is not a uuid column).
    basis : ``"local_wall_time"`` (``YYYY/MM/DD HH:MM:SS.mmm``) or ``"unix_epoch"`` [s]
        (the manifest's ``clock.power_timestamp_basis``).
    utc_offset_s : [s] local time minus UTC (``clock.local_utc_offset_s``; -25200 for UTC-7).
    epoch_offset_s : [s] added after conversion (``clock.power_epoch_offset_s``).

    Returns
    -------
    PowerLog. The GPUs need not share timestamps (:func:`resample` aligns them). An
    :class:`InputError` names the line of a duplicated or backwards timestamp of one GPU.
    """
    names: dict[str, str | None] = {}

    def resolve(header: list[str]) -> list[int]:
        names["time"] = _pick_column(header, TIME_COLUMNS)
        names["gpu"] = _pick_column(header, GPU_COLUMNS)
        names["power"] = _pick_column(header, POWER_COLUMNS)
        for role, accepted in (("time", TIME_COLUMNS), ("power", POWER_COLUMNS)):
            if names[role] is None:
                raise InputError(path, f"no {role} column; columns found: {header}; accepted "
                                 f"(any case, optional [unit] suffix): {list(accepted)}", line=1)
        if names["gpu"] is None and tp != 1:
            raise InputError(path, f"no GPU-id column, needed for tp = {tp}; columns found: "
                             f"{header}; accepted: {list(GPU_COLUMNS)}", line=1)
        wanted = [names["time"], names["power"]] + ([names["gpu"]] if names["gpu"] else [])
        return [header.index(n) for n in wanted]

    times, powers, codes = [], [], []
    uuid_code: dict[str, int] = {}  # stripped uuid -> GPU number
    raw_code: dict[str, int] = {}  # uuid as written -> GPU number
    first_line = {}
    for line0, cols in iter_csv_columns(path, resolve):
        ts, pw = cols[0], cols[1]
        uu = cols[2] if len(cols) > 2 else ["0"] * len(ts)
        if basis == "local_wall_time":
            t = parse_wall_time(ts, path, line0, names["time"]) - utc_offset_s
        else:
            t = parse_floats(ts, path, line0, names["time"])
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
    gpu_column = names["gpu"] or "uuid"

    if len(uuids) != tp:
        raise InputError(path, f"manifest tp = {tp} but the file holds {len(uuids)} GPU(s): "
                         f"{list(uuids)}", column=gpu_column)
    if active_uuids is not None and "uuid" in (names["gpu"] or "").lower():
        for u in uuids:
            if u not in active_uuids:
                raise InputError(path, f"GPU {u!r} is not in the manifest's "
                                 f"server.active_gpu_uuids {list(active_uuids)}",
                                 line=first_line[u], column=gpu_column)
        absent = [u for u in active_uuids if u not in uuids]
        if absent:
            raise InputError(path, f"GPU(s) {absent} of the manifest's server.active_gpu_uuids "
                             f"have no rows (tp = {tp})", column=gpu_column)
    gpus = []
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
                             column=names["time"])
        if rows.size < 2:
            raise InputError(path, f"GPU {u} has {rows.size} sample(s); at least two are needed",
                             column=names["time"])
        gpus.append(GpuSamples(u, tg, p[rows], line[rows]))
    return PowerLog(tuple(gpus))


@dataclass(frozen=True)
class Resampled:
    """A TP group's power on the regular grid.

    Attributes
    ----------
    start_s : [s, Unix epoch] time of the first grid step.
    power_w : float64 (n_steps,) [W] sum over the GPUs; interpolated across gaps.
    valid : bool (n_steps,) False strictly inside a gap of any GPU.
    gaps : :class:`~distgen.ingest.trace.GapReport` (intervals relative to ``start_s``).
    """

    start_s: float
    power_w: np.ndarray
    valid: np.ndarray
    gaps: GapReport


def _drop_stale(gpu: GpuSamples, gap_s: float) -> GpuSamples:
    """Drop the row right after a gap when it repeats the last row's power exactly: loggers
    that miss samples may write the previous reading once more, and it measures nothing."""
    step = np.diff(gpu.time_s)
    after = np.flatnonzero(step[:-1] > gap_s) + 1  # rows after a gap, not the last row
    stale = after[gpu.power_w[after] == gpu.power_w[after - 1]]
    if not stale.size:
        return gpu
    keep = np.ones(gpu.time_s.size, bool)
    keep[stale] = False
    return GpuSamples(gpu.gpu, gpu.time_s[keep], gpu.power_w[keep], gpu.line[keep])


def resample(log: PowerLog, path: Path, *, interval_s: float, max_gap_s: float) -> Resampled:
    """Put the TP group's samples on the grid ``start + interval_s * k`` and find the gaps.

    Each GPU is interpolated linearly onto the grid on its own, so the GPUs need not share
    timestamps (separate loggers, DCGM); the grid spans the time all GPUs were logged. A grid
    step strictly inside a gap of any GPU (see :class:`~distgen.ingest.trace.GapReport` for
    the rule) is invalid: its power is interpolated, for plotting, but must not be fitted on
    or scored.

    Parameters
    ----------
    log : the GPUs' samples (:func:`read_power`).
    path : the file, for messages.
    interval_s : [s] grid step.
    max_gap_s : [s] refuse the run when a gap is longer than this.

    Returns
    -------
    :class:`Resampled`; ``n_steps = floor((end - start) / interval_s) + 1``.

    Raises
    ------
    InputError
        a gap longer than ``max_gap_s`` (naming the line after it), GPUs sampled at different
        cadences, or GPUs whose logs start or end more than ``max_gap_s`` apart (both
        systematic, not gaps).
    """
    cadence = {g.gpu: float(np.median(np.diff(g.time_s))) for g in log.gpus}
    nominal = float(np.median(np.concatenate([np.diff(g.time_s) for g in log.gpus])))
    slow, fast = max(cadence, key=cadence.get), min(cadence, key=cadence.get)
    if cadence[slow] > GAP_FACTOR * cadence[fast]:
        raise InputError(path, f"GPU {slow} is sampled every {cadence[slow]:.3f} s but GPU "
                         f"{fast} every {cadence[fast]:.3f} s; a TP group's GPUs must be "
                         f"logged at one cadence")
    gap_s = GAP_FACTOR * nominal
    gpus = [_drop_stale(g, gap_s) for g in log.gpus]
    start = max(float(g.time_s[0]) for g in gpus)
    end = min(float(g.time_s[-1]) for g in gpus)
    for g in gpus:
        late, early = float(g.time_s[0]) - min(float(h.time_s[0]) for h in gpus), \
            max(float(h.time_s[-1]) for h in gpus) - float(g.time_s[-1])
        if max(late, early) > max_gap_s:
            what = (f"starts {late:.3f} s after" if late >= early else
                    f"ends {early:.3f} s before")
            raise InputError(path, f"GPU {g.gpu}'s log {what} another GPU's (more than "
                             f"max_gap_s = {max_gap_s} s): the TP group's power is not known "
                             f"there", line=int(g.line[0] if late >= early else g.line[-1]))
    if end <= start:
        raise InputError(path, "the GPUs' logs do not overlap in time")

    n_steps = int(np.floor((end - start) / interval_s + 1e-9)) + 1
    grid = start + interval_s * np.arange(n_steps)
    if all(np.array_equal(g.time_s, gpus[0].time_s) for g in gpus):
        # one timestamp per instant: interpolate the sum (exactly as for one GPU)
        power = np.interp(grid, gpus[0].time_s, np.sum([g.power_w for g in gpus], axis=0))
    else:
        power = np.sum([np.interp(grid, g.time_s, g.power_w) for g in gpus], axis=0)

    # (start, stop, line after) of every gap of every GPU, then merged across GPUs
    spans = []
    for g in gpus:
        k = np.flatnonzero(np.diff(g.time_s) > gap_s)
        spans += [(float(g.time_s[i]), float(g.time_s[i + 1]), int(g.line[i]),
                   int(g.line[i + 1])) for i in k]
    spans.sort()
    merged: list[list] = []
    for a, b, la, lb in spans:
        if merged and a < merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1][1], merged[-1][3] = b, lb
        else:
            merged.append([a, b, la, lb])
    intervals, ranges = [], []
    valid = np.ones(n_steps, bool)
    for a, b, la, lb in merged:
        if b - a > max_gap_s:
            raise InputError(path, f"gap of {b - a:.3f} s between samples after line {la} "
                             f"(longer than max_gap_s = {max_gap_s} s; a longer limit, e.g. "
                             f"--max-gap-s, accepts it and masks the gap)", line=lb,
                             column="timestamp")
        a, b = max(a, start), min(b, end)
        if b <= a:
            continue  # before or after the span all GPUs cover
        eps = 1e-9 * interval_s
        first = int(np.floor((a - start) / interval_s + eps)) + 1
        stop = int(np.ceil((b - start) / interval_s - eps))
        first, stop = max(first, 0), min(stop, n_steps)
        valid[first:stop] = False
        intervals.append((a - start, b - start))
        if stop > first:
            ranges.append((first, stop))
    return Resampled(start, power, valid, GapReport(nominal, tuple(intervals), tuple(ranges)))
