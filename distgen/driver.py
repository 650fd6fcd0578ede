"""Run a generation end to end: check -> plan -> shards -> assemble -> manifest.

Before any work the run's footprint is estimated and checked against the machine or cluster
(:mod:`distgen.footprint`) and the output folder is checked and locked
(:class:`~distgen.io.outdir.OutputLock`). Shards are run by an
:class:`~distgen.distributed.executor.Executor` (one process, or Ray tasks); everything else is
shared, so the output is identical whichever executor ran them.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from pathlib import Path
from typing import Callable

import distgen
from distgen.assembly import ROW_STATS_FILE, SHARDS_FILE, assemble, time_grid, utc_now
from distgen.backend import resolve_backend
from distgen.config import config_hash, config_to_dict, validate
from distgen.config.schema import RunConfig
from distgen.config.serving_mix import mix_report
from distgen.distributed.executor import Executor, LocalExecutor
from distgen.distributed.jobs import (ATTEMPTS_DIR, library_payload, read_attempts, shard_job,
                                      write_shared_check)
from distgen.errors import DistgenError, os_error_text
from distgen.footprint import (Capacity, Footprint, available_memory_bytes, check_footprint,
                               estimate_footprint, free_disk_bytes)
from distgen.inputs import index_ranges, input_differences
from distgen.io.outdir import (OutputLock, check_output_target, finalize_output_dir,
                               interrupted_shards, parts_dir, prepare_output_dir)
from distgen.io.parts import completed_shards
from distgen.model.artifact import ModelLibrary
from distgen.pipeline import ReplayRequests, RunPlan, plan_run
from distgen.results import RunSummary
from distgen.topology import Shard

UNITS = {"power": "W", "energy": "J", "time": "s", "time_s": "seconds since start_time",
         "timestamp_utc": "UTC, interval start"}
#: A replayed trace spanning less than this share of the run is repeated many times: warned.
TRACE_COVERAGE_WARNING = 0.01

Log = Callable[[str], None]


def run_shards(executor: Executor, plan: RunPlan, shards: list[Shard], library: ModelLibrary,
               parts: Path, replay: ReplayRequests | None, progress=None) -> dict:
    """Run ``shards`` with ``executor``; return execution facts (tasks, attempts, retries)."""
    parts = Path(parts).resolve()
    shutil.rmtree(parts / ATTEMPTS_DIR, ignore_errors=True)
    check = write_shared_check(parts)
    replay_doc = None if replay is None else {
        f.name: getattr(replay, f.name) for f in dataclasses.fields(replay)}

    def done(shard, record):
        if progress is not None:
            progress.advance(record.summary.deployments * plan.n_steps)
            progress.shard_done(record)

    try:
        records = executor.map(
            shard_job, shards, shared=(plan, library_payload(library), replay_doc, str(parts),
                                       check),
            label=lambda s: f"shard {s.index} (racks {s.rack_start}..{s.rack_stop - 1})",
            on_done=done)
    finally:
        (parts / check).unlink(missing_ok=True)
    attempts = read_attempts(parts)
    retried = sorted(i for i, a in attempts.items() if len(a) > 1)
    return {"tasks": len(records), "workers": len({(r.host, r.pid) for r in records}),
            "task_attempts": sum(len(a) for a in attempts.values()),
            "retried_shards": retried,
            "attempt_nodes": {str(i): [a["node_id"] for a in attempts[i]] for i in retried}}


def shards_to_run(plan: RunPlan, parts: Path, log: Log | None = None) -> list[Shard]:
    """Shards without a committed result computed from this run's very inputs and racks.

    A committed shard from other inputs (another configuration, request trace, model artifact
    or distgen version: :class:`~distgen.inputs.RunInputs`) or for other racks is recomputed,
    never kept silently: ``log`` receives one line per cause, naming the shards.
    """
    done = completed_shards(parts)
    want = plan.inputs
    todo, causes = [], {}
    for s in plan.shards:
        marker = done.get(s.index)
        if marker is None:
            todo.append(s)
            continue
        summary = marker.get("summary", {})
        why = []
        if (summary.get("rack_start"), summary.get("rack_stop")) != (s.rack_start, s.rack_stop):
            why.append("for other racks (the site or the number of shards changed)")
        elif summary.get("inputs_sha256") != want.sha256:
            why += input_differences(summary.get("inputs"), want)
        if why:
            todo.append(s)
            for cause in why:
                causes.setdefault(cause, []).append(s.index)
    if log is not None:
        for cause, shards in causes.items():
            log(f"shard{'s' if len(shards) > 1 else ''} {index_ranges(shards)} "
                f"{'were' if len(shards) > 1 else 'was'} computed {cause}: recomputing")
    return todo


def build_manifest(plan: RunPlan, library: ModelLibrary, files: list, summary: RunSummary,
                   execution: dict, footprint: Footprint | None = None) -> dict:
    cfg = plan.config
    t = plan.topology
    used = sorted(set(t.row_serving))
    inputs = plan.inputs
    return {
        "format": "distgen.run",
        "distgen_version": distgen.__version__,
        "created_at": utc_now(),
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "config": config_to_dict(cfg),
        "inputs": inputs.to_dict() if inputs is not None else None,
        "model_library": {
            "source": library.source, "version": library.version,
            "models": {c: {"fitted_at": library[c].provenance.get("fitted_at"),
                           "runs": [r["run_id"] for r in library[c].provenance.get("runs", [])],
                           "tdp_w": library[c].tdp_w, "idle_w": library[c].idle_w,
                           "sha256": (inputs.models_sha256.get(c) if inputs else None)}
                       for c in used}},
        "topology": {"rows": t.rows, "racks": t.n_racks, "servers": t.n_servers,
                     "gpus": t.n_gpus, "deployments": t.n_deployments,
                     "serving_mix": mix_report(cfg.facility),
                     "row_serving": list(t.row_serving)},
        "grid": {**time_grid(plan), "duration_s": cfg.duration_s},
        "units": UNITS,
        "files": files,
        "summary": {**summary.to_dict(), "shards_table": SHARDS_FILE,
                    "rows_table": ROW_STATS_FILE if "rows" in plan.level_factors else None},
        "estimate": footprint.to_dict() if footprint is not None else None,
        "execution": {**execution, "shards": len(plan.shards),
                      "backend": resolve_backend(
                          cfg.backend, remote_gpus=cfg.ray.num_gpus_per_task > 0),
                      "python": platform.python_version()},
    }


def capacity_of(info: dict, config: RunConfig, out_dir: str | Path) -> Capacity:
    """Where an executor with facts ``info`` (its ``.info``) runs shard tasks: how many at once,
    with how much memory, and the disk space at ``out_dir``."""
    disk = free_disk_bytes(out_dir)
    if info.get("executor") != "ray":
        return Capacity(1, available_memory_bytes(), tasks_share_machine=True, in_process=True,
                        disk_free_bytes=disk)
    cpus = float(info.get("ray_cpus") or os.cpu_count() or 1)
    per_task = max(config.ray.num_cpus_per_task, 1e-9)
    tasks = max(1, min(config.shards, int(cpus // per_task) or 1))
    local = info.get("ray_started_here", True)
    return Capacity(tasks, available_memory_bytes(), tasks_share_machine=bool(local),
                    node_memory_bytes=info.get("ray_node_memory_bytes") or None,
                    disk_free_bytes=disk)


def local_capacity(kind: str, config: RunConfig, out_dir: str | Path) -> Capacity:
    """:func:`capacity_of` an executor not started yet: ``"local"``, or ``"ray"`` started on
    this machine with all its CPUs."""
    info = {"executor": kind, "ray_cpus": os.cpu_count(), "ray_started_here": True}
    return capacity_of(info, config, out_dir)


def preflight(config: RunConfig, library: ModelLibrary, out_dir: str | Path, capacity: Capacity,
              *, resume: bool = False) -> Footprint:
    """Everything checked before any work or any file: the configuration against the model
    library, the output folder, and the run's footprint against ``capacity``. Returns the
    footprint. Fast for any configuration (nothing of the site's size is built)."""
    validate(config, known_serving=library.tp_by_config)
    check_output_target(out_dir, resume=resume)
    footprint = estimate_footprint(config, library)
    kept = 0.0
    if resume:
        parts = Path(out_dir) / ".parts"
        kept = float(sum(p.stat().st_size for p in parts.glob("*") if p.is_file())) \
            if parts.is_dir() else 0.0
    check_footprint(footprint, config, capacity, reusable_disk_bytes=kept)
    return footprint


def _warn_trace_coverage(plan: RunPlan, replay: ReplayRequests, log: Log | None) -> None:
    cfg = plan.config
    span_run_s = replay.trace_span_s / cfg.traffic.replay.time_scale
    share = span_run_s / cfg.duration_s
    if log is not None and share < TRACE_COVERAGE_WARNING:
        what = ("repeats about {:,.0f} times".format(cfg.duration_s / max(span_run_s, 1e-9))
                if cfg.traffic.replay.loop else "leaves the rest of the run without requests")
        log(f"warning: the request trace {cfg.traffic.replay.path} spans {span_run_s:.3g} s of "
            f"the run (traffic.replay.time_scale = {cfg.traffic.replay.time_scale:g}), "
            f"{100 * share:.2g} % of duration_s = {cfg.duration_s:g} s: it {what}")


def generate(config: RunConfig, out_dir: str | Path, *, library: ModelLibrary | None = None,
             overwrite: bool = False, resume: bool = False, executor: Executor | None = None,
             progress=None, log: Log | None = None) -> dict:
    """Generate the run described by ``config`` into ``out_dir``; return the manifest.

    Before any work: :func:`preflight` (a run that cannot fit is refused with its estimate),
    then the folder is locked against other runs. With ``resume``, shards already committed
    from the same inputs are kept and only the rest run; shards computed from other inputs
    are recomputed, each cause reported to ``log`` (one line each, like every notice). The
    manifest is written last: a folder with ``manifest.json`` is complete.
    """
    library = library or ModelLibrary.load(config.model_library)
    executor = executor or LocalExecutor()
    footprint = preflight(config, library, out_dir,
                          capacity_of(executor.info, config, out_dir), resume=resume)
    plan = plan_run(config, library)
    replay = None
    if config.traffic.mode == "replay":
        replay = ReplayRequests.build(plan, library)
        _warn_trace_coverage(plan, replay, log)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistgenError(f"cannot create output folder {out}: {os_error_text(exc)}") from exc
    with OutputLock(out):
        finished = interrupted_shards(out)
        if finished and not resume and log is not None:
            log(f"{out} holds an interrupted run with {finished} finished shard(s); without "
                f"--resume they are computed again")
        out = prepare_output_dir(out, overwrite=overwrite, resume=resume)
        parts = parts_dir(out)
        todo = shards_to_run(plan, parts, log) if resume else list(plan.shards)
        if progress is not None:
            progress.start(plan, todo)
        facts = run_shards(executor, plan, todo, library, parts, replay, progress)
        if progress is not None:
            progress.finish()
        files, summary = assemble(plan, out)
        manifest = build_manifest(plan, library, files, summary,
                                  {**executor.info, **facts,
                                   "resumed_shards": len(plan.shards) - len(todo)},
                                  footprint)
        finalize_output_dir(out, manifest)
    return manifest
