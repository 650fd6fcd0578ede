"""What a run will cost before it starts: deployment-steps, memory and disk, and whether that
fits the machine or cluster it is about to run on.

:func:`estimate_footprint` works from the configuration and the model library alone, in
microseconds: it never lays out the site's rows, racks or deployments, so a typo such as
``facility.rows=1000000000`` is judged before anything of that size is built.
:func:`check_footprint` refuses a run that cannot fit, naming the estimate and the keys that
set it.

The memory model (measured with ``tracemalloc`` on the bundled models, Dec 2026)
------------------------------------------------------------------------------------
A shard task holds, per deployment, its serving state (:class:`~distgen.workload.serving.
ServingState`: a waiting queue of ``DEFAULT_QUEUE_CAPACITY`` = 2048 requests x (float64 arrival
time + three int32 token counts) = 40 KiB, and a batch of ``max_num_seqs`` running requests x
(two float64 + three int32) = 28 B per slot, 3.5-7 KiB for 128-256 slots) plus a few hundred
bytes of other state: 45.0 KB per deployment measured for 128 slots, 48.6 KB for 256, which
:func:`state_bytes_per_deployment` reproduces from the arrays' own sizes plus
:data:`OTHER_STATE_BYTES`. While it streams a time chunk it holds the chunk's server, rack and
row arrays and temporaries: 5.3-6.6 bytes per deployment-step of the chunk measured
(:data:`CHUNK_BYTES_PER_DEPLOYMENT_STEP`), 4 more with the deployments level written (int32
milliwatts per deployment-step). Chunks are capped at ``CHUNK_ELEMENTS`` server-steps, so this
part stays below ~0.2 GB whatever the duration. A Ray worker process adds ~315 MiB of Python,
NumPy, Numba and Ray (cluster/README.md), the driver process ~300 MiB.

The driver holds the site's feed series (int64 sums, then float64 IT and facility power:
~40 bytes per feed block), windows of the level files (``WINDOW_ELEMENTS`` values, a few
copies) and the entity table (~150 bytes per deployment while it is sorted and written).

Disk: shard parts are int64 block sums, exactly 8 bytes per value (the rows feed of every
shard, and every written level); the outputs are estimated at 8 bytes per written value
(Parquet compresses the time and id columns to almost nothing, float64 power values hardly).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from distgen.config.serving_mix import row_counts
from distgen.config.validate import output_resolutions
from distgen.core.grid import steps_of
from distgen.errors import DistgenError
from distgen.pipeline import CHUNK_ELEMENTS

#: [B] per-deployment state besides the serving queues (generator state, statistics, ids).
OTHER_STATE_BYTES = 512
#: [B] per deployment-step of a time chunk in a shard task (measured 5.3-6.6).
CHUNK_BYTES_PER_DEPLOYMENT_STEP = 7
#: [B] per deployment-step of a chunk when the deployments level is written (int32 mW).
DEPLOYMENT_LEVEL_BYTES_PER_STEP = 4
#: [B] a Ray worker process before it runs anything (measured 313-317 MiB).
WORKER_PROCESS_BYTES = 315 * 2 ** 20
#: [B] the distgen driver process (Python, NumPy, Numba, pyarrow, the model library).
DRIVER_PROCESS_BYTES = 300 * 2 ** 20
#: [B] per site feed block in the driver (int64 sums + float64 IT + facility + coarsenings).
DRIVER_BYTES_PER_FEED_BLOCK = 40
#: [B] per deployment while the entity table is built and written.
DRIVER_BYTES_PER_DEPLOYMENT = 150
#: Deployment-steps per second one CPU core generates (benchmarks/RESULTS.md: 12-19 M).
DEPLOYMENT_STEPS_PER_CPU_S = 14e6
#: Share of the available memory a run may plan to use: the rest is for the system, the page
#: cache of the output files, other processes and the error of the estimate.
MEMORY_HEADROOM = 0.8

_GIB = 2 ** 30


def state_bytes_per_deployment(seq_capacity: int) -> int:
    """[B] serving state of one deployment with ``seq_capacity`` batch slots: the sizes of the
    kernel's own arrays (:meth:`ServingState.empty`) plus :data:`OTHER_STATE_BYTES`."""
    from distgen.engine.deployments import DEFAULT_QUEUE_CAPACITY
    from distgen.workload.serving import ServingState

    state = ServingState.empty(1, max(int(seq_capacity), 1), DEFAULT_QUEUE_CAPACITY)
    return int(sum(a.nbytes for a in state)) + OTHER_STATE_BYTES


