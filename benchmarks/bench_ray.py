"""Ray executor benchmarks, with the code of ``distgen bench`` (distgen.distributed.bench).

    python benchmarks/bench_ray.py            # all parts; appends to benchmarks/RESULTS.md
    python benchmarks/bench_ray.py --no-record

On a machine where Ray would bind to a network interface, run it in a loopback-only network
namespace: ``unshare -rn bash -c 'ip link set lo up; python benchmarks/bench_ray.py'``.

Parts (a local Ray with ``--cpus`` CPUs, 2 by default):

(a) scaling: the same fleet with 1 Ray worker (``ray.num_cpus_per_task=2``: one task at a
    time) and 2 workers (``=1``): ratio of the shard-phase wall times (target >= 1.7x).
(b) per-task overhead, tasks of about 1 s: the 1-worker Ray run against the local executor on
    the same shards, and the time the Ray runs spend outside tasks (target < 5 %).
(c) worker memory: peak RSS of a task (reset at its start) for 2 fleet sizes with the same
    shard size, and for 2 durations: bounded by the shard, not the fleet or the duration.
(d) the 1M-GPU preset (configs/hyperscale-1m.yaml): a 10-row slice with the same serving mix
    and shard size, 1 h at the afternoon peak, on 2 workers; the full 24 h run's cost
    extrapolated from the measured deployment-steps per second per worker.

Every generation is measured after a warm-up run (workers started, kernels loaded); each
configuration is run ``--repeats`` times and the fastest kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distgen.distributed.bench import BUILTIN, machine_description, run_bench  # noqa: E402

#: (a)/(b): 8 rows x 4 racks x 4 servers x 8 GPUs (1024 GPUs), 8 shards of one row (128
#: deployments), 10 h: about 1 s of work per shard on this machine's cores.
SCALING = [*BUILTIN, "facility.rows=8", "shards=8", "duration_s=36000", "warmup_s=0",
           "output.site_resolutions_s=[1,60,900]", "output.rows_resolution_s=60"]
#: (c): one row (128 GPUs) per shard.
MEMORY_BASE = [*BUILTIN, "warmup_s=0", "output.site_resolutions_s=[1,60]",
               "output.rows_resolution_s=60"]
MEMORY_CASES = [("4 rows, 1 h", ["facility.rows=4", "shards=4", "duration_s=3600"]),
                ("16 rows, 1 h", ["facility.rows=16", "shards=16", "duration_s=3600"]),
                ("4 rows, 2 h", ["facility.rows=4", "shards=4", "duration_s=7200"]),
                ("4 rows, 8 h", ["facility.rows=4", "shards=4", "duration_s=28800"])]
HYPERSCALE = ROOT / "configs" / "hyperscale-1m.yaml"


def _config(overrides, path=None):
    from distgen.config import load_config
    return load_config(path, list(overrides))


def best(config, repeats, **kw):
    runs = [run_bench(config, **kw) for _ in range(repeats)]
    return min(runs, key=lambda r: r["run_s"])


def part_scaling(repeats: int) -> tuple[list[str], dict]:
    cases = {"local": (_config(SCALING), "local"),
             "one": (_config([*SCALING, "ray.num_cpus_per_task=2"]), "ray"),
             "two": (_config([*SCALING, "ray.num_cpus_per_task=1"]), "ray")}
    runs: dict[str, list] = {k: [] for k in cases}
    for _ in range(repeats):  # interleaved, so slow spells of a shared machine hit all alike
        for key, (cfg, executor) in cases.items():
            runs[key].append(run_bench(cfg, executor=executor))
    local, one, two = (min(runs[k], key=lambda r: r["run_s"]) for k in ("local", "one", "two"))
    ratio = one["run_s"] / two["run_s"]
    mean_task = one["task_s"] / len(one["tasks"])
    vs_local = (one["run_s"] - local["run_s"]) / one["run_s"]
    overhead = 1 - one["task_s"] / one["run_s"]  # 1 worker: tasks run back to back
    outside_2 = 1 - two["task_s"] / (2 * two["run_s"])
    rows = [
        "| run | workers | shard phase [s] | sum of task times [s] | M dep-steps/s total | "
        "M dep-steps/s per worker |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r, w in (("local executor", local, 1), ("Ray, 1 worker", one, 1),
                        ("Ray, 2 workers", two, 2)):
        per = statistics.mean(x["rate"] for x in r["workers"]) / 1e6
        rows.append(f"| {label} | {w} | {r['run_s']:.2f} | {r['task_s']:.2f} | "
                    f"{r['total_rate'] / 1e6:.2f} | {per:.2f} |")
    rows += [
        "",
        f"Fleet: {one['gpus']} GPUs, {one['shards']} shards, {one['duration_s']:g} s simulated, "
        f"{one['deployment_steps'] / 1e6:.0f} M deployment-steps; mean task {mean_task:.2f} s.",
        "",
        f"* (a) scaling, 2 workers vs 1: **{ratio:.2f}x** (target >= 1.7x)",
        f"* (b) Ray overhead with ~{mean_task:.1f} s tasks, 1 worker (tasks back to back): "
        f"**{100 * overhead:.1f} %** of the shard-phase wall time is spent outside tasks "
        f"(submission, scheduling, dispatch, result collection; target < 5 %). With 2 workers "
        f"{100 * outside_2:.1f} % of the worker time is idle (includes waiting for the last "
        f"task). Ray 1 worker vs the local executor (same shards, one process): "
        f"{100 * vs_local:+.1f} % wall time.",
    ]
    return rows, {"ratio": ratio, "overhead": overhead, "vs_local": vs_local, "local": local,
                  "one": one, "two": two}


def part_memory(repeats: int) -> tuple[list[str], dict]:
    rows = ["| case | GPUs | shards | GPUs per shard | peak RSS per task [MiB] (max) | "
            "added by the task [MiB] (max) |", "|---|---:|---:|---:|---:|---:|"]
    out = {}
    for label, extra in MEMORY_CASES:
        r = best(_config([*MEMORY_BASE, *extra]), 1, executor="ray")
        peak = max(t["peak_rss_mb"] for t in r["tasks"])
        added = max(t["peak_rss_mb"] - t["rss_before_mb"] for t in r["tasks"])
        out[label] = (peak, added)
        rows.append(f"| {label} | {r['gpus']} | {r['shards']} | {r['gpus'] // r['shards']} | "
                    f"{peak:.0f} | {added:.0f} |")
    rows += ["", "Peak RSS is the worker process's (VmHWM, reset at the start of each task): "
             "the Python/NumPy/Numba/Ray baseline plus what the task allocates."]
    return rows, out


def part_hyperscale(repeats: int) -> tuple[list[str], dict]:
    from distgen.config import load_config
    from distgen.core.grid import steps_of

    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import plan_run

    full = load_config(HYPERSCALE)
    plan = plan_run(full, ModelLibrary.load(full.model_library))
    # the preset's mix is a 10-row pattern: 10 rows are one block of it
    extra = ["facility.rows=10", "shards=40",
             "duration_s=3600", "start_time=2026-07-01T14:00:00", "warmup_s=0",
             "output.site_resolutions_s=[1,60,900,3600]"]
    sliced = plan_run(load_config(HYPERSCALE, extra), ModelLibrary.load(full.model_library))
    # the same requests per deployment as the full site
    rate = full.traffic.site_rate_rps * sliced.n_deployments / plan.n_deployments
    r = best(load_config(HYPERSCALE, [*extra, f"traffic.site_rate_rps={rate:g}"]), repeats,
             executor="ray")
    per_worker = statistics.mean(w["rate"] for w in r["workers"])
    full_steps = plan.n_deployments * (plan.n_steps + steps_of(getattr(full, "warmup_s", 0.0)))
    core_h = full_steps / per_worker / 3600
    mean_task = r["task_s"] / len(r["tasks"])
    per_shard_s = full_steps / len(plan.shards) / per_worker
    rows = [
        f"10-row slice of the preset (same mix and shard size): {r['gpus']:,} GPUs, "
        f"{r['deployments']:,} deployments, {rate:g} requests/s (daily mean, as the full site "
        f"per deployment), 1 h from 14:00, {r['shards']} shards, "
        f"{r['deployment_steps'] / 1e6:.0f} M deployment-steps: shard phase {r['run_s']:.1f} s on "
        f"2 workers ({r['total_rate'] / 1e6:.2f} M/s), {per_worker / 1e6:.2f} M deployment-steps/s "
        f"per worker, mean task {mean_task:.1f} s, assembly {r['assemble_s']:.1f} s.",
        "",
        f"Full preset: {plan.topology.n_gpus:,} GPUs, {plan.n_deployments:,} deployments, 24 h "
        f"(+ warm-up) = {full_steps / 1e9:.0f} G deployment-steps in {len(plan.shards)} shards "
        f"(~{per_shard_s:.0f} s each): **{core_h:.1f} core-hours** at the measured rate; "
        f"{core_h / 64 * 60:.0f} min on 64 cores, {core_h / 256 * 60:.0f} min on 256 cores "
        f"(shard phase, ideal scaling).",
    ]
    return rows, {"per_worker": per_worker, "core_h": core_h, "full_steps": full_steps,
                  "slice": r, "per_shard_s": per_shard_s}


def record(text: str, path: Path) -> None:
    """Append ``text`` to the '## Ray' section of RESULTS.md (created when missing)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = old.rstrip("\n").split("\n")
    try:
        start = lines.index("## Ray")
    except ValueError:
        lines += ["", "## Ray"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    block = ["", *text.rstrip("\n").split("\n")]
    if end < len(lines):
        block.append("")
    lines[end:end] = block
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="abcd", help="which parts to run (default: abcd)")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = p.parse_args(argv)

    from distgen.distributed import connect
    info = connect(None, num_cpus=args.cpus)
    out = [f"### {dt.date.today().isoformat()}: local Ray, {info['ray_cpus']:g} CPUs, "
           f"Ray {info['ray_version']}",
           "",
           f"Machine: {machine_description()}. Command: `"
           + " ".join(["python benchmarks/bench_ray.py",
                       *(argv if argv is not None else sys.argv[1:])])
           + "` (inside `unshare -rn`).", ""]
    if "a" in args.parts or "b" in args.parts:
        rows, _ = part_scaling(args.repeats)
        out += ["#### (a) scaling and (b) per-task overhead", "", *rows, ""]
        print("\n".join(out), flush=True)
    if "c" in args.parts:
        rows, _ = part_memory(args.repeats)
        out += ["#### (c) memory per worker", "", *rows, ""]
        print("\n".join(rows), flush=True)
    if "d" in args.parts:
        rows, _ = part_hyperscale(args.repeats)
        out += ["#### (d) 1M-GPU preset, extrapolated", "", *rows, ""]
        print("\n".join(rows), flush=True)
    text = "\n".join(out)
    if not args.no_record:
        record(text, Path(args.results))
        print(f"\nappended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
