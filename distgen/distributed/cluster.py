"""Reaching a Ray cluster: join one (``ray.address`` / ``RAY_ADDRESS``) or start a local one.

Joining checks the address before handing it to Ray, because ``ray.init`` retries an address
that does not answer for minutes: a plain TCP connect (a few seconds) and then an HTTP/2
handshake (Ray's GCS and client server speak gRPC), so a typo, a dead head node or a port of
some other service fails at once with a :class:`~distgen.errors.DistgenError` naming the
address.

A local Ray started on demand is on loopback by construction (see :func:`local_ray_env`): every
process it starts (GCS, raylet, object manager, runtime-env and dashboard agents, workers)
binds 127.0.0.1 and nothing else, no probe of a public address is made, and usage statistics
stay off unless the user turned them on. It runs no dashboard and no Ray client server, keeps
Ray's log lines out of the terminal, and uses Ray's token authentication (Ray creates
``~/.ray/auth_token`` when missing) unless ``RAY_AUTH_MODE`` says otherwise. The price: no
``ray start --address`` worker node can join such a cluster; for several machines start a
cluster with ``ray start`` and join it (``--address``), which is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from distgen.errors import DistgenError

#: Probe timeout [s] for an explicit cluster address.
PROBE_TIMEOUT_S = 3.0
#: Environment of every distgen task: one thread per task, Ray's ``num_cpus`` sets the share.
WORKER_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

#: Ray's own switch for single-machine clusters (what it uses on macOS and Windows): with it at
#: "0", Ray takes 127.0.0.1 as the node address instead of resolving "127.0.0.1" to the
#: machine's outward address (``resolve_ip_for_localhost``), and its agents bind loopback.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
#: A proxy on a loopback port where nothing listens: HTTP requests of the local cluster's
#: processes to anything but loopback fail at once, without a DNS lookup.
DEAD_END_PROXY = "http://127.0.0.1:9"
LOOPBACK_HOSTS = "127.0.0.1,localhost,::1"


def auth_token_path() -> Path:
    """Ray's default token file (``~/.ray/auth_token``)."""
    return Path.home() / ".ray" / "auth_token"


def token_available() -> bool:
    """True when a Ray auth token can be found (env var, token path or ``~/.ray/auth_token``)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or auth_token_path().is_file())


def cluster_env(base: dict | None = None) -> dict:
    """An environment for the processes of a Ray cluster and its drivers.

    Ray 2.60 enforces token authentication when the head node finds a token, but a worker node
    or a driver joining by address only sends one when ``RAY_AUTH_MODE=token``: every process of
    a cluster needs the same mode, so it is set to ``token`` whenever a token is available and
    the mode is not set explicitly.
    """
    env = dict(os.environ if base is None else base)
    if "RAY_AUTH_MODE" not in env and token_available():
        env["RAY_AUTH_MODE"] = "token"
    return env


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: ``address`` (config / ``--address``), else ``RAY_ADDRESS``; None or
    ``"local"`` = start a local Ray."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        address = address.strip()
    return None if address in (None, "", "local") else address


def _host_port(address: str) -> tuple[str, int]:
    if address.startswith("ray://"):
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port or 10001
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise DistgenError(f"Ray address {address!r} is not of the form HOST:PORT (e.g. "
                               f"10.0.0.5:6379) or ray://HOST:PORT")
        port = int(port_text)
        host = host.strip("[]")
    if not host:
        raise DistgenError(f"Ray address {address!r} has no host")
    return host, int(port)


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise a DistgenError unless ``address`` accepts a connection and speaks HTTP/2 (gRPC)."""
    host, port = _host_port(address)
    hint = ("check ray.address / --address / RAY_ADDRESS, that the head node runs (`ray status` "
            "there) and that this machine may reach it; leave the address unset to start a "
            "local Ray")
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except socket.gaierror as exc:
        raise DistgenError(f"cannot reach the Ray cluster at {address}: unknown host {host!r} "
                           f"({exc.strerror}); {hint}") from exc
    except (TimeoutError, socket.timeout) as exc:
        raise DistgenError(f"cannot reach the Ray cluster at {address}: no answer within "
                           f"{timeout_s:g} s; {hint}") from exc
    except OSError as exc:
        raise DistgenError(f"cannot reach the Ray cluster at {address}: "
                           f"{exc.strerror or exc}; {hint}") from exc
    try:
        sock.settimeout(timeout_s)
        sock.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except OSError:
        head = b""
    finally:
        sock.close()
    if len(head) < 9 or head[3] != 0x04:  # the server's preface is a SETTINGS frame
        raise DistgenError(f"{address} accepts connections but is not a Ray cluster (no gRPC "
                           f"answer; the head node's GCS port is the one `ray start --head "
                           f"--port` was given, 6379 by default); {hint}")