@dataclass(frozen=True)
class Footprint:
    """The estimated cost of a run.

    Attributes
    ----------
    gpus, deployments : size of the site.
    deployment_steps : deployments x (output + warm-up) steps of 0.25 s: the work.
    largest_shard_deployments : deployments of the largest shard.
    shard_bytes : [B] peak memory one shard task allocates (without its worker process).
    driver_bytes : [B] peak memory of the driver (with its process).
    parts_bytes : [B] shard parts on disk (``.parts/``, removed at the end).
    output_bytes : [B] output files (estimate).
    """

    gpus: int
    deployments: int
    deployment_steps: int
    largest_shard_deployments: int
    shard_bytes: int
    driver_bytes: int
    parts_bytes: int
    output_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_footprint(config, library) -> Footprint:
    """Estimate the cost of running ``config`` (validated against ``library``) from the
    configuration alone (see the module docstring)."""
    f = config.facility
    counts = row_counts(f)
    models = {sid: library[sid] for sid in counts}
    per_row = {sid: f.racks_per_row * f.servers_per_rack * (f.gpus_per_server // m.tp)
               for sid, m in models.items()}
    deployments = sum(counts[sid] * per_row[sid] for sid in counts)
    n_steps = steps_of(config.duration_s)
    warmup_steps = steps_of(config.warmup_s)
    used = [sid for sid, n in counts.items() if n]
    densest = max(per_row[sid] for sid in used)
    seq_capacity = max(int(models[sid].serving.max_num_seqs) for sid in used)

    n_racks = f.rows * f.racks_per_row
    if config.shards <= f.rows:
        shard_racks = math.ceil(f.rows / config.shards) * f.racks_per_row
    else:
        shard_racks = math.ceil(n_racks / min(config.shards, n_racks))
    n_shards = min(config.shards, n_racks)
    shard_servers = shard_racks * f.servers_per_rack
    shard_deployments = min(deployments, shard_racks * densest // f.racks_per_row)
    chunk_steps = max(16, min(steps_of(config.chunk_s), CHUNK_ELEMENTS // max(shard_servers, 1),
                              n_steps))
    per_step = CHUNK_BYTES_PER_DEPLOYMENT_STEP + (
        DEPLOYMENT_LEVEL_BYTES_PER_STEP if config.output.deployments_resolution_s else 0)
    shard_bytes = (shard_deployments * state_bytes_per_deployment(seq_capacity)
                   + shard_deployments * chunk_steps * per_step)

    out = config.output
    site_factor = math.gcd(*(steps_of(r) for r in out.site_resolutions_s))
    feed_blocks = n_steps // site_factor
    entities = {"rows_resolution_s": f.rows, "racks_resolution_s": n_racks,
                "servers_resolution_s": n_racks * f.servers_per_rack,
                "deployments_resolution_s": deployments}
    level_values = sum(n_steps // steps_of(getattr(out, key)) * n
                       for key, n in entities.items() if getattr(out, key) is not None)
    parts_values = feed_blocks * (f.rows + n_shards) + level_values
    output_values = (sum(2 * n_steps // steps_of(r) for r in out.site_resolutions_s)
                     + level_values + 4 * deployments)
    if out.site_csv_resolution_s is not None:
        output_values += 9 * (n_steps // steps_of(out.site_csv_resolution_s))  # ~70 B a line
    driver_bytes = (DRIVER_PROCESS_BYTES + feed_blocks * DRIVER_BYTES_PER_FEED_BLOCK
                    + 4 * 8 * (1 << 21)  # assembly windows (WINDOW_ELEMENTS, a few copies)
                    + deployments * DRIVER_BYTES_PER_DEPLOYMENT)
    return Footprint(gpus=n_racks * f.servers_per_rack * f.gpus_per_server,
                     deployments=deployments,
                     deployment_steps=deployments * (n_steps + warmup_steps),
                     largest_shard_deployments=shard_deployments, shard_bytes=shard_bytes,
                     driver_bytes=driver_bytes, parts_bytes=8 * parts_values,
                     output_bytes=8 * output_values)


@dataclass(frozen=True)
class Capacity:
    """Where a run is about to run.

    Attributes
    ----------
    tasks_at_once : shard tasks that run at the same time.
    memory_bytes : [B] memory available to the driver and, when ``tasks_share_machine``, to
        its tasks too.
    tasks_share_machine : the tasks run on this machine (local executor or a local Ray).
    in_process : tasks run in the driver's process (the local executor).
    node_memory_bytes : [B] memory a task may use on the largest node of a remote cluster.
    disk_free_bytes : [B] free space where the output goes.
    """

    tasks_at_once: int
    memory_bytes: float
    tasks_share_machine: bool = True
    in_process: bool = False
    node_memory_bytes: float | None = None
    disk_free_bytes: float | None = None

    def describe(self) -> str:
        if self.in_process:
            return "shards one at a time in this process"
        where = "this machine" if self.tasks_share_machine else "the cluster"
        return f"{self.tasks_at_once} shard task(s) at once on {where}"


def available_memory_bytes() -> float:
    """[B] memory this machine can give without swapping (``MemAvailable``)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def free_disk_bytes(path: str | Path) -> float:
    """[B] free space on the file system that holds (or will hold) ``path``."""
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        return float(shutil.disk_usage(p).free)
    except OSError:
        return math.inf


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _size_keys(config) -> str:
    f = config.facility
    return (f"facility.rows = {f.rows}, facility.racks_per_row = {f.racks_per_row}, "
            f"facility.servers_per_rack = {f.servers_per_rack}, facility.gpus_per_server = "
            f"{f.gpus_per_server}")


def _time_keys(config) -> str:
    res = ", ".join(f"{k} = {v:g}" for k, v in output_resolutions(config).items())
    return f"duration_s = {config.duration_s:g}, {res}"


def peak_memory_bytes(fp: Footprint, capacity: Capacity) -> int:
    """[B] memory the run takes on this machine at its peak: the driver, plus the shard tasks
    running here at once (in this process, or each in a Ray worker process)."""
    if capacity.in_process:
        return fp.driver_bytes + fp.shard_bytes
    if not capacity.tasks_share_machine:
        return fp.driver_bytes
    return fp.driver_bytes + capacity.tasks_at_once * (fp.shard_bytes + WORKER_PROCESS_BYTES)


def check_footprint(fp: Footprint, config, capacity: Capacity, *,
                    reusable_disk_bytes: float = 0.0) -> None:
    """Raise a :class:`~distgen.errors.DistgenError` when the run cannot fit ``capacity``.

    Checks, in order: one shard task against the memory it may use; the driver (plus, on this
    machine, the tasks running at once) against the available memory; shard parts plus outputs
    against the free disk (plus ``reusable_disk_bytes``, e.g. parts a resumed run keeps).
    Each message gives the estimate and the configuration keys that set it.
    """
    size = _size_keys(config)
    task_bytes = fp.shard_bytes + (0 if capacity.in_process else WORKER_PROCESS_BYTES)
    memory = MEMORY_HEADROOM * capacity.memory_bytes
    task_limit = (capacity.node_memory_bytes if not capacity.tasks_share_machine
                  and capacity.node_memory_bytes else memory)
    if task_bytes > task_limit:
        where = ("this machine has" if capacity.tasks_share_machine
                 else "the largest node of the Ray cluster offers")
        raise DistgenError(
            f"one shard task would need about {fmt_bytes(task_bytes)} of memory "
            f"({fp.largest_shard_deployments:,} deployments in the largest shard), but {where} "
            f"{fmt_bytes(task_limit)} to spare; set by {size}, shards = {config.shards} "
            f"(more shards make each task smaller)")
    total = peak_memory_bytes(fp, capacity)
    tasks = capacity.tasks_at_once
    if total > memory:
        parts = (f"the driver {fmt_bytes(fp.driver_bytes)}" +
                 (f" + {tasks} shard task(s) of {fmt_bytes(task_bytes)}"
                  if capacity.tasks_share_machine and not capacity.in_process else
                  f" + one shard {fmt_bytes(fp.shard_bytes)}" if capacity.in_process else ""))
        raise DistgenError(
            f"this run would need about {fmt_bytes(total)} of memory ({parts}), but this "
            f"machine has {fmt_bytes(memory)} to spare ({MEMORY_HEADROOM:.0%} of "
            f"{fmt_bytes(capacity.memory_bytes)} available); set by {size}, "
            f"{_time_keys(config)}, shards = {config.shards}")
    disk = fp.parts_bytes + fp.output_bytes
    free = (capacity.disk_free_bytes if capacity.disk_free_bytes is not None else math.inf)
    if disk > free + reusable_disk_bytes:
        raise DistgenError(
            f"this run would write about {fmt_bytes(disk)} ({fmt_bytes(fp.parts_bytes)} of "
            f"shard parts, ~{fmt_bytes(fp.output_bytes)} of outputs), but the output folder's "
            f"disk has {fmt_bytes(free + reusable_disk_bytes)} free; set by {_time_keys(config)}"
            f", {size}")


def describe_footprint(fp: Footprint, capacity: Capacity) -> str:
    """One line for the summary: work, time at the typical rate, memory and disk."""
    cpus = capacity.tasks_at_once
    seconds = fp.deployment_steps / (DEPLOYMENT_STEPS_PER_CPU_S * max(cpus, 1))
    took = (f"{seconds:.2g} s" if seconds < 60 else f"{seconds / 60:.2g} min"
            if seconds < 3600 else f"{seconds / 3600:.3g} h")
    return (f"{fp.deployment_steps:.3g} deployment-steps (with warm-up), ~{took} on "
            f"{cpus:g} CPU(s) at {DEPLOYMENT_STEPS_PER_CPU_S / 1e6:g} M/s each; peak memory "
            f"~{fmt_bytes(peak_memory_bytes(fp, capacity))}; disk "
            f"~{fmt_bytes(fp.parts_bytes + fp.output_bytes)}")
