"""Reader for ``engine.csv``, the serving engine's metrics scrape (vLLM ``/metrics`` at ~4 Hz).

The file has CRLF line endings and Unix-epoch timestamps; it is read with ``newline=''``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distgen.errors import InputError
from distgen.ingest.power import find_columns, iter_csv_columns, parse_floats
from distgen.ingest.trace import EngineLog

#: EngineLog field <- engine.csv column.
ENGINE_COLUMNS = {
    "time_s": "timestamp",
    "running": "num_requests_running",
    "waiting": "num_requests_waiting",
    "kv_cache_usage": "gpu_cache_usage_perc",
    "prompt_tokens_total": "prompt_tokens_total",
    "generation_tokens_total": "generation_tokens_total",
    "iterations_total": "iteration_tokens_total_count",
}


def read_engine(path: Path, *, epoch_offset_s: float = 0.0) -> EngineLog:
    """Read ``engine.csv`` into an :class:`EngineLog`.

    Parameters
    ----------
    path : the metrics scrape; needs the columns in :data:`ENGINE_COLUMNS` (others ignored).
    epoch_offset_s : [s] added to every timestamp (``clock.engine_epoch_offset_s``).

    Returns
    -------
    EngineLog with float64 arrays. An :class:`InputError` names missing columns (and the
    columns found), non-numeric cells (line, column) and timestamps that do not strictly
    increase (line).
    """
    names = list(ENGINE_COLUMNS.values())
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for line0, cols in iter_csv_columns(path, lambda h: find_columns(path, h, names)):
        for part, name, values in zip(parts, names, cols):
            part.append(parse_floats(values, path, line0, name))
    if not parts[0]:
        raise InputError(path, "no data rows")
    arrays = [np.concatenate(p) for p in parts]
    arrays[0] = arrays[0] + epoch_offset_s
    bad = np.flatnonzero(np.diff(arrays[0]) <= 0)
    if bad.size:
        k = int(bad[0]) + 1
        raise InputError(path, f"timestamp {arrays[0][k]:.6f} is not after the previous row's "
                         f"{arrays[0][k - 1]:.6f} (must strictly increase)", line=k + 2,
                         column="timestamp")
    return EngineLog(**dict(zip(ENGINE_COLUMNS, arrays)))
