"""Ray at the edge: the one package of distgen that imports ray (lazily, inside functions).

* :func:`ray_executor` — run a generation's shards as Ray tasks (see :mod:`.executor`).
* :func:`connect` — join a cluster (``ray.address`` / ``RAY_ADDRESS``) or start a local Ray on
  loopback (see :mod:`.cluster`).
* :func:`run_sweep` — a parameter sweep, one Ray task per point (see :mod:`.sweep`).
* :func:`run_bench` — a short fixed-size generation to measure throughput (see :mod:`.bench`).

Importing this package does not import ray; the functions do when called.
"""

from distgen.distributed.cluster import check_resources, cluster_info, connect
from distgen.distributed.executor import RayExecutor, ray_executor

__all__ = ["RayExecutor", "check_resources", "cluster_info", "connect", "ray_executor",
           "run_bench", "run_sweep"]


def run_sweep(*args, **kwargs):
    from distgen.distributed.sweep import run_sweep as _run
    return _run(*args, **kwargs)


def run_bench(*args, **kwargs):
    from distgen.distributed.bench import run_bench as _run
    return _run(*args, **kwargs)
