"""Run a sweep (:mod:`distgen.sweep`): one Ray task per point, a bounded number at once.

Each task runs a whole generation with the local executor into ``OUT/points/<id>/`` and
returns the point's metrics; the driver collects them into ``OUT/sweep.parquet`` and
``OUT/sweep.csv``. Configs are validated on the driver before anything is submitted; a task
gets its config as plain JSON and the model library as JSON bytes from the object store.

With ``resume``, points whose folder holds a finished run of the same config are not run again
(their metrics are read back), and an interrupted point continues from its committed shards.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

from distgen.errors import DistgenError

_REMOTE = None


def run_point(config_json: str, library_key: str, library_data, out_dir: str,
              resume: bool) -> dict:
    """Body of a point task: one generation (local executor) and its metrics."""
    from distgen.config import config_from_dict
    from distgen.distributed.executor import library_from_payload
    from distgen.driver import generate
    from distgen.io.outdir import is_ours
    from distgen.sweep import point_metrics

    t0 = time.perf_counter()
    cfg = config_from_dict(json.loads(config_json))
    library = library_from_payload(library_key, library_data)
    generate(cfg, out_dir, library=library, resume=resume and is_ours(out_dir))
    return {"metrics": point_metrics(out_dir), "wall_s": time.perf_counter() - t0}


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray
        _REMOTE = ray.remote(run_point)
    return _REMOTE


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
    from distgen.sweep import SWEEP_FORMAT

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
    spec : a :class:`distgen.sweep.SweepSpec`.
    resume : skip points already finished in ``out_dir`` (same config), continue others.
    executor : ``"ray"`` (one task per point; ``address`` / ``RAY_ADDRESS`` or a local Ray
        with ``num_cpus``) or ``"local"`` (points one after another in this process).
    log : stream for one line per finished point (None: quiet).

    Raises
    ------
    DistgenError : a bad sweep or point config (before anything runs), or points that failed
        (after the others finished; the table is then not written: fix and use ``resume``).
    """
    from distgen.config import config_hash, config_to_dict
    from distgen.distributed.executor import library_payload
    from distgen.io.outdir import write_json_atomic
    from distgen.model.artifact import ModelLibrary
    from distgen.sweep import SWEEP_FORMAT, point_config, point_metrics, sweep_points, \
        table_columns, write_table

    out = Path(out_dir)
    points = sweep_points(spec)
    configs = {p.id: point_config(spec, p) for p in points}  # all validated before any run
    libraries: dict = {}
    for cfg in configs.values():
        if cfg.model_library not in libraries:
            libraries[cfg.model_library] = ModelLibrary.load(cfg.model_library)
    for cfg in configs.values():
        from distgen.pipeline import plan_run
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
    failures: dict[str, str] = {}
    t_start = time.perf_counter()

    def report(p, rec):
        if log is not None:
            n = sum(1 for r in results.values() if not r.get("skipped"))
            vals = ", ".join(f"{k}={json.dumps(v)}" for k, v in p.values.items())
            wall = f"{rec['wall_s']:.1f} s" if rec.get("wall_s") is not None else "-"
            print(f"[{n}/{len(todo)}] point {p.id} ({vals}) done in {wall}", file=log)

    if executor == "local":
        for p in todo:
            cfg = configs[p.id]
            key, data = library_payload(libraries[cfg.model_library])
            try:
                results[p.id] = run_point(json.dumps(config_to_dict(cfg)), key, data,
                                          str(out / "points" / p.id), resume)
            except DistgenError as exc:
                failures[p.id] = str(exc)
                continue
            report(p, results[p.id])
    elif executor == "ray":
        if todo:
            _run_on_ray(spec, todo, configs, libraries, out, resume, address, num_cpus,
                        results, failures, report)
    else:
        raise DistgenError(f"unknown sweep executor {executor!r}; use 'ray' or 'local'")

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


def _run_on_ray(spec, todo, configs, libraries, out, resume, address, num_cpus, results,
                failures, report) -> None:
    import ray
    from ray import exceptions as rex

    from distgen.config import config_to_dict
    from distgen.distributed.cluster import check_resources, connect, worker_env_options
    from distgen.distributed.executor import RETRY_EXCEPTIONS, library_payload

    first = configs[todo[0].id]
    connect(address if address is not None else first.ray.address, num_cpus=num_cpus)
    for p in todo:
        rc = configs[p.id].ray
        check_resources(rc.num_cpus_per_task, rc.num_gpus_per_task, what="a sweep point")
    lib_refs = {}
    for path, lib in libraries.items():
        key, data = library_payload(lib)
        lib_refs[path] = (key, ray.put(data))
    env_opts = worker_env_options()
    total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    per = max(first.ray.num_cpus_per_task, 1e-3)
    limit = spec.concurrency or max(1, int(total_cpus // per))
    queue = deque(todo)
    pending: dict = {}
    task = _remote()
    try:
        while queue or pending:
            while queue and len(pending) < limit:
                p = queue.popleft()
                cfg = configs[p.id]
                key, ref = lib_refs[cfg.model_library]
                opts = {"num_cpus": cfg.ray.num_cpus_per_task,
                        "num_gpus": cfg.ray.num_gpus_per_task,
                        "max_retries": cfg.ray.max_retries,
                        "retry_exceptions": list(RETRY_EXCEPTIONS), **env_opts}
                obj = task.options(name=f"distgen-sweep-{p.id}", **opts).remote(
                    json.dumps(config_to_dict(cfg)), key, ref, str((out / "points" / p.id)
                                                                  .resolve()), resume)
                pending[obj] = p
            ready, _ = ray.wait(list(pending), num_returns=1)
            for obj in ready:
                p = pending.pop(obj)
                try:
                    results[p.id] = ray.get(obj)
                except rex.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    failures[p.id] = (str(cause) if isinstance(cause, DistgenError)
                                      else f"{type(cause).__name__}: {cause}\n{exc}")
                    continue
                except rex.RayError as exc:
                    failures[p.id] = f"{type(exc).__name__}: {exc}"
                    continue
                report(p, results[p.id])
    finally:
        for obj in pending:
            try:
                ray.cancel(obj, force=True)
            except Exception:
                pass
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=15.0)
