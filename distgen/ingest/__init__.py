"""Measured-run readers: manifest, power.csv, request log and engine log -> :class:`RunTrace`."""

from distgen.ingest.runs import (DEFAULT_MAX_GAP_S, INTERVAL_S, discover_runs, read_run,
                                 read_runs)
from distgen.ingest.trace import (EngineLog, GapReport, RequestLog, RunTrace, ServingSettings,
                                  config_id_for)

__all__ = [
    "DEFAULT_MAX_GAP_S",
    "INTERVAL_S",
    "EngineLog",
    "GapReport",
    "RequestLog",
    "RunTrace",
    "ServingSettings",
    "config_id_for",
    "discover_runs",
    "read_run",
    "read_runs",
]
