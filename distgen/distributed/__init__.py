"""Execution at the edge: the executor protocol (local or Ray) and the jobs it maps.

* :mod:`.executor`: :class:`Executor` (a bounded map with error mapping and cancellation),
  :class:`LocalExecutor`, :class:`RayExecutor`, :func:`make_executor`;
* :mod:`.jobs`: the shard job of a generation and the point job of a sweep;
* :mod:`.cluster`: joining a Ray cluster or starting a local one on loopback;
* :mod:`.bench`: a short fixed-size generation that measures throughput.

This is the one package of distgen that imports ray, always inside functions: importing it
does not import ray.
"""

from distgen.distributed.cluster import check_resources, cluster_info, connect
from distgen.distributed.executor import (Executor, Failure, LocalExecutor, RayExecutor,
                                          make_executor, ray_executor)

__all__ = ["Executor", "Failure", "LocalExecutor", "RayExecutor", "check_resources",
           "cluster_info", "connect", "make_executor", "ray_executor"]
