"""Ray executor: same outputs as the local executor, node failures, resume, bad cluster input.

These tests start Ray themselves (a local Ray through the executor, and a multi-node cluster of
``ray start`` processes on loopback). On a machine where Ray would bind to a network interface,
run pytest inside a loopback-only network namespace (``unshare -rn``, as the project's test
script does); they do not wrap themselves.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # a dependency of distgen: its absence is an error, not a skip

from distgen.config import load_config
from distgen.distributed.jobs import read_attempts
from distgen.driver import generate
from distgen.errors import DistgenError
from distgen.io.outdir import PARTS_DIR_NAME
from distgen.io.parts import completed_shards
from distgen.io.series import read_series
from distgen.progress import Progress

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
#: Small: 3 rows x 2 racks x 2 servers x 8 GPUs, 30 min (about a second of work in all).
SMALL = ["duration_s=1800", "facility.racks_per_row=2", "facility.servers_per_rack=2",
         "output.site_resolutions_s=[1,60,900]", "output.rows_resolution_s=1",
         "output.racks_resolution_s=60", "output.site_csv_resolution_s=900"]


def small_config(*overrides):
    return load_config(DEMO, [*SMALL, *overrides])


def data_files(out: Path) -> list[str]:
    """Power series files (the entity and shard tables are not series)."""
    return sorted(p.name for p in Path(out).glob("*.parquet")
                  if p.name not in ("entities.parquet", "row_stats.parquet", "shards.parquet"))


def assert_same_data(a: Path, b: Path) -> None:
    """Same Parquet files with the same columns and values (metadata may differ)."""
    assert data_files(a) == data_files(b) and data_files(a)
    for name in data_files(a):
        ca, _ = read_series(Path(a) / name)
        cb, _ = read_series(Path(b) / name)
        assert sorted(ca) == sorted(cb), name
        for col in ca:
            np.testing.assert_array_equal(ca[col], cb[col], err_msg=f"{name}:{col}")


def comparable_summary(manifest: dict) -> dict:
    """The manifest summary (per-shard wall times and cuts, which differ by design, are in
    shards.parquet, not here)."""
    s = dict(manifest["summary"])
    assert "shards" not in s
    return s


def assert_same_summary(a: dict, b: dict) -> None:
    """Manifest summaries are identical: every figure comes from integer sums (milliwatts,
    whole tokens, request counts), so the cut and the executor cannot change them."""
    assert comparable_summary(a) == comparable_summary(b)


@pytest.fixture(autouse=True)
def _no_ambient_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray started by the executor itself (loopback, no dashboard), 2 CPUs."""
    from distgen.distributed import ray_executor

    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.pop("RAY_ADDRESS", None)
    executor = ray_executor(small_config(), num_cpus=2)
    yield executor.info
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


# ------------------------------------------------------------------ bad cluster input (no Ray)

def test_unreachable_address_fails_fast(tmp_path):
    from distgen.distributed import ray_executor
    from localcluster import free_port

    if ray.is_initialized():
        ray.shutdown()
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(DistgenError, match=address.replace(".", r"\.")):
        ray_executor(small_config(f"ray.address={address}"))
    assert time.monotonic() - t0 < 10
    assert not ray.is_initialized()


def test_address_of_something_else_fails_fast():
    """A port that answers but is not a Ray GCS (here: a plain TCP listener) fails at once."""
    import socket

    from distgen.distributed import ray_executor

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        address = f"127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(DistgenError, match="not a Ray cluster"):
            ray_executor(small_config(f"ray.address={address}"))
        assert time.monotonic() - t0 < 10


def test_cli_unreachable_address(tmp_path, capsys):
    from distgen.cli import main
    from localcluster import free_port

    address = f"127.0.0.1:{free_port()}"
    code = main(["generate", str(DEMO), *SMALL, "--out", str(tmp_path / "o"), "--quiet",
                 "--address", address])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray cluster" in err and address in err


def test_task_refuses_an_output_folder_that_is_not_shared(tmp_path, monkeypatch):
    from distgen.distributed import jobs

    monkeypatch.setattr(jobs, "SHARED_CHECK_WAIT_S", 0.0)
    (tmp_path / ".shared-check-abc").write_text("x")
    jobs.check_shared_folder(str(tmp_path), ".shared-check-abc")  # the driver's folder
    with pytest.raises(DistgenError, match="not shared"):
        jobs.check_shared_folder(str(tmp_path), ".shared-check-other")


