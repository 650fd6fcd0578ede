"""Read measured run folders into :class:`RunTrace` values.

A run folder holds ``manifest.json``, ``power.csv``, a request log (``requests.json``,
``requests_core.json`` or a ``vllm bench serve`` result JSON: see
:func:`~distgen.ingest.requests.find_request_log`), and optionally ``engine.csv`` (see
``docs/DATA.md``, ``tests/data/measured/`` and the provenance notes there).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from distgen.core.grid import INTERVAL_S
from distgen.errors import InputError
from distgen.ingest.engine import read_engine
from distgen.ingest.manifest import read_manifest
from distgen.ingest.power import read_power, resample
from distgen.ingest.requests import find_request_log, read_requests
from distgen.ingest.trace import RunTrace, config_id_for

#: [s] Default longest sampling gap a run may have. Real nvidia-smi logs miss 1.0-2.04 s at
#: times; a gap is masked either way, and only a run with a longer gap is refused.
DEFAULT_MAX_GAP_S = 10.0


def read_run(run_dir: str | os.PathLike, *, max_gap_s: float = DEFAULT_MAX_GAP_S) -> RunTrace:
    """Read one measured run folder.

    Parameters
    ----------
    run_dir : folder with ``manifest.json``, ``power.csv``, a request log and optionally
        ``engine.csv``.
    max_gap_s : [s] longest sampling gap accepted. Every gap (a spacing of more than 1.5
        nominal sampling intervals) is masked in ``RunTrace.valid``, never fitted on or
        scored; a run with a gap longer than ``max_gap_s`` is refused.

    Returns
    -------
    RunTrace on the Unix-epoch clock: deployment power (sum over the TP group) on a regular
    ``INTERVAL_S`` grid over the time every GPU was logged, its validity mask and gap report,
    the request log sorted by arrival, and the engine log (None without ``engine.csv``).
    ``serving.enable_prefix_caching`` is the manifest's ``server.enable_prefix_caching``; when
    the manifest does not say, it is True if the request log has cached prompt tokens.

    Raises
    ------
    InputError
        naming the file, line / column / key of anything that cannot be used as it is.
    """
    if not (max_gap_s > 0 and np.isfinite(max_gap_s)):
        raise ValueError(f"max_gap_s must be a positive number of seconds, got {max_gap_s!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(run_dir, "run folder not found")
    man_path = run_dir / "manifest.json"
    man = read_manifest(man_path)

    power_path = run_dir / "power.csv"
    if not power_path.is_file():
        raise InputError(power_path, "file not found")
    log = read_power(power_path, tp=man.tp, active_uuids=man.active_uuids,
                     basis=man.power_basis, utc_offset_s=man.local_utc_offset_s,
                     epoch_offset_s=man.power_epoch_offset_s)
    grid = resample(log, power_path, interval_s=INTERVAL_S, max_gap_s=max_gap_s)

    req_path = find_request_log(run_dir)
    requests = read_requests(req_path, epoch_offset_s=man.request_epoch_offset_s,
                             basis=man.request_basis)
    first_s = grid.start_s
    last_s = grid.start_s + INTERVAL_S * (grid.power_w.size - 1)
    if not np.any((requests.arrival_s >= first_s) & (requests.arrival_s <= last_s)):
        raise InputError(req_path, f"no request arrives inside the power window "
                         f"[{first_s:.3f}, {last_s:.3f}] s (power.csv, epoch); requests span "
                         f"[{requests.arrival_s[0]:.3f}, {requests.arrival_s[-1]:.3f}] s",
                         column="request_timestamps")

    serving = man.serving
    n_cached = int(requests.cached_tokens.sum())
    declared = man.raw.get("server", {}).get("enable_prefix_caching")
    if declared is None and n_cached > 0:
        serving = replace(serving, enable_prefix_caching=True)
    elif declared is False and n_cached > 0:
        raise InputError(man_path, f"server.enable_prefix_caching is false but {req_path.name} "
                         f"has {n_cached} cached prompt tokens",
                         column="server.enable_prefix_caching")

    engine_path = run_dir / "engine.csv"
    engine = (read_engine(engine_path, epoch_offset_s=man.engine_epoch_offset_s)
              if engine_path.is_file() else None)

    return RunTrace(
        run_id=man.run_id, source=run_dir, config_id=config_id_for(man.model, man.hardware, man.tp),
        model_name=man.model, gpu=man.hardware, tp=man.tp, start_s=grid.start_s,
        interval_s=INTERVAL_S, power_w=grid.power_w, requests=requests, engine=engine,
        serving=serving, manifest=man.raw, valid=grid.valid, gaps=grid.gaps,
    )


def discover_runs(*paths: str | os.PathLike) -> list[Path]:
    """Run folders (folders holding ``manifest.json``) under the given paths.

    Parameters
    ----------
    paths : each a run folder, or a folder searched recursively for run folders (the search
        does not descend into a run folder).

    Returns
    -------
    Resolved (absolute) run folders, sorted, without duplicates. An :class:`InputError` names
    a path that does not exist or holds no run.
    """
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(p, "path not found")
        if p.is_file():
            raise InputError(p, "expected a run folder or a folder of runs, got a file")
        runs = []
        for root, dirs, files in os.walk(p):
            if "manifest.json" in files:
                runs.append(Path(root).resolve())
                dirs[:] = []
        if not runs:
            raise InputError(p, "holds no run folders (no manifest.json below it)")
        found.update(runs)
    return sorted(found)


def read_runs(*paths: str | os.PathLike, **kw) -> list[RunTrace]:
    """:func:`read_run` (with keyword arguments ``kw``) on every run of :func:`discover_runs`."""
    return [read_run(d, **kw) for d in discover_runs(*paths)]
