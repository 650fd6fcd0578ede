"""A real multi-node Ray cluster on one machine, for tests, benchmarks and trying things out.

Each node is a separate ``ray start --block`` process group listening on 127.0.0.1: a head
node (no CPUs by default, so tasks land on the workers) and worker nodes joining it. Nodes can
be killed (SIGKILL of the whole process group: ``ray start``, raylet and agents) to simulate a
machine failure; their worker processes notice that their raylet is gone and exit.

Only processes started here are ever signalled (by their process-group id), never by name:
``ray stop`` would end every Ray process of the user on the machine.

On a machine whose Ray would bind to a network interface, run this inside a private network
namespace with only loopback (``unshare -rn``), as the test suite does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distgen.distributed.cluster import cluster_env, probe
from distgen.errors import DistgenError

#: Faster failure detection than Ray's defaults (about 15 s), so a killed node is declared
#: dead within about 2 s.
FAST_HEALTH_CHECK = {"RAY_health_check_initial_delay_ms": "1000",
                     "RAY_health_check_period_ms": "500",
                     "RAY_health_check_timeout_ms": "1000",
                     "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


class LocalCluster:
    """Head + worker nodes as separate processes on loopback.

    Parameters
    ----------
    worker_cpus : CPUs of each worker node (one node per entry).
    head_cpus : CPUs of the head node (0: it only coordinates).
    env : extra environment for every node (``RAY_*`` settings); :data:`FAST_HEALTH_CHECK`
        is applied by default.

    Use as a context manager; :attr:`address` is the GCS address to join, :attr:`env` the
    environment a driver process needs (auth mode). :meth:`stop` kills every node started.
    """

    def __init__(self, worker_cpus=(1, 1), *, head_cpus: int = 0, env: dict | None = None,
                 start_timeout_s: float = 60.0):
        self.worker_cpus = list(worker_cpus)
        self.head_cpus = head_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="dgray-", dir="/tmp")  # short: socket paths
        self.env = cluster_env()
        self.env.update(FAST_HEALTH_CHECK)
        self.env.update(env or {})
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        #: node-manager (raylet) port of each worker node: identifies it in ``ray.nodes()``
        self.worker_ports: list[int] = []

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        common = ["--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats",
                  f"--dashboard-agent-listen-port={free_port()}"]
        with open(Path(self.temp_dir) / log, "wb") as fh:
            return subprocess.Popen([_ray_bin(), "start", *args, *common], env=self.env,
                                    stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def _start_head(self) -> str | None:
        """Start the head node; None when it answers, else the tail of its log."""
        self.head = self._spawn(["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                                 "--include-dashboard=false", f"--temp-dir={self.temp_dir}"],
                                "head.log")
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                probe(self.address, timeout_s=1.0)
                return None
            except DistgenError:
                if self.head.poll() is not None or time.monotonic() > deadline:
                    _killpg(self.head, signal.SIGKILL)
                    self.head.wait(timeout=10)
                    log = Path(self.temp_dir) / "head.log"
                    return log.read_bytes()[-2000:].decode(errors="replace")
                time.sleep(0.2)

    def start(self) -> "LocalCluster":
        # The ports handed to `ray start` are probed free just before, and Ray picks further
        # ports of its own, so a rare collision can stop the head: try once more on new ports.
        for attempt in range(2):
            failure = self._start_head()
            if failure is None:
                break
            if attempt == 0:
                self.port = free_port()
                self.address = f"127.0.0.1:{self.port}"
                continue
            self.stop(keep_logs=True)
            raise DistgenError(f"local Ray head node did not start (logs kept in "
                               f"{self.temp_dir}):\n{failure}")
        for cpus in self.worker_cpus:
            self.add_worker(cpus)
        return self

    def add_worker(self, cpus: int) -> subprocess.Popen:
        """Start a worker node and wait until it runs.

        Nodes start one after another: nodes sharing a session folder pick their socket names
        by probing for free ones, which races when two start at once.
        """
        log = Path(self.temp_dir) / f"worker{len(self.workers)}.log"
        port = free_port()
        proc = self._spawn([f"--address={self.address}", f"--num-cpus={cpus}",
                            f"--node-manager-port={port}"], log.name)
        self.workers.append(proc)
        self.worker_ports.append(port)
        deadline = time.monotonic() + self.start_timeout_s
        while b"Ray runtime started" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_bytes()[-2000:].decode(errors="replace")
                self.stop(keep_logs=True)
                raise DistgenError(f"local Ray worker node did not start (logs kept in "
                                   f"{self.temp_dir}):\n{tail}")
            time.sleep(0.1)
        return proc

    def wait_for_nodes(self, n_alive: int, timeout_s: float | None = None) -> None:
        """Wait (in a connected driver) until ``n_alive`` nodes are alive."""
        import ray

        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        while sum(1 for n in ray.nodes() if n.get("Alive")) < n_alive:
            if time.monotonic() > deadline:
                raise DistgenError(f"only {sum(1 for n in ray.nodes() if n.get('Alive'))} of "
                                   f"{n_alive} Ray nodes came up; logs in {self.temp_dir}")
            time.sleep(0.2)

    def worker_node_id(self, i: int) -> str:
        """Ray's node id of worker node ``i`` (in a connected driver)."""
        import ray

        ids = [n["NodeID"] for n in ray.nodes()
               if n.get("NodeManagerPort") == self.worker_ports[i]]
        if len(ids) != 1:
            raise DistgenError(f"worker node {i} (node manager port {self.worker_ports[i]}) "
                               f"is not known to the cluster: {len(ids)} matches")
        return ids[0]

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker node ``i`` (its ``ray start``, raylet and agents): a machine failure."""
        _killpg(self.workers[i], signal.SIGKILL)

    def stop(self, keep_logs: bool = False) -> None:
        procs = [p for p in [*self.workers, self.head] if p is not None]
        for p in procs:
            _killpg(p, signal.SIGKILL)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.workers, self.head, self.worker_ports = [], None, []
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group made by start_new_session: only our processes
    except (ProcessLookupError, PermissionError):
        pass