def test_hyperscale_preset_plans_and_runs_a_shard(tmp_path):
    """The 1M-GPU preset plans as a whole, and one of its 2000 shards runs (a 2 s slice)."""
    from distgen.io.parts import completed_shards
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import plan_run, run_shard

    preset = DEMO.with_name("hyperscale-1m.yaml")
    library = ModelLibrary.load(None)
    full = plan_run(load_config(preset), library)
    assert full.topology.n_gpus == 1_000_000 and len(full.shards) == 2000
    assert len(set(full.topology.row_serving)) == 5 and full.n_deployments == 800_000
    sizes = [full.topology.fleet(s.rack_start, s.rack_stop).n_deployments for s in full.shards]
    assert sum(sizes) == 800_000 and max(sizes) <= 600

    plan = plan_run(load_config(preset, ["duration_s=2", "warmup_s=0",
                                         "output.site_resolutions_s=[1]",
                                         "output.rows_resolution_s=1",
                                         "output.site_csv_resolution_s=null"]), library)
    summary = run_shard(plan, plan.shards[0], library, tmp_path)
    assert summary.deployments == sizes[0]
    assert 0 in completed_shards(tmp_path)


# ------------------------------------------------------------------ local Ray

@pytest.mark.ray
@pytest.mark.parametrize("shards", [1, 3])
def test_ray_output_identical_to_local(local_ray, tmp_path, shards):
    from distgen.distributed import ray_executor

    one = generate(small_config("shards=1"), tmp_path / "local1")
    ref = generate(small_config(f"shards={shards}"), tmp_path / "local")
    executor = ray_executor(small_config(f"shards={shards}"))
    m = generate(small_config(f"shards={shards}"), tmp_path / "ray", executor=executor)
    assert_same_data(tmp_path / "local", tmp_path / "ray")
    assert_same_data(tmp_path / "local1", tmp_path / "ray")  # any shard count
    assert_same_summary(m, ref)
    assert_same_summary(m, one)
    ex = m["execution"]
    assert ex["executor"] == "ray" and ex["tasks"] == shards and ex["shards"] == shards
    assert ex["ray_address"].startswith("127.0.0.1:") and ex["ray_cpus"] == 2
    assert ex["task_attempts"] == shards and ex["retried_shards"] == []


@pytest.mark.ray
def test_gpu_task_on_cpu_only_cluster_fails_fast(local_ray):
    from distgen.distributed import ray_executor

    t0 = time.monotonic()
    with pytest.raises(DistgenError, match="num_gpus_per_task.*no GPUs"):
        ray_executor(small_config("ray.num_gpus_per_task=1"))
    with pytest.raises(DistgenError, match="no node of the Ray cluster"):
        ray_executor(small_config("ray.num_cpus_per_task=64"))
    assert time.monotonic() - t0 < 5


@pytest.mark.ray
def test_bad_input_in_a_task_is_not_retried(local_ray, tmp_path):
    """A DistgenError raised inside a task fails the run at once with the shard named."""
    from distgen.distributed import RayExecutor
    from distgen.driver import run_shards
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import plan_run

    cfg = small_config("shards=2")
    library = ModelLibrary.load(None)
    plan = plan_run(cfg, library)
    broken = ModelLibrary({}, library.source, library.version)  # every model missing
    executor = RayExecutor(cfg.ray, {})
    t0 = time.monotonic()
    parts = tmp_path / ".parts"
    parts.mkdir()
    with pytest.raises(DistgenError, match=r"shard \d .*not in the model library"):
        run_shards(executor, plan, list(plan.shards), broken, parts, None)
    assert time.monotonic() - t0 < 30


class Interrupted(Exception):
    pass


class _StopAfter(Progress):
    """Interrupts the run (as Ctrl-C or a dying driver would) once ``n`` shards are done."""

    def __init__(self, n):
        super().__init__(enabled=False)
        self.n = n

    def shard_done(self, record=None):
        super().shard_done(record)
        if self.shards_done >= self.n:
            raise Interrupted


