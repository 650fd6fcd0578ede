"""The Ray executor: one Ray task per shard, results committed to the shared output folder.

:func:`ray_executor` returns an executor for :func:`distgen.driver.generate`. Each call:

* puts the model library in the object store once, as plain JSON bytes (workers rebuild the
  models with :meth:`PowerModel.from_dict`), and the run plan (frozen dataclasses of plain
  values) and replay arrays once;
* submits one task per shard, ``num_cpus`` / ``num_gpus`` / ``max_retries`` from
  ``config.ray``, with a bounded number of tasks in flight; a task that dies with its worker or
  node is retried by Ray (``max_retries``), as is one that fails with an ``OSError`` (a file
  system hiccup); a :class:`~distgen.errors.DistgenError` (bad input) is not retried;
* collects results with ``ray.wait`` and updates the progress line per finished shard;
* raises a :class:`~distgen.errors.DistgenError` naming the shard when one fails for good, and
  cancels the rest;
* checks that the output folder is shared: the driver writes a check file into
  ``OUT/.parts/`` and a task on a node that does not see it fails at once (not retried)
  instead of writing its part to that node's local disk.

Tasks are deterministic and each commits its shard atomically (done marker last), so a retried
or duplicated task is harmless and the output is identical to the local executor's.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import deque
from pathlib import Path

from distgen.distributed.cluster import check_resources, connect, worker_env_options
from distgen.errors import DistgenError

#: Exceptions raised inside a task that are worth retrying (transient I/O); everything else
#: raised by distgen code is a bug or bad input and fails at once. Crashed workers and dead
#: nodes are retried by Ray regardless (``max_retries``).
RETRY_EXCEPTIONS = [OSError]

_REMOTE = None
_LIBRARIES: dict[str, object] = {}  # worker-side cache: library key -> ModelLibrary


# ----------------------------------------------------------------------------- payloads

def library_payload(library) -> tuple[str, bytes]:
    """(key, JSON bytes) of a model library: the form it travels in."""
    doc = {"source": library.source, "version": library.version,
           "models": {cid: m.to_dict() for cid, m in sorted(library.models.items())}}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    import hashlib
    return f"{library.version}-{hashlib.sha256(data).hexdigest()[:16]}", data


def library_from_payload(key: str, data) -> object:
    """The ModelLibrary of :func:`library_payload` (cached per worker process)."""
    lib = _LIBRARIES.get(key)
    if lib is None:
        from distgen.model.artifact import ModelLibrary, PowerModel

        doc = json.loads(bytes(data).decode("utf-8"))
        models = {cid: PowerModel.from_dict(d, f"{doc['source']}/{cid}.json")
                  for cid, d in doc["models"].items()}
        lib = ModelLibrary(models, doc["source"], doc["version"])
        _LIBRARIES.clear()  # one library per run; keep memory flat across runs
        _LIBRARIES[key] = lib
    return lib


def replay_payload(replay) -> dict | None:
    """The replay request arrays as a plain dict of NumPy arrays (or None)."""
    if replay is None:
        return None
    import dataclasses
    return {f.name: getattr(replay, f.name) for f in dataclasses.fields(replay)}


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


# ----------------------------------------------------------------------------- the task

def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0), so it measures the next task only."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kb() -> int:
    """Peak RSS [KiB] since the last reset (VmHWM), else of the process's life."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


SHARED_CHECK_PREFIX = ".shared-check-"
#: How long a task waits for the driver's check file to appear (shared file systems may show a
#: new file to other machines with a short delay).
SHARED_CHECK_WAIT_S = 10.0


