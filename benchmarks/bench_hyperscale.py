"""The 1 h slice of the 1M-GPU preset on this machine: throughput and peak memory.

Runs, in a child process::

    distgen generate configs/hyperscale-1m.yaml duration_s=3600 --out TMP [--executor ...]

(the whole site, 800,000 deployments, 1 h after 600 s of warm-up: 1.34e10 deployment-steps)
and samples every 0.5 s

* the summed PSS of the child's process tree (driver, Ray's processes, workers): PSS splits
  shared pages among the processes that share them, so the sum is the tree's own memory;
* ``MemAvailable`` of the machine, against its value just before the start (the memory the run
  takes from the machine, page cache of the outputs included).

It reports the wall time, deployment-steps per second over the wall time and over the summed
shard-task time (from the run's ``shards.parquet``), and the peaks, and prints a Markdown
section for benchmarks/RESULTS.md. Takes about 10 minutes on 2 cores; run Ray inside
``scripts/loopback`` where the machine requires it::

    scripts/loopback .venv/bin/python benchmarks/bench_hyperscale.py --json /tmp/h1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "hyperscale-1m.yaml"
OVERRIDES = ["duration_s=3600"]
SAMPLE_S = 0.5


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pss_bytes(root: int) -> int:
    """[B] summed PSS of ``root`` and all its descendants (0 for processes that vanished)."""
    kids, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               platform.processor())
    mem = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal:"))
    import numba
    import numpy
    import ray
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2 ** 30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "numpy": numpy.__version__, "numba": numba.__version__, "ray": ray.__version__}


def run(executor: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "distgen.cli", "generate", str(PRESET), *OVERRIDES,
           "--executor", executor, "--out", str(out), "--quiet"]
    idle_available = mem_available_bytes()
    peaks = {"pss": 0, "taken": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            peaks["pss"] = max(peaks["pss"], tree_pss_bytes(proc.pid))
            peaks["taken"] = max(peaks["taken"], idle_available - mem_available_bytes())
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"distgen failed ({proc.returncode}):\n{err}")
    manifest = json.loads((out / "manifest.json").read_text())
    from distgen.io.table import read_table
    task_s = sum(read_table(out / "shards.parquet")[0]["wall_s"])
    steps = manifest["estimate"]["deployment_steps"]
    return {"command": "distgen generate configs/hyperscale-1m.yaml " + " ".join(OVERRIDES)
            + f" --executor {executor} --out OUT",
            "deployments": manifest["topology"]["deployments"],
            "gpus": manifest["topology"]["gpus"],
            "shards": manifest["execution"]["shards"], "deployment_steps": steps,
            "wall_s": wall_s, "task_s": task_s, "steps_per_s": steps / wall_s,
            "steps_per_task_s": steps / task_s,
            "peak_tree_pss_bytes": peaks["pss"], "peak_memory_taken_bytes": peaks["taken"],
            "estimate_bytes": _estimate(manifest),
            "site_energy_j": {k: v["it"]["energy_j"] for k, v in
                              manifest["summary"]["site"].items()},
            "machine": machine(), "date": time.strftime("%Y-%m-%d")}


def _estimate(manifest: dict) -> int:
    """[B] distgen's own peak-memory estimate for the run, made before it started."""
    from distgen.footprint import Capacity, Footprint, peak_memory_bytes

    ex = manifest["execution"]
    ray = ex.get("executor") == "ray"
    tasks = min(int(ex.get("ray_cpus") or 1), ex["shards"]) if ray else 1
    return peak_memory_bytes(Footprint(**manifest["estimate"]),
                             Capacity(tasks, 0.0, in_process=not ray))


def markdown(r: dict) -> str:
    m = r["machine"]
    minutes, seconds = divmod(r["wall_s"], 60)
    energies = sorted(set(f"{e:.6e}" for e in r["site_energy_j"].values()))
    return "\n".join([
        f"### {r['date']}: 1 h slice of the 1M-GPU preset",
        "",
        f"Machine: {m['cores']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}, Ray {m['ray']}. "
        f"Command: `{r['command']}` (via `benchmarks/bench_hyperscale.py`, inside "
        f"`scripts/loopback`).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| site | {r['gpus']:,} GPUs, {r['deployments']:,} deployments, {r['shards']} shards |",
        f"| work | {r['deployment_steps']:.3g} deployment-steps (1 h + 600 s warm-up) |",
        f"| wall time (Ray start to manifest) | {int(minutes)} min {seconds:.0f} s |",
        f"| deployment-steps/s over the wall time | {r['steps_per_s'] / 1e6:.1f} M |",
        f"| deployment-steps/s per busy core (summed task time) | "
        f"{r['steps_per_task_s'] / 1e6:.1f} M |",
        f"| peak memory of the process tree (summed PSS) | "
        f"{r['peak_tree_pss_bytes'] / 2 ** 30:.2f} GiB |",
        f"| peak memory taken from the machine (MemAvailable drop) | "
        f"{r['peak_memory_taken_bytes'] / 2 ** 30:.2f} GiB |",
        f"| distgen's own estimate before the run (driver + tasks at once) | "
        f"{r['estimate_bytes'] / 2 ** 30:.2f} GiB |",
        f"| site IT energy at every resolution | {', '.join(energies)} J |",
        ""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executor", choices=("ray", "local"), default="ray")
    p.add_argument("--json", default=None, help="also write the figures as JSON")
    p.add_argument("--keep", default=None, help="write the run here (default: a temporary "
                   "folder, removed afterwards)")
    args = p.parse_args(argv)
    if args.keep:
        result = run(args.executor, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="h1m-") as tmp:
            result = run(args.executor, Path(tmp) / "out")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