def _sync_auth_mode() -> None:
    """Make this process's Ray configuration follow ``RAY_AUTH_MODE`` as it is now.

    Ray reads its configuration once, when it is imported; a mode set afterwards (here, or by a
    caller) is only seen after a refresh, which is what Ray itself does when it enables token
    authentication.
    """
    try:
        from ray._raylet import AuthenticationMode, Config, get_authentication_mode
    except ImportError:  # a Ray without token authentication
        return
    want_token = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if want_token != (get_authentication_mode() == AuthenticationMode.TOKEN):
        Config.initialize("")


def usage_stats_chosen_by_user(environ: dict | None = None) -> bool:
    """True when the user turned Ray's usage statistics on or off explicitly
    (``RAY_USAGE_STATS_ENABLED`` set, or ``ray enable-usage-stats`` / ``ray
    disable-usage-stats`` recorded in Ray's config file)."""
    env = os.environ if environ is None else environ
    if env.get(USAGE_STATS_ENV) is not None:
        return True
    # Ray's own check reads os.environ, not ``environ``: read its config file ourselves
    try:
        import json

        from ray._common.usage import usage_lib
        with open(usage_lib._usage_stats_config_path()) as fh:
            return json.load(fh).get("usage_stats") is not None
    except Exception:  # no file, or a private Ray API that moved: "not chosen"
        return False


def local_ray_env(environ: dict | None = None) -> dict:
    """Environment variables that keep a local Ray on loopback and quiet.

    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (:data:`SINGLE_MACHINE_ENV`): Ray's single-machine
      mode. Without it, on Linux, Ray resolves ``_node_ip_address="127.0.0.1"`` to the address
      of the machine's default route (probing 8.8.8.8 to find it), so GCS, raylet and object
      manager listen there and the dashboard agent and metrics exporter on every interface;
      with it every process binds 127.0.0.1. It also makes ``ray start --address`` refuse to
      add worker nodes, which is why it is only set for the processes of a cluster that
      distgen starts itself.
    * ``RAY_USAGE_STATS_ENABLED=0`` unless the user chose otherwise
      (:func:`usage_stats_chosen_by_user`): Ray's usage report is an HTTPS post to the
      internet a minute after start.
    * ``http_proxy`` / ``https_proxy`` = :data:`DEAD_END_PROXY`, ``no_proxy`` = loopback: Ray's
      dashboard process asks cloud metadata services (169.254.169.254,
      metadata.google.internal) which cloud it runs on even with usage statistics off; through
      a proxy that does not exist those requests end on this machine, before any DNS lookup.
      Inter-process traffic of the cluster is on loopback and bypasses the proxy.
    """
    env = os.environ if environ is None else environ
    out = {SINGLE_MACHINE_ENV: "0"}
    if not usage_stats_chosen_by_user(env):
        out[USAGE_STATS_ENV] = "0"
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        out[name] = DEAD_END_PROXY
    for name in ("no_proxy", "NO_PROXY"):
        out[name] = LOOPBACK_HOSTS
    return out


@contextlib.contextmanager
def _single_machine_ray() -> Iterator[None]:
    """While a local Ray starts: :func:`local_ray_env` in this process's environment (the
    cluster's processes inherit it) and Ray's single-machine constant set here, both put back
    afterwards so that a later ``ray start`` or join from this process is not affected."""
    from ray._private import ray_constants

    added = local_ray_env()
    saved_env = {k: os.environ.get(k) for k in added}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(added)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_local_ray(*, num_cpus: int | None = None, temp_dir: str | None = None) -> None:
    """Start a local Ray on loopback only (see the module docstring and :func:`local_ray_env`)."""
    import ray

    # Ray's default for a new cluster is token auth (it says so with a warning)
    logging.getLogger("ray._private.authentication.authentication_token_setup"
                      ).setLevel(logging.ERROR)
    with _single_machine_ray():
        try:
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=num_cpus,
                     _temp_dir=temp_dir, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"env_vars": dict(WORKER_ENV)})
        except Exception as exc:  # Ray raises plain Exceptions / RuntimeErrors here
            raise DistgenError(f"could not start a local Ray: {type(exc).__name__}: "
                               f"{exc}") from exc


