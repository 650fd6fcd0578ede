"""The jobs an executor maps: one shard of a generation, one point of a sweep.

Each job is a plain function of picklable values; the model library travels as JSON bytes
(:func:`library_payload`), never as a pickle of user data, and is parsed once per worker
process. A shard job first checks that it sees the driver's output folder (a node without the
shared file system fails at once instead of writing its part to a local disk) and records its
attempt (node, host, pid) so the driver can report retries.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from distgen.errors import DistgenError

_LIBRARIES: dict[str, object] = {}  # worker-side cache: library key -> ModelLibrary

SHARED_CHECK_PREFIX = ".shared-check-"
#: How long a task waits for the driver's check file to appear (shared file systems may show a
#: new file to other machines with a short delay).
SHARED_CHECK_WAIT_S = 10.0
ATTEMPTS_DIR = "attempts"


# ----------------------------------------------------------------------------- payloads

def library_payload(library) -> tuple[str, bytes]:
    """(key, JSON bytes) of a model library: the form it travels in."""
    doc = {"source": library.source, "version": library.version,
           "models": {cid: m.to_dict() for cid, m in sorted(library.models.items())}}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return f"{library.version}-{hashlib.sha256(data).hexdigest()[:16]}", data


def library_from_payload(payload: tuple[str, bytes]):
    """The ModelLibrary of :func:`library_payload` (cached per worker process)."""
    key, data = payload
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


# ----------------------------------------------------------------------------- shard job

def check_shared_folder(parts_dir: str, check_name: str) -> None:
    """Raise a DistgenError when ``parts_dir`` is not the driver's folder (no shared storage)."""
    path = Path(parts_dir) / check_name
    deadline = time.monotonic() + SHARED_CHECK_WAIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise DistgenError(
                f"the output folder is not shared with this worker node ({socket.gethostname()}):"
                f" {parts_dir} does not hold the file the driver wrote there; on a multi-machine"
                f" Ray cluster, put --out on a file system mounted at the same path on every "
                f"node (NFS, EFS, ...; see cluster/README.md)")
        time.sleep(0.5)


def write_shared_check(parts_dir: Path) -> str:
    """Write the driver's check file into ``parts_dir``; returns its name."""
    name = f"{SHARED_CHECK_PREFIX}{secrets.token_hex(8)}"
    (parts_dir / name).write_text("written by the distgen driver\n")
    return name


def _node_id() -> str:
    try:
        import ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # not in a Ray worker
        return ""


def _peak_rss_kb() -> int:
    """Peak RSS [KiB] of this process (VmHWM; reset per task where Linux allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard job: the shard's summary and where it ran.

    Attributes
    ----------
    summary : :class:`~distgen.results.ShardSummary`.
    host, pid, node_id : where it ran (node_id empty outside Ray).
    wall_s : [s] wall time of the job.
    peak_rss_kb : [KiB] peak resident memory during the job (``peak_rss_reset`` False: of
        the worker process's life).
    """

    summary: object
    host: str
    pid: int
    node_id: str
    wall_s: float
    peak_rss_kb: int
    peak_rss_reset: bool


def shard_job(shard, plan, library: tuple[str, bytes], replay_doc: dict | None, parts_dir: str,
              check_name: str) -> ShardRecord:
    """Generate and commit one shard (see :func:`distgen.pipeline.run_shard`)."""
    from distgen.pipeline import ReplayRequests, run_shard

    check_shared_folder(parts_dir, check_name)
    node = _node_id()
    # named by start time, so that sorted names list a shard's attempts in the order they began
    attempt = (Path(parts_dir) / ATTEMPTS_DIR
               / f"shard-{shard.index:05d}-{time.time_ns():020d}-{secrets.token_hex(4)}")
    attempt.parent.mkdir(exist_ok=True)
    attempt.write_text(json.dumps({"shard": shard.index, "node_id": node,
                                   "host": socket.gethostname(), "pid": os.getpid()}))
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    replay = ReplayRequests(**replay_doc) if replay_doc is not None else None
    summary = run_shard(plan, shard, library_from_payload(library), Path(parts_dir),
                        replay_requests=replay)
    return ShardRecord(summary, socket.gethostname(), os.getpid(), node,
                       time.perf_counter() - t0, _peak_rss_kb(), reset)


def read_attempts(parts_dir: Path) -> dict[int, list[dict]]:
    """Shard index -> the attempts recorded by :func:`shard_job` (one per task start), in the
    order they started."""
    out: dict[int, list[dict]] = {}
    folder = Path(parts_dir) / ATTEMPTS_DIR
    for path in sorted(folder.glob("shard-*")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out.setdefault(int(doc["shard"]), []).append(doc)
    return out


# ----------------------------------------------------------------------------- sweep job

def point_job(point_run: tuple[str, str, str, bool], libraries: dict) -> dict:
    """One sweep point: a whole generation (local executor) and its metrics.

    ``point_run`` is (point id, config JSON, output folder, resume); ``libraries`` maps a
    library path (or None) to its :func:`library_payload`.
    """
    from distgen.config import config_from_dict
    from distgen.driver import generate
    from distgen.io.outdir import is_ours
    from distgen.sweep.results import point_metrics

    _, config_json, out_dir, resume = point_run
    t0 = time.perf_counter()
    cfg = config_from_dict(json.loads(config_json))
    library = library_from_payload(libraries[cfg.model_library])
    generate(cfg, out_dir, library=library, resume=resume and is_ours(out_dir))
    return {"metrics": point_metrics(out_dir), "wall_s": time.perf_counter() - t0}
