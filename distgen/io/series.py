"""Power series as Parquet, written in a stream of time chunks with bounded memory.

One file per level: ``site.parquet`` (``time_s``, ``timestamp_utc``, ``it_power_w``,
``facility_power_w``) or an entity level such as ``rows.parquet`` (``time_s``,
``timestamp_utc``, ``row_id``, ``power_w``) in long format, time-major: for each time step, one
row per entity. ``time_s`` [s] is the start of each block (interval), counted from the run
start; ``timestamp_utc`` is the same instant as a UTC timestamp (millisecond precision), written
when the grid gives ``start_utc``. The schema metadata (key ``distgen``) repeats the level,
resolution, units and time grid, so a file is self-describing.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distgen.errors import InputError
from distgen.io.manifest import file_digest
from distgen.io.outdir import _json_default, atomic_path, commit_file

SERIES_FORMAT = "distgen.series"
METADATA_KEY = b"distgen"
DEFAULT_ROW_GROUP_ROWS = 1 << 20


class SeriesWriter:
    """Incremental Parquet writer for one level's power series.

    Parameters
    ----------
    path : final file path (written under :func:`~distgen.io.outdir.atomic_path` until
        :meth:`close`).
    level : e.g. ``"site"``, ``"rows"``, ``"racks"``, ``"servers"``, ``"deployments"``.
    resolution_s : [s] block length of this file's samples.
    value_columns : float64 value columns, e.g. ``["power_w"]`` or
        ``["it_power_w", "facility_power_w"]``.
    entity_column : int64 id column (``"row_id"``, ``"rack_id"``, ...) or None for the site.
    units : column -> unit (``{"power_w": "W"}``); every value column needs one; ``time_s``
        defaults to ``"s"``.
    grid : the time grid, at least ``start_time`` (ISO text), ``interval_s`` [s], ``n_steps``;
        with ``start_utc`` (ISO text with offset, the run start in UTC) the file gets the
        column ``timestamp_utc``.
    metadata : further JSON-serialisable facts stored under ``"metadata"``.
    compression : Parquet codec (``"zstd"`` by default).
    row_group_rows : rows buffered before a row group is written (bounds memory: about
        ``row_group_rows * 8 * n_columns`` bytes, twice that transiently).
    """

    def __init__(self, path: str | Path, *, level: str, resolution_s: float,
                 value_columns: list[str], entity_column: str | None,
                 units: dict[str, str], grid: dict, metadata: dict | None = None,
                 compression: str = "zstd", row_group_rows: int = DEFAULT_ROW_GROUP_ROWS):
        self.path = Path(path)
        self.level = level
        self.value_columns = list(value_columns)
        self.entity_column = entity_column
        if not self.value_columns:
            raise ValueError("value_columns must name at least one column")
        names = ["time_s"] + ([entity_column] if entity_column else []) + self.value_columns
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be distinct, got {names}")
        missing_units = [c for c in self.value_columns if c not in units]
        if missing_units:
            raise ValueError(f"units missing for value columns {missing_units}")
        missing_grid = [k for k in ("start_time", "interval_s", "n_steps") if k not in grid]
        if missing_grid:
            raise ValueError(f"grid missing keys {missing_grid}")
        if row_group_rows < 1:
            raise ValueError("row_group_rows must be >= 1")
        self.units = {"time_s": "s", **units}
        self._row_group_rows = int(row_group_rows)
        fields = [pa.field("time_s", pa.float64(), nullable=False)]
        self._start_utc_ms = None
        if grid.get("start_utc"):
            start = datetime.fromisoformat(grid["start_utc"])
            if start.utcoffset() is None:
                raise ValueError(f"grid start_utc {grid['start_utc']!r} has no UTC offset")
            self._start_utc_ms = round(start.timestamp() * 1000)
            self.units["timestamp_utc"] = "UTC, interval start"
            names.insert(1, "timestamp_utc")
            fields.append(pa.field("timestamp_utc", pa.timestamp("ms", tz="UTC"),
                                   nullable=False))
        if entity_column:
            fields.append(pa.field(entity_column, pa.int64(), nullable=False))
        fields += [pa.field(c, pa.float64(), nullable=False) for c in self.value_columns]
        self._meta = {
            "format": SERIES_FORMAT,
            "level": level,
            "resolution_s": float(resolution_s),
            "entity_column": entity_column,
            "value_columns": self.value_columns,
            "units": self.units,
            "grid": dict(grid),
            "metadata": dict(metadata or {}),
        }
        meta_json = json.dumps(self._meta, default=_json_default).encode("utf-8")
        self.schema = pa.schema(fields, metadata={METADATA_KEY: meta_json})
        self._names = names
        self._tmp = atomic_path(self.path)
        self._buffer: list[list[np.ndarray]] = []
        self._buffered = 0
        self._rows = 0
        self._last_time_s = -np.inf
        self._entity_ids: np.ndarray | None = None
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression=compression)

    # ------------------------------------------------------------------ writing
    def write(self, time_s: np.ndarray, values: dict[str, np.ndarray],
              entity_ids: np.ndarray | None = None) -> None:
        """Append a time chunk.

        Parameters
        ----------
        time_s : [s] (n_t,) block start times since the run start, increasing and after
            every earlier chunk's.
        values : value column -> array, (n_t, n_entities) for an entity level, (n_t,) for
            the site. Any real dtype; stored as float64.
        entity_ids : int (n_entities,); required on the first chunk of an entity level, then
            optional (the previous ids are reused).
        """
        if self._closed:
            raise RuntimeError(f"SeriesWriter for {self.path} is closed")
        t = np.asarray(time_s, dtype=np.float64).reshape(-1)
        n_t = t.size
        if n_t and (not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0)
                    or t[0] <= self._last_time_s):
            raise ValueError(f"{self.path.name}: time_s must be finite and increasing across "
                             f"chunks (previous end {self._last_time_s}, got {t[:3]}...)")
        if set(values) != set(self.value_columns):
            raise ValueError(f"{self.path.name}: values has columns {sorted(values)}, expected "
                             f"{sorted(self.value_columns)}")
        if self.entity_column:
            if entity_ids is not None:
                ids = np.asarray(entity_ids)
                if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                    raise ValueError(f"{self.path.name}: entity_ids must be 1-D integers")
                self._entity_ids = ids.astype(np.int64)
            if self._entity_ids is None:
                raise ValueError(f"{self.path.name}: entity_ids are required on the first chunk")
            ids = self._entity_ids
            n_e = ids.size
            cols = [np.repeat(t, n_e)] + [np.repeat(c, n_e) for c in self._stamps(t)] + \
                [np.tile(ids, n_t)]
            for c in self.value_columns:
                v = np.asarray(values[c])
                if v.shape != (n_t, n_e):
                    raise ValueError(f"{self.path.name}: {c} has shape {v.shape}, expected "
                                     f"({n_t}, {n_e}) = (time steps, entities)")
                cols.append(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))
        else:
            if entity_ids is not None:
                raise ValueError(f"{self.path.name}: level {self.level!r} has no entity column")
            cols = [t] + self._stamps(t)
            for c in self.value_columns:
                v = np.asarray(values[c])
                if v.shape != (n_t,):
                    raise ValueError(f"{self.path.name}: {c} has shape {v.shape}, expected "
                                     f"({n_t},)")
                cols.append(np.asarray(v, dtype=np.float64))
        if n_t:
            self._last_time_s = float(t[-1])
        n = cols[0].size
        if n == 0:
            return
        self._buffer.append(cols)
        self._buffered += n
        self._rows += n
        if self._buffered >= self._row_group_rows:
            self._flush(final=False)

    def _stamps(self, time_s: np.ndarray) -> list[np.ndarray]:
        """The ``timestamp_utc`` column for block starts ``time_s`` (none without start_utc)."""
        if self._start_utc_ms is None:
            return []
        ms = self._start_utc_ms + np.round(time_s * 1000.0).astype(np.int64)
        return [ms.astype("datetime64[ms]")]

    def _flush(self, *, final: bool) -> None:
        """Write full row groups from the buffer (and the remainder when ``final``)."""
        if not self._buffered:
            return
        joined = [np.concatenate([chunk[i] for chunk in self._buffer])
                  for i in range(len(self._names))]
        self._buffer, self._buffered = [], 0
        size = self._row_group_rows
        n = joined[0].size
        n_full = n if final else (n // size) * size
        for start in range(0, n_full, size):
            stop = min(start + size, n_full)
            table = pa.Table.from_arrays([pa.array(c[start:stop]) for c in joined],
                                         schema=self.schema)
            self._writer.write_table(table, row_group_size=size)
        if n_full < n:
            self._buffer = [[c[n_full:].copy() for c in joined]]
            self._buffered = n - n_full

    # ------------------------------------------------------------------ finishing
    def close(self) -> dict:
        """Write what is buffered, commit the file under its final name.

        Returns
        -------
        dict: ``path`` (file name, relative to its folder), ``level``, ``rows``, ``sha256``,
        ``bytes``.
        """
        if self._closed:
            raise RuntimeError(f"SeriesWriter for {self.path} is closed")
        try:
            self._flush(final=True)
            self._writer.close()
            digest = file_digest(self._tmp)
            n_bytes = self._tmp.stat().st_size
            commit_file(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return {"path": self.path.name, "level": self.level, "rows": self._rows,
                "sha256": digest, "bytes": n_bytes}

    def abort(self) -> None:
        """Drop the temporary file; an existing file at ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        self._buffer, self._buffered = [], 0
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - closing a half-written file may fail; we delete it
            pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "SeriesWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def read_series_metadata(path: str | Path) -> dict:
    """The ``distgen`` schema metadata of a series file (level, units, grid, ...)."""
    path = Path(path)
    try:
        schema = pq.read_schema(str(path))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(path, f"not a readable Parquet file ({exc})") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputError(path, "no 'distgen' schema metadata (not written by distgen)")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InputError(path, f"'distgen' schema metadata is not valid JSON ({exc})") from None


def read_series(path: str | Path,
                columns: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a series file whole (for tests and analysis of moderate files).

    Parameters
    ----------
    path : a file written by :class:`SeriesWriter`.
    columns : subset of columns to read (all by default).

    Returns
    -------
    columns : name -> 1-D NumPy array (long format, as stored).
    metadata : the ``distgen`` schema metadata.
    """
    meta = read_series_metadata(path)
    try:
        table = pq.read_table(str(path), columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(path, f"cannot read Parquet data ({exc})") from None
    return {name: table.column(name).to_numpy() for name in table.column_names}, meta