def connect(address: str | None = None, *, num_cpus: int | None = None,
            temp_dir: str | None = None,
            on_start: Callable[[str], None] | None = None) -> dict:
    """Make sure this process is connected to Ray and describe the cluster.

    Reuses an existing connection (``ray.is_initialized()``). Otherwise joins ``address`` (or
    ``RAY_ADDRESS``) after :func:`probe`, or starts a local Ray on loopback
    (:func:`start_local_ray`). ``on_start(message)`` is called once, with one line, before a
    local Ray is started or a cluster joined (both take seconds).

    Returns
    -------
    dict : ``ray_address``, ``ray_nodes``, ``ray_cpus``, ``ray_gpus``, ``ray_version``,
        ``ray_started_here`` (True when this call started a local Ray).
    """
    import ray

    started = False
    if not ray.is_initialized():
        target = resolve_address(address)
        if target is None:
            if on_start is not None:
                cpus = num_cpus if num_cpus is not None else os.cpu_count()
                on_start(f"starting a local Ray on 127.0.0.1 ({cpus} CPUs) ...")
            start_local_ray(num_cpus=num_cpus, temp_dir=temp_dir)
            started = True
        else:
            if target != "auto":
                probe(target)
            if on_start is not None:
                on_start(f"joining the Ray cluster at {target} ...")
            env = cluster_env()
            if env.get("RAY_AUTH_MODE") and "RAY_AUTH_MODE" not in os.environ:
                os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]
            _sync_auth_mode()
            try:
                ray.init(address=target, logging_level=logging.WARNING,
                         runtime_env={"env_vars": dict(WORKER_ENV)})
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                raise DistgenError(f"cannot join the Ray cluster at {target}: "
                                   f"{str(exc).strip().splitlines()[0] if str(exc) else exc!r}"
                                   ) from exc
    info = cluster_info()
    info["ray_started_here"] = started
    return info


def worker_env_options() -> dict:
    """Task options that give workers :data:`WORKER_ENV`: none when the job's runtime
    environment has it already (set by :func:`connect`; per-task environments would start
    separate worker processes), else a per-task ``runtime_env``."""
    import ray

    try:
        job_env = dict((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
    except Exception:
        job_env = {}
    if all(job_env.get(k) == v for k, v in WORKER_ENV.items()):
        return {}
    return {"runtime_env": {"env_vars": {**job_env, **WORKER_ENV}}}


def cluster_info() -> dict:
    """Address, alive nodes, CPUs, GPUs and the memory of the largest node [bytes] (Ray's
    ``memory`` resource: what it lets tasks use) of the connected cluster."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # older Ray / Ray client
        address = None
    node_memory = [float(n.get("Resources", {}).get("memory", 0.0)) for n in nodes]
    return {"ray_address": address, "ray_nodes": len(nodes),
            "ray_cpus": float(total.get("CPU", 0.0)), "ray_gpus": float(total.get("GPU", 0.0)),
            "ray_node_memory_bytes": max(node_memory, default=0.0),
            "ray_version": ray.__version__}


def check_resources(num_cpus: float, num_gpus: float, *, what: str = "a shard task",
                    keys: tuple[str, str] = ("ray.num_cpus_per_task",
                                             "ray.num_gpus_per_task")) -> None:
    """Fail fast when no node of the cluster can ever run a task of this size.

    Ray would otherwise keep such a task pending forever (an "infeasible" task).
    """
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes]
    gpus = [float(n.get("Resources", {}).get("GPU", 0.0)) for n in nodes]
    if num_gpus > 0 and float(total.get("GPU", 0.0)) <= 0:
        raise DistgenError(
            f"config {keys[1]} = {num_gpus:g}, but the Ray cluster has no GPUs "
            f"({len(nodes)} node(s), {sum(cpus):g} CPUs, 0 GPUs); set {keys[1]}=0 to run on "
            f"CPUs, or join a cluster with GPU nodes (an autoscaling cluster needs at least one "
            f"GPU node up: min_workers >= 1)")
    fits = [c >= num_cpus and g >= num_gpus for c, g in zip(cpus, gpus)]
    if not any(fits):
        raise DistgenError(
            f"{what} asks for {num_cpus:g} CPUs and {num_gpus:g} GPUs ({keys[0]}, {keys[1]}), "
            f"but no node of the Ray cluster has that much (largest node: {max(cpus, default=0):g}"
            f" CPUs, {max(gpus, default=0):g} GPUs)")
