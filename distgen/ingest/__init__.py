"""Measured-run readers: manifest, power.csv, request log and engine log -> :class:`RunTrace`."""

from distgen.ingest.runs import INTERVAL_S, discover_runs, read_run, read_runs
from distgen.ingest.trace import EngineLog, RequestLog, RunTrace, ServingSettings, config_id_for

__all__ = [
    "INTERVAL_S",
    "EngineLog",
    "RequestLog",
    "RunTrace",
    "ServingSettings",
    "config_id_for",
    "discover_runs",
    "read_run",
    "read_runs",
]