def check_shared_folder(parts_dir: str, check_name: str | None) -> None:
    """Raise a DistgenError when ``parts_dir`` is not the driver's folder (no shared storage)."""
    if not check_name:
        return
    path = Path(parts_dir) / check_name
    deadline = time.monotonic() + SHARED_CHECK_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            import socket
            raise DistgenError(
                f"the output folder is not shared with this worker node ({socket.gethostname()}):"
                f" {parts_dir} does not hold the file the driver wrote there; on a multi-machine"
                f" Ray cluster, put --out on a file system mounted at the same path on every "
                f"node (NFS, EFS, ...; see cluster/README.md)")
        time.sleep(0.5)


def run_shard_task(plan, library_key: str, library_data, replay_doc, shard, parts_dir: str,
                   check_name: str | None = None) -> dict:
    """Body of a shard task (runs in a Ray worker): generate and commit one shard.

    Returns the shard summary plus where and how it ran: host, pid, node, wall time, RSS at the
    start and peak RSS during the task (``peak_rss_kb``; the process peak where the kernel
    cannot reset it, ``peak_rss_reset`` False).
    """
    import socket

    from distgen.pipeline import ReplayRequests, run_shard

    check_shared_folder(parts_dir, check_name)
    rss0 = _rss_kb()
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    library = library_from_payload(library_key, library_data)
    replay = ReplayRequests(**replay_doc) if replay_doc is not None else None
    summary = run_shard(plan, shard, library, Path(parts_dir), replay_requests=replay)
    node = ""
    try:
        import ray
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # not in a Ray worker (direct call in tests)
        pass
    return {"summary": summary, "wall_s": time.perf_counter() - t0,
            "host": socket.gethostname(), "pid": os.getpid(), "node_id": node,
            "rss_before_kb": rss0, "peak_rss_kb": _peak_rss_kb(), "peak_rss_reset": reset}


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray
        _REMOTE = ray.remote(run_shard_task)
    return _REMOTE


# ----------------------------------------------------------------------------- executor

