"""Run a sweep: one generation per point through an executor, then the sweep table.

Each point is a whole generation with the local executor into ``OUT/points/<id>/``, run as one
item of :meth:`Executor.map <distgen.distributed.executor.Executor.map>` (one Ray task per point
on a cluster). Configs are validated on the driver before anything runs; a point gets its config
as plain JSON and the model library as JSON bytes.

With ``resume``, points whose folder holds a finished run of the same config are not run again
(their metrics are read back), and an interrupted point continues from its committed shards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from distgen.errors import DistgenError


def _finished(out_dir: Path, want_hash: str) -> bool:
    from distgen.io.outdir import is_complete
    if not is_complete(out_dir):
        return False
    try:
        doc = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return doc.get("config_hash") == want_hash


def _prepare_sweep_dir(out: Path, resume: bool) -> None:
    from distgen.sweep.spec import SWEEP_FORMAT

    meta = out / "sweep.json"
    if out.exists() and not out.is_dir():
        raise DistgenError(f"sweep output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = json.loads(meta.read_text(encoding="utf-8")).get("format") == SWEEP_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise DistgenError(f"sweep output folder {out} is not empty and holds no "
                               f"sweep.json; pick another folder")
    elif resume:
        raise DistgenError(f"cannot resume the sweep in {out}: no sweep was started there")
    out.mkdir(parents=True, exist_ok=True)


def run_sweep(spec, out_dir: str | Path, *, resume: bool = False, executor: str = "ray",
              address: str | None = None, num_cpus: int | None = None,
              log=None) -> tuple[list[dict], list[Path]]:
    """Run every point of ``spec`` into ``out_dir``; return (table rows, table files).

    Parameters
    ----------
    spec : a :class:`distgen.sweep.spec.SweepSpec`.
    resume : skip points already finished in ``out_dir`` (same config), continue others.
    executor : ``"ray"`` (one task per point; ``address`` / ``RAY_ADDRESS`` or a local Ray
        with ``num_cpus``) or ``"local"`` (points one after another in this process).
    log : stream for one line per finished point (None: quiet).

    Raises
    ------
    DistgenError : a bad sweep or point config (before anything runs), or points that failed
        (after the others finished; the table is then not written: fix and use ``resume``).
    """
    import dataclasses

    from distgen.config import config_hash, config_to_dict
    from distgen.distributed.executor import Failure, make_executor
    from distgen.distributed.jobs import library_payload, point_job
    from distgen.io.outdir import write_json_atomic
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import plan_run
    from distgen.sweep.results import point_metrics, table_columns, write_table
    from distgen.sweep.spec import SWEEP_FORMAT, point_config, sweep_points

    out = Path(out_dir)
    points = sweep_points(spec)
    configs = {p.id: point_config(spec, p) for p in points}  # all validated before any run
    libraries: dict = {}
    for cfg in configs.values():
        if cfg.model_library not in libraries:
            libraries[cfg.model_library] = ModelLibrary.load(cfg.model_library)
        plan_run(cfg, libraries[cfg.model_library])  # serving ids, TP, resolutions

    _prepare_sweep_dir(out, resume)
    write_json_atomic(out / "sweep.json", {
        "format": SWEEP_FORMAT, "source": spec.source, "base": spec.base_path,
        "base_overrides": list(spec.base_overrides), "grid": spec.grid,
        "samples": spec.samples, "concurrency": spec.concurrency,
        "points": [{"id": p.id, "values": p.values, "overrides": list(p.overrides),
                    "config_hash": config_hash(configs[p.id])} for p in points]})

    results: dict[str, dict] = {}
    todo = []
    for p in points:
        folder = out / "points" / p.id
        if resume and _finished(folder, config_hash(configs[p.id])):
            results[p.id] = {"metrics": point_metrics(folder), "wall_s": None, "skipped": True}
        else:
            todo.append(p)
    t_start = time.perf_counter()
    by_id = {p.id: p for p in todo}
    runs = [(p.id, json.dumps(config_to_dict(configs[p.id])),
             str((out / "points" / p.id).resolve()), resume) for p in todo]

    finished = []

    def report(run, rec):
        if log is not None and not isinstance(rec, Failure):
            p = by_id[run[0]]
            finished.append(p.id)
            vals = ", ".join(f"{k}={json.dumps(v)}" for k, v in p.values.items())
            print(f"[{len(finished)}/{len(todo)}] point {p.id} ({vals}) done in "
                  f"{rec['wall_s']:.1f} s", file=log)

    failures: dict[str, str] = {}
    if todo:
        first = configs[todo[0].id]
        if address is not None:
            first = dataclasses.replace(first, ray=dataclasses.replace(first.ray,
                                                                       address=address))
        runner = make_executor(executor, first, num_cpus=num_cpus)
        if executor == "ray" and spec.concurrency:
            runner.max_in_flight = spec.concurrency
        payloads = {path: library_payload(lib) for path, lib in libraries.items()}
        recs = runner.map(point_job, runs, shared=(payloads,), label=lambda r: f"point {r[0]}",
                          on_done=report, fail_fast=False)
        for run, rec in zip(runs, recs):
            if isinstance(rec, Failure):
                failures[run[0]] = rec.message
            else:
                results[run[0]] = rec

    if failures:
        lines = "\n".join(f"  {pid}: {msg}" for pid, msg in failures.items())
        raise DistgenError(f"{len(failures)} of {len(points)} sweep points failed (the others "
                           f"are kept; fix and rerun with --resume):\n{lines}")
    rows = []
    for p in points:
        rec = results[p.id]
        rows.append({"point_id": p.id, **p.values, **rec["metrics"],
                     "wall_s": rec.get("wall_s"), "path": f"points/{p.id}"})
    files = write_table(rows, table_columns(spec), out)
    if log is not None:
        print(f"{len(todo)} point(s) run, {len(points) - len(todo)} kept, in "
              f"{time.perf_counter() - t_start:.1f} s; wrote {files[0]} and {files[1].name}",
              file=log)
    return rows, files
