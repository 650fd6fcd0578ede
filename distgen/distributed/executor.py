"""One executor protocol: a bounded map with error mapping and cancellation, run locally or on Ray.

``generate`` maps the shard job over the shards of a run and ``sweep`` maps the point job over
the points of a sweep, through the same :class:`Executor` interface:

* :class:`LocalExecutor` calls the job in this process, one item after another;
* :class:`RayExecutor` runs one Ray task per item with a bounded number in flight, puts the
  shared arguments in the object store once, retries tasks that die with their worker or node
  (and those failing with an ``OSError``, a file-system hiccup), never retries a
  :class:`~distgen.errors.DistgenError` (bad input), and cancels what is still running when an
  item fails for good or the driver is interrupted.

A job is a plain function ``job(item, *shared)``. With ``fail_fast`` an item's failure raises a
DistgenError naming the item; otherwise it comes back as a :class:`Failure` and the other items
finish.

Only this package imports ray, and only inside functions: importing it costs nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from distgen.distributed.cluster import check_resources, connect, worker_env_options
from distgen.errors import DistgenError, os_error_text

#: Exceptions raised inside a task that are worth retrying (transient I/O); everything else
#: raised by distgen code is a bug or bad input and fails at once. Crashed workers and dead
#: nodes are retried by Ray regardless (``max_retries``).
RETRY_EXCEPTIONS = [OSError]


@dataclass(frozen=True)
class Failure:
    """An item that failed for good (``fail_fast=False``): what went wrong, in one message."""

    message: str


OnDone = Callable[[Any, Any], None]


class Executor(Protocol):
    """Runs ``job(item, *shared)`` for every item; see the module docstring.

    ``info`` holds execution facts for the manifest (executor kind, cluster size, tasks run).
    """

    name: str
    info: dict

    def map(self, job: Callable, items: Iterable, *, shared: tuple = (),
            label: Callable[[Any], str] = str, on_done: OnDone | None = None,
            fail_fast: bool = True) -> list:
        """Results in the order of ``items`` (a :class:`Failure` for a failed item when not
        ``fail_fast``). ``on_done(item, result)`` is called as each item finishes."""


def _failed(label: str, message: str, fail_fast: bool) -> Failure:
    if fail_fast:
        raise DistgenError(f"{label}: {message}")
    return Failure(message)


@dataclass
class LocalExecutor:
    """Items one after another in this process."""

    name: str = "local"
    info: dict = field(default_factory=lambda: {"executor": "local"})

    def map(self, job, items, *, shared=(), label=str, on_done=None, fail_fast=True) -> list:
        results = []
        for item in items:
            try:
                result = job(item, *shared)
            except DistgenError as exc:
                result = _failed(label(item), str(exc), fail_fast)
            results.append(result)
            if on_done is not None:
                on_done(item, result)
        return results


class RayExecutor:
    """One Ray task per item on the connected cluster.

    Parameters
    ----------
    ray_config : :class:`~distgen.config.schema.RayConfig`: CPUs and GPUs per task, retries.
    info : cluster facts (from :func:`~distgen.distributed.cluster.connect`).
    max_in_flight : tasks submitted but not finished at most (default: twice the tasks the
        cluster runs at once).
    """

    name = "ray"

    def __init__(self, ray_config, info: dict | None = None, *,
                 max_in_flight: int | None = None):
        self.ray_config = ray_config
        self.info = {"executor": "ray", **(info or {})}
        self.max_in_flight = max_in_flight

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
        # num_gpus goes in .options(), not in @ray.remote: in the decorator Ray would default
        # max_calls to 1 and start a new worker process (and CUDA context) per task
        rc = self.ray_config
        return {"num_cpus": rc.num_cpus_per_task, "num_gpus": rc.num_gpus_per_task,
                "max_retries": rc.max_retries, "retry_exceptions": list(RETRY_EXCEPTIONS),
                **worker_env_options()}

    def map(self, job, items, *, shared=(), label=str, on_done=None, fail_fast=True) -> list:
        import ray

        rc = self.ray_config
        items = list(items)
        results: list = [None] * len(items)
        if items:
            check_resources(rc.num_cpus_per_task, rc.num_gpus_per_task)
            shared_refs = [ray.put(v) for v in shared]
            task = ray.remote(job)
            opts = self._options()
            limit = self._limit()
            queue = deque(enumerate(items))
            pending: dict = {}
            try:
                while queue or pending:
                    while queue and len(pending) < limit:
                        i, item = queue.popleft()
                        ref = task.options(name=f"distgen-{label(item)}", **opts).remote(
                            item, *shared_refs)
                        pending[ref] = i
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        i = pending.pop(ref)
                        results[i] = self._result(ref, label(items[i]), fail_fast)
                        if on_done is not None:
                            on_done(items[i], results[i])
            finally:
                if pending:
                    self._cancel(list(pending))
        return results

    def _result(self, ref, where: str, fail_fast: bool):
        import ray
        from ray import exceptions as rex

        retries = self.ray_config.max_retries
        try:
            return ray.get(ref)
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DistgenError):
                return _failed(where, str(cause), fail_fast)
            retried = (f" (retried {retries} times)"
                       if isinstance(cause, tuple(RETRY_EXCEPTIONS)) and retries else "")
            if isinstance(cause, OSError):  # the user's disk or folder: one line is enough
                return _failed(where, f"failed{retried}: {os_error_text(cause)}", fail_fast)
            return _failed(where, f"failed{retried}: "
                           f"{type(cause).__name__ if cause else 'error'}: {cause}\n{exc}",
                           fail_fast)
        except rex.TaskCancelledError:
            return _failed(where, "was cancelled", fail_fast)
        except rex.RayError as exc:  # worker crashed / node died / object lost, retries used up
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return _failed(where, f"its worker or node died {retries + 1} time(s) "
                           f"(ray.max_retries = {retries}): {type(exc).__name__}: {first}",
                           fail_fast)

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


def ray_executor(config, *, num_cpus: int | None = None, max_in_flight: int | None = None,
                 on_start: Callable[[str], None] | None = None) -> RayExecutor:
    """An executor running on the Ray cluster of ``config.ray`` (or ``RAY_ADDRESS``, else a local
    Ray on loopback with ``num_cpus`` CPUs). Fails fast with a
    :class:`~distgen.errors.DistgenError` when the address does not answer or the cluster cannot
    run a task of the configured size (e.g. ``ray.num_gpus_per_task > 0`` without GPUs).
    ``on_start`` receives one line before Ray starts (see
    :func:`~distgen.distributed.cluster.connect`).
    """
    rc = config.ray
    info = connect(rc.address, num_cpus=num_cpus, on_start=on_start)
    check_resources(rc.num_cpus_per_task, rc.num_gpus_per_task)
    keep = ("ray_address", "ray_nodes", "ray_cpus", "ray_gpus", "ray_version",
            "ray_node_memory_bytes", "ray_started_here")
    return RayExecutor(rc, {k: info[k] for k in keep if k in info},
                       max_in_flight=max_in_flight)


def make_executor(kind: str, config, *, num_cpus: int | None = None,
                  on_start: Callable[[str], None] | None = None) -> Executor:
    """``"local"`` or ``"ray"`` (see :func:`ray_executor`)."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return ray_executor(config, num_cpus=num_cpus, on_start=on_start)
    raise DistgenError(f"unknown executor {kind!r}; use 'ray' or 'local'")