class RayExecutor:
    """Runs shards as Ray tasks; see the module docstring.

    Parameters
    ----------
    ray_config : :class:`~distgen.config.schema.RayConfig` (resources, retries).
    info : execution facts (from :func:`~distgen.distributed.cluster.connect`); updated in place
        after each call with ``ray_tasks``, ``ray_workers`` and ``ray_task_s`` (it is the dict
        the driver writes into the manifest's ``execution``).
    max_in_flight : tasks submitted but not finished at most (default: twice the tasks the
        cluster can run at once).

    After a call, :attr:`tasks` holds one record per shard (worker, wall time, peak RSS).
    """

    def __init__(self, ray_config, info: dict | None = None, *, max_in_flight: int | None = None):
        self.ray_config = ray_config
        self.info = info if info is not None else {}
        self.max_in_flight = max_in_flight
        self.tasks: list[dict] = []
        self.wall_s = 0.0

    def _limit(self) -> int:
        if self.max_in_flight:
            return max(1, int(self.max_in_flight))
        import ray
        total = ray.cluster_resources()
        rc = self.ray_config
        slots = []
        if rc.num_cpus_per_task > 0:
            slots.append(float(total.get("CPU", 0.0)) / rc.num_cpus_per_task)
        if rc.num_gpus_per_task > 0:
            slots.append(float(total.get("GPU", 0.0)) / rc.num_gpus_per_task)
        parallel = int(min(slots)) if slots else 1
        return max(2, min(4096, 2 * max(parallel, 1)))

    def _options(self) -> dict:
        rc = self.ray_config
        return {"num_cpus": rc.num_cpus_per_task, "num_gpus": rc.num_gpus_per_task,
                "max_retries": rc.max_retries, "retry_exceptions": list(RETRY_EXCEPTIONS),
                **worker_env_options()}

    def __call__(self, plan, shards, library, parts_dir, replay=None, progress=None) -> None:
        import ray

        rc = self.ray_config
        self.tasks = []
        t0 = time.perf_counter()
        shards = list(shards)
        if shards:
            check_resources(rc.num_cpus_per_task, rc.num_gpus_per_task)
            key, data = library_payload(library)
            lib_ref = ray.put(data)
            plan_ref = ray.put(plan)
            replay_ref = ray.put(replay_payload(replay)) if replay is not None else None
            parts = str(Path(parts_dir).resolve())
            Path(parts).mkdir(parents=True, exist_ok=True)
            check_name = f"{SHARED_CHECK_PREFIX}{secrets.token_hex(8)}"
            (Path(parts) / check_name).write_text("written by the distgen driver\n")
            task = _remote()
            opts = self._options()
            limit = self._limit()
            queue = deque(shards)
            pending: dict = {}
            try:
                while queue or pending:
                    while queue and len(pending) < limit:
                        shard = queue.popleft()
                        ref = task.options(name=f"distgen-shard-{shard.index}", **opts).remote(
                            plan_ref, key, lib_ref, replay_ref, shard, parts, check_name)
                        pending[ref] = shard
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        shard = pending.pop(ref)
                        record = self._result(ref, shard)
                        self.tasks.append(record)
                        if progress is not None:
                            progress.advance(int(record["summary"]["deployment_steps"]))
                            progress.shard_done()
            finally:
                if pending:
                    self._cancel(list(pending))
                (Path(parts) / check_name).unlink(missing_ok=True)
        self.wall_s = time.perf_counter() - t0
        workers = {(t["host"], t["pid"]) for t in self.tasks}
        self.info.update({"ray_tasks": len(self.tasks), "ray_workers": len(workers),
                          "ray_task_s": round(sum(t["wall_s"] for t in self.tasks), 3)})

    def _result(self, ref, shard) -> dict:
        import ray
        from ray import exceptions as rex

        where = f"shard {shard.index} (racks {shard.rack_start}..{shard.rack_stop - 1})"
        retries = self.ray_config.max_retries
        try:
            return ray.get(ref)
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DistgenError):
                raise DistgenError(f"{where}: {cause}") from None
            retried = (f" (retried {retries} times)"
                       if isinstance(cause, tuple(RETRY_EXCEPTIONS)) and retries else "")
            raise DistgenError(f"{where} failed{retried}: "
                               f"{type(cause).__name__ if cause else 'error'}: {cause}\n"
                               f"{exc}") from None
        except rex.TaskCancelledError:
            raise DistgenError(f"{where} was cancelled") from None
        except rex.RayError as exc:  # worker crashed / node died / object lost, retries used up
            raise DistgenError(
                f"{where} failed: its worker or node died {retries + 1} time(s) "
                f"(ray.max_retries = {retries}): {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None

    @staticmethod
    def _cancel(refs: list) -> None:
        """Stop tasks that are still running (an error elsewhere, or Ctrl-C), and wait briefly
        for them to go, so no task is still writing after the executor returns."""
        import ray
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        try:
            ray.wait(refs, num_returns=len(refs), timeout=15.0)
        except Exception:
            pass


def ray_executor(config, *, num_cpus: int | None = None,
                 max_in_flight: int | None = None) -> tuple[RayExecutor, dict]:
    """An executor running ``config``'s shards on Ray, and the cluster facts for the manifest.

    Joins ``config.ray.address`` (or ``RAY_ADDRESS``), else starts a local Ray on loopback
    (``num_cpus`` caps its CPUs; default: all). Fails fast with a
    :class:`~distgen.errors.DistgenError` when the address does not answer or the cluster cannot
    run a task of the configured size (e.g. ``ray.num_gpus_per_task > 0`` without GPUs).
    """
    rc = config.ray
    info = connect(rc.address, num_cpus=num_cpus)
    check_resources(rc.num_cpus_per_task, rc.num_gpus_per_task)
    info = {"ray_address": info["ray_address"], "ray_nodes": info["ray_nodes"],
            "ray_cpus": info["ray_cpus"], "ray_gpus": info["ray_gpus"],
            "ray_version": info["ray_version"]}
    executor = RayExecutor(rc, info, max_in_flight=max_in_flight)
    return executor, info
