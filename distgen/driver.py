"""Run a generation end to end: plan -> shards -> assemble -> manifest.

Shards are run by an :class:`~distgen.distributed.executor.Executor` (one process, or Ray
tasks); everything else is shared, so the output is identical whichever executor ran them.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
from pathlib import Path

import distgen
from distgen.assembly import assemble, utc_now
from distgen.backend import resolve_backend
from distgen.config import config_hash, config_to_dict
from distgen.config.schema import RunConfig
from distgen.core.grid import INTERVAL_S
from distgen.distributed.executor import Executor, LocalExecutor
from distgen.distributed.jobs import (ATTEMPTS_DIR, library_payload, read_attempts, shard_job,
                                      write_shared_check)
from distgen.io.outdir import finalize_output_dir, parts_dir, prepare_output_dir
from distgen.io.parts import completed_shards
from distgen.model.artifact import ModelLibrary
from distgen.pipeline import ReplayRequests, RunPlan, plan_run
from distgen.results import RunSummary
from distgen.topology import Shard

UNITS = {"power": "W", "energy": "J", "time": "s", "time_s": "seconds since start_time"}


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


def shards_to_run(plan: RunPlan, parts: Path) -> list[Shard]:
    """Shards without a committed result for this very configuration and rack range."""
    done = completed_shards(parts)
    want = config_hash(plan.config)
    todo = []
    for s in plan.shards:
        summary = done.get(s.index, {}).get("summary", {})
        if (summary.get("inputs_sha256") != want
                or (summary.get("rack_start"), summary.get("rack_stop")) != (s.rack_start, s.rack_stop)):
            todo.append(s)
    return todo


def build_manifest(plan: RunPlan, library: ModelLibrary, files: list, summary: RunSummary,
                   execution: dict) -> dict:
    cfg = plan.config
    t = plan.topology
    used = sorted(set(t.row_serving))
    return {
        "format": "distgen.run",
        "distgen_version": distgen.__version__,
        "created_at": utc_now(),
        "seed": cfg.seed,
        "config_hash": config_hash(cfg),
        "config": config_to_dict(cfg),
        "model_library": {
            "source": library.source, "version": library.version,
            "models": {c: {"fitted_at": library[c].provenance.get("fitted_at"),
                           "runs": [r["run_id"] for r in library[c].provenance.get("runs", [])],
                           "tdp_w": library[c].tdp_w, "idle_w": library[c].idle_w}
                       for c in used}},
        "topology": {"rows": t.rows, "racks": t.n_racks, "servers": t.n_servers,
                     "gpus": t.n_gpus, "deployments": t.n_deployments,
                     "row_serving": list(t.row_serving)},
        "grid": {"start_time": cfg.start_time, "interval_s": INTERVAL_S,
                 "n_steps": plan.n_steps, "duration_s": cfg.duration_s},
        "units": UNITS,
        "files": files,
        "summary": summary.to_dict(),
        "execution": {**execution, "shards": len(plan.shards),
                      "backend": resolve_backend(cfg.backend),
                      "python": platform.python_version()},
    }


def generate(config: RunConfig, out_dir: str | Path, *, library: ModelLibrary | None = None,
             overwrite: bool = False, resume: bool = False, executor: Executor | None = None,
             progress=None) -> dict:
    """Generate the run described by ``config`` into ``out_dir``; return the manifest.

    With ``resume``, shards already committed for the same configuration are kept and only the
    rest run. The manifest is written last: a folder with ``manifest.json`` is complete.
    """
    library = library or ModelLibrary.load(config.model_library)
    plan = plan_run(config, library)
    replay = ReplayRequests.build(plan, library) if config.traffic.mode == "replay" else None
    out = prepare_output_dir(out_dir, overwrite=overwrite, resume=resume)
    parts = parts_dir(out)
    todo = shards_to_run(plan, parts) if resume else list(plan.shards)
    if progress is not None:
        progress.start(plan, todo)
    executor = executor or LocalExecutor()
    facts = run_shards(executor, plan, todo, library, parts, replay, progress)
    if progress is not None:
        progress.finish()
    files, summary = assemble(plan, out)
    manifest = build_manifest(plan, library, files, summary,
                              {**executor.info, **facts,
                               "resumed_shards": len(plan.shards) - len(todo)})
    finalize_output_dir(out, manifest)
    return manifest
