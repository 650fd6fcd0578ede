"""``distgen bench``: a short fixed-size generation that measures throughput.

Runs a generation into a temporary folder with the local or the Ray executor and reports
deployment-steps per second per worker (busy time) and in total (wall time of the shard
phase), plus the wall time of the whole run. Used by the CLI and ``benchmarks/bench_ray.py``.

The built-in workload: 4 rows x 4 racks x 4 servers x 8 GPUs (512 GPUs, one deployment per
GPU), 10 minutes at 0.25 s, 8 shards, diurnal synthetic traffic.
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path

BUILTIN = [
    "seed=1", "start_time=2026-07-01T14:00:00", "duration_s=600", "shards=8",
    "facility.rows=4", "facility.racks_per_row=4", "facility.servers_per_rack=4",
    "facility.gpus_per_server=8", "facility.row_serving=[qwen3-8b_A100_tp1]",
    "traffic.site_rate_rps=512",
    "output.site_resolutions_s=[1,60]", "output.rows_resolution_s=60",
    "output.racks_resolution_s=null", "output.site_csv_resolution_s=null",
]


class _Clock:
    """A progress sink that times the shard phase (driver calls start / finish)."""

    def __init__(self, records: list):
        self.t_start = self.t_finish = None
        self.records = records

    def start(self, plan, shards):
        self.t_start = time.perf_counter()

    def advance(self, n):
        pass

    def shard_done(self, record=None):
        self.records.append(record)

    def finish(self):
        self.t_finish = time.perf_counter()


def bench_config(config_path: str | None = None, overrides=(), seconds: float | None = None):
    """The bench RunConfig: ``config_path`` (or the built-in workload) + overrides."""
    from distgen.config import load_config

    extra = list(overrides)
    if seconds is not None:
        extra.append(f"duration_s={float(seconds):g}")
    if config_path is None:
        return load_config(None, [*BUILTIN, *extra])
    return load_config(config_path, extra)


def _warmup_config(cfg):
    """Same fleet and shards, the shortest duration the output resolutions allow: starts the
    workers and loads the compiled kernels without measuring them."""
    import dataclasses

    from distgen.config.validate import output_resolutions
    shortest = max([1.0, *output_resolutions(cfg).values()])
    if shortest >= cfg.duration_s:
        return cfg
    return dataclasses.replace(cfg, duration_s=float(shortest))


def run_bench(config, *, executor: str = "ray", num_cpus: int | None = None,
              warmup: bool = True, keep_dir: str | None = None) -> dict:
    """Generate ``config`` once with ``executor`` ("ray" or "local") and measure it.

    Returns a dict: fleet size, ``deployment_steps``, ``wall_s`` (whole generation),
    ``run_s`` (shard phase), ``assemble_s``, ``total_rate`` (deployment-steps/s over the
    shard phase), ``workers`` (per worker: tasks, busy seconds, deployment-steps, rate, peak
    RSS), ``tasks`` (per shard) and the executor's cluster facts.
    """
    from distgen.driver import generate
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import plan_run

    library = ModelLibrary.load(config.model_library)
    plan = plan_run(config, library)
    from distgen.distributed.executor import make_executor
    ex = make_executor(executor, config, num_cpus=num_cpus)
    tmp = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="distgen-bench-"))
    records = []
    try:
        if warmup:
            generate(_warmup_config(config), tmp / "warmup", library=library, executor=ex)
        clock = _Clock(records)
        t0 = time.perf_counter()
        manifest = generate(config, tmp / "run", library=library, executor=ex, progress=clock)
        wall = time.perf_counter() - t0
    finally:
        if not keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    run_s = clock.t_finish - clock.t_start
    from distgen.core.grid import steps_of
    warmup_s = float(getattr(config, "warmup_s", 0.0) or 0.0)
    steps = plan.n_steps + steps_of(warmup_s)  # the kernel also runs the warm-up
    tasks = [{"shard": r.summary.shard, "worker": f"{r.host}:{r.pid}", "wall_s": r.wall_s,
              "deployment_steps": r.summary.deployments * steps,
              "peak_rss_mb": r.peak_rss_kb / 1024 if executor == "ray" else None}
             for r in records]
    workers: dict[str, dict] = {}
    for t in tasks:
        w = workers.setdefault(t["worker"], {"worker": t["worker"], "tasks": 0, "busy_s": 0.0,
                                             "deployment_steps": 0, "peak_rss_mb": None})
        w["tasks"] += 1
        w["busy_s"] += t["wall_s"]
        w["deployment_steps"] += t["deployment_steps"]
        if t["peak_rss_mb"] is not None:
            w["peak_rss_mb"] = max(w["peak_rss_mb"] or 0.0, t["peak_rss_mb"])
    for w in workers.values():
        w["rate"] = w["deployment_steps"] / w["busy_s"] if w["busy_s"] > 0 else 0.0
    total = plan.n_deployments * steps
    return {
        "executor": executor, "backend": manifest["execution"].get("backend", config.backend),
        "gpus": plan.topology.n_gpus, "deployments": plan.n_deployments, "n_steps": steps,
        "duration_s": config.duration_s, "warmup_s": warmup_s, "shards": len(plan.shards),
        "deployment_steps": total, "wall_s": wall, "run_s": run_s,
        "assemble_s": wall - run_s, "total_rate": total / run_s if run_s > 0 else 0.0,
        "task_s": sum(t["wall_s"] for t in tasks),
        "workers": sorted(workers.values(), key=lambda w: w["worker"]), "tasks": tasks,
        "cluster": {k: v for k, v in ex.info.items() if k.startswith("ray_")},
        "num_cpus_per_task": config.ray.num_cpus_per_task,
    }


def machine_description() -> str:
    import os
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        mem = f", {kb / 1024 ** 2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs ({cpu}){mem}, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def format_bench(r: dict) -> str:
    """The bench result as a table (per worker, then the total)."""
    cl = r["cluster"]
    where = (f"ray ({cl.get('ray_nodes', '?')} node(s), {cl.get('ray_cpus', 0):g} CPUs, "
             f"{cl.get('ray_gpus', 0):g} GPUs, {r['num_cpus_per_task']:g} CPU(s) per task)"
             if r["executor"] == "ray" else "local (this process, shards one by one)")
    warm = f" + {r['warmup_s']:g} s warm-up" if r.get("warmup_s") else ""
    lines = [f"distgen bench: {r['gpus']:,} GPUs ({r['deployments']:,} deployments), "
             f"{r['duration_s']:g} s{warm} = {r['n_steps']:,} steps of 0.25 s, "
             f"{r['shards']} shards, {r['deployment_steps'] / 1e6:.1f} M deployment-steps",
             f"executor {where}, backend {r['backend']}", ""]
    header = ["worker", "tasks", "busy s", "M dep-steps", "M dep-steps/s", "peak RSS MiB"]
    rows = [[w["worker"], str(w["tasks"]), f"{w['busy_s']:.2f}",
             f"{w['deployment_steps'] / 1e6:.2f}", f"{w['rate'] / 1e6:.2f}",
             "-" if w["peak_rss_mb"] is None else f"{w['peak_rss_mb']:.0f}"]
            for w in r["workers"]]
    rows.append(["total (shard phase wall)", str(len(r["tasks"])), f"{r['run_s']:.2f}",
                 f"{r['deployment_steps'] / 1e6:.2f}", f"{r['total_rate'] / 1e6:.2f}", ""])
    width = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, width)))
    lines += [fmt(header), "  ".join("-" * w for w in width), *map(fmt, rows[:-1]),
              "  ".join("-" * w for w in width), fmt(rows[-1]), ""]
    end_to_end = r["deployment_steps"] / r["wall_s"] / 1e6
    lines.append(f"wall time {r['wall_s']:.2f} s (shards {r['run_s']:.2f} s, assembly and "
                 f"writing {r['assemble_s']:.2f} s); {end_to_end:.2f} M deployment-steps/s "
                 f"end to end")
    return "\n".join(lines)
