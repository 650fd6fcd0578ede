"""Engine benchmarks: throughput per core vs NumPy's raw normal draws, and memory vs duration.

    python benchmarks/bench_engine.py throughput   # deployment-steps/s on one core, by load
    python benchmarks/bench_engine.py memory       # peak RSS of a 1 h vs a 24 h run
    python benchmarks/bench_engine.py all

Prints a table; with --record, appends it to benchmarks/RESULTS.md with the machine and command.
Throughput is the full per-shard pipeline (arrivals, serving model, state chain, power,
server/rack/row reduction, block sums) measured in one process pinned to one core; raw normals
are NumPy's float32 ``Generator.standard_normal`` in the same process, right before.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOADS_RPS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # requests/s per deployment


def machine() -> str:
    from distgen.distributed.bench import machine_description  # no Ray import
    return f"{machine_description()}, NumPy {np.__version__}"


def raw_normals_per_s(n: int = 1_000_000, repeats: int = 40) -> float:
    rng = np.random.default_rng(0)
    out = np.empty(n, np.float32)
    rng.standard_normal(out=out, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(repeats):
        rng.standard_normal(out=out, dtype=np.float32)
    return n * repeats / (time.perf_counter() - t)


def _throughput_plan(load_rps: float, duration_s: float):
    from distgen.config import load_config
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import ShardGenerator, plan_run

    library = ModelLibrary.load()
    racks = 8
    overrides = [f"duration_s={duration_s}", "warmup_s=0", "shards=1", "facility.rows=1",
                 f"facility.racks_per_row={racks}", "facility.servers_per_rack=8",
                 "facility.gpus_per_server=8", "facility.row_serving=[qwen3-8b_A100_tp1]",
                 "traffic.modulation.cv=0", "traffic.diurnal.trough_ratio=1",
                 f"traffic.site_rate_rps={load_rps * racks * 64}",
                 "output.site_resolutions_s=[1]", "output.rows_resolution_s=null",
                 "output.racks_resolution_s=null", "output.site_csv_resolution_s=null"]
    plan = plan_run(load_config(None, overrides), library)
    for _ in ShardGenerator(plan, plan.shards[0], library):  # compile and warm caches
        pass
    return plan, library, ShardGenerator


def throughput(duration_s: float = 1800.0, repeats: int = 3) -> list[str]:
    """Per load: engine runs and raw-normal runs interleaved ``repeats`` times; best of each,
    so that both figures of a ratio come from the same minutes of this shared machine."""
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass
    rows = ["| load [req/s per deployment] | deployment-steps/s | raw normals/s | ratio |",
            "|---:|---:|---:|---:|"]
    n_dep = 0
    for load in LOADS_RPS:
        plan, library, generator = _throughput_plan(load, duration_s)
        n_dep = plan.n_deployments
        best_engine = best_normals = 0.0
        for _ in range(repeats):
            best_normals = max(best_normals, raw_normals_per_s(repeats=20))
            gen = generator(plan, plan.shards[0], library)
            t = time.perf_counter()
            for _ in gen:
                pass
            best_engine = max(best_engine, plan.deployment_steps / (time.perf_counter() - t))
        rows.append(f"| {load:g} | {best_engine / 1e6:.1f} M | {best_normals / 1e6:.0f} M | "
                    f"{best_engine / best_normals:.3f} |")
    head = [f"fleet: {n_dep} deployments of qwen3-8b_A100_tp1, {duration_s:g} s simulated per "
            f"run, one core; best of {repeats} interleaved runs of each; raw normals: NumPy "
            "float32 Generator.standard_normal into a 1M buffer", ""]
    return head + rows


def _child_peak_rss_kb(duration_s: float, racks: int) -> tuple[float, float]:
    code = f"""
import resource, sys, time, tempfile
from distgen.config import load_config
from distgen.driver import generate
cfg = load_config(None, ["duration_s={duration_s}", "shards=1", "facility.rows=1",
    "facility.racks_per_row={racks}", "facility.row_serving=[qwen3-8b_A100_tp1]",
    "traffic.site_rate_rps={racks * 16 * 1.0}", "output.site_resolutions_s=[1, 60, 900, 3600]",
    "output.rows_resolution_s=60", "output.racks_resolution_s=900"])
t = time.perf_counter()
generate(cfg, tempfile.mkdtemp())
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall, rss = out.stdout.split()[-2:]
    return float(wall), float(rss)


def memory() -> list[str]:
    rows = ["| duration | fleet | wall [s] | peak RSS [MiB] |", "|---|---|---:|---:|"]
    results = {}
    for duration in (3600.0, 86400.0):
        wall, rss = _child_peak_rss_kb(duration, racks=4)
        results[duration] = rss
        rows.append(f"| {duration / 3600:g} h | 4 racks x 4 servers x 8 GPUs (128 deployments) | "
                    f"{wall:.1f} | {rss / 1024:.0f} |")
    ratio = results[86400.0] / results[3600.0]
    return rows + ["", f"peak RSS 24 h / 1 h: {ratio:.3f} (target <= 1.15)"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("throughput", "memory", "all"))
    p.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = p.parse_args()
    lines = []
    if args.what in ("throughput", "all"):
        lines += ["### Engine throughput (one core)", ""] + throughput() + [""]
    if args.what in ("memory", "all"):
        lines += ["### Memory vs duration", ""] + memory() + [""]
    text = "\n".join(lines)
    print(text)
    if args.record:
        stamp = time.strftime("%Y-%m-%d")
        cmd = "python benchmarks/bench_engine.py " + args.what
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Engine ({stamp})\n\nMachine: {machine()}\n\nCommand: `{cmd}`\n\n{text}\n")


if __name__ == "__main__":
    main()
