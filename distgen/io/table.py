"""Small result tables (one row per item, e.g. the points of a sweep) as Parquet and CSV.

Both files are written atomically (temporary name, fsync, rename). Columns are plain Python
lists; a column mixing ints and floats is stored as float, any other mix as strings; lists and
mappings in cells are stored as JSON text. Table metadata (units, format) goes into the
Parquet schema metadata under ``distgen``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distgen.io.outdir import atomic_path, commit_file, write_bytes_atomic

METADATA_KEY = b"distgen"


def _cell(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _column(values: list) -> list:
    values = [_cell(v) for v in values]
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int, float} and float in kinds:
        return [None if v is None else float(v) for v in values]
    if len(kinds) > 1:
        return [None if v is None else str(v) for v in values]
    return values


def _csv_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value)
                                                         else ("inf" if value > 0 else "-inf"))
    return str(value)


def write_table(parquet_path: str | Path, csv_path: str | Path | None,
                columns: dict[str, list], *, metadata: dict | None = None) -> list[Path]:
    """Write ``columns`` (name -> values, all the same length) to Parquet and CSV.

    Returns the paths written (Parquet first).
    """
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    data = {name: _column(list(values)) for name, values in columns.items()}
    meta = {METADATA_KEY: json.dumps(metadata or {}).encode("utf-8")}
    table = pa.table({name: pa.array(values) for name, values in data.items()}, metadata=meta)
    parquet_path = Path(parquet_path)
    tmp = atomic_path(parquet_path)
    try:
        pq.write_table(table, str(tmp))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    written = [commit_file(tmp, parquet_path)]
    if csv_path is not None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(list(data))
        n = lengths.pop() if lengths else 0
        for i in range(n):
            writer.writerow([_csv_text(values[i]) for values in data.values()])
        written.append(write_bytes_atomic(csv_path, buf.getvalue().encode("utf-8")))
    return written


def read_table(path: str | Path) -> tuple[dict[str, list], dict]:
    """A table written by :func:`write_table`: (name -> list of values, metadata)."""
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    meta = json.loads(raw) if raw else {}
    return {name: table.column(name).to_pylist() for name in table.column_names}, meta