@pytest.mark.ray
def test_resume_recomputes_only_unfinished_shards(local_ray, tmp_path):
    from distgen.distributed import ray_executor

    cfg = small_config("shards=6", "duration_s=3600")
    out = tmp_path / "run"
    executor = ray_executor(cfg)
    with pytest.raises(Interrupted):
        generate(cfg, out, executor=executor, progress=_StopAfter(2))
    assert not (out / "manifest.json").exists()
    done = completed_shards(out / ".parts")
    assert 2 <= len(done) < 6
    stamps = {i: (out / ".parts" / f"shard-{i:05d}.json").stat().st_mtime_ns for i in done}

    seen, ran = [], []

    class Watch(Progress):
        def shard_done(self, record=None):
            super().shard_done(record)
            ran.append(record.summary.shard)
            # shards kept from the interrupted run are never rewritten
            seen.append({i: (out / ".parts" / f"shard-{i:05d}.json").stat().st_mtime_ns
                         for i in stamps})

    executor = ray_executor(cfg)
    m = generate(cfg, out, resume=True, executor=executor, progress=Watch(enabled=False))
    assert m["execution"]["resumed_shards"] == len(done)
    assert m["execution"]["tasks"] == 6 - len(done) == len(ran)
    assert set(ran) == set(range(6)) - set(done)
    assert seen and all(s == stamps for s in seen)

    fresh = generate(cfg, tmp_path / "fresh")
    assert_same_data(out, tmp_path / "fresh")
    assert_same_summary(m, fresh)


# ------------------------------------------------------------------ multi-node, node failure

#: 6 shards of about a second each: 6 rows x 2 racks x 4 servers x 8 GPUs (tp1), 6 hours.
KILL = ["shards=6", "duration_s=21600", "facility.rows=6", "facility.racks_per_row=2",
        "facility.servers_per_rack=4", "facility.row_serving=[qwen3-8b_A100_tp1]",
        "output.site_resolutions_s=[1,60,900]", "output.rows_resolution_s=60",
        "output.racks_resolution_s=null", "output.site_csv_resolution_s=null",
        "ray.max_retries=3"]


@pytest.mark.ray
def test_worker_node_killed_mid_run(tmp_path, monkeypatch):
    """Head + 2 worker nodes (1 CPU each) as separate processes. As soon as the first shard
    commits, the worker node running a shard that has started but not committed is killed
    (SIGKILL of its raylet and workers: a machine failure). The run must complete with that
    shard retried on the other node (the attempt records name the node of every start) and
    the same data as a local run."""
    from distgen.distributed import connect, ray_executor
    from localcluster import LocalCluster

    if ray.is_initialized():
        ray.shutdown()
    cfg_args = KILL
    ref_cfg = load_config(DEMO, cfg_args)
    with LocalCluster(worker_cpus=(1, 1)) as cluster:
        for k, v in cluster.env.items():
            if k.startswith("RAY_"):
                monkeypatch.setenv(k, v)
        cfg = load_config(DEMO, [*cfg_args, f"ray.address={cluster.address}"])
        connect(cluster.address)
        cluster.wait_for_nodes(3)
        worker_nodes = [cluster.worker_node_id(i) for i in range(2)]
        executor = ray_executor(cfg)
        info = executor.info
        assert info["ray_nodes"] == 3 and info["ray_cpus"] == 2
        out = tmp_path / "ray"
        killed = {}

        def killer():
            parts = out / PARTS_DIR_NAME   # (io.outdir.parts_dir would create it)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = completed_shards(parts) if parts.is_dir() else {}
                if done:
                    started = read_attempts(parts)
                    running = [(shard, a[-1]["node_id"]) for shard, a in started.items()
                               if shard not in done and a[-1]["node_id"] in worker_nodes]
                    if running:
                        shard, node = running[0]
                        cluster.kill_worker(worker_nodes.index(node))
                        killed.update(at_done=len(done), shard=shard, node=node)
                        return
                time.sleep(0.02)

        watcher = threading.Thread(target=killer, daemon=True)
        watcher.start()
        try:
            m = generate(cfg, out, executor=executor)
            watcher.join(timeout=5)
            alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        finally:
            ray.shutdown()
    assert killed and killed["at_done"] < 6, killed
    survivor = next(n for n in worker_nodes if n != killed["node"])
    assert alive[killed["node"]] is False and alive[survivor] is True
    execution = m["execution"]
    assert execution["tasks"] == 6
    # the shard in flight on the killed node was started again, on the other node
    assert killed["shard"] in execution["retried_shards"], (killed, execution)
    nodes_of_shard = execution["attempt_nodes"][str(killed["shard"])]
    assert nodes_of_shard[0] == killed["node"] and nodes_of_shard[-1] == survivor, nodes_of_shard
    assert execution["task_attempts"] == 6 + sum(
        len(a) - 1 for a in execution["attempt_nodes"].values())
    assert all(a[-1] == survivor for a in execution["attempt_nodes"].values())

    ref = generate(ref_cfg, tmp_path / "local")
    assert_same_data(out, tmp_path / "local")
    assert_same_summary(m, ref)
