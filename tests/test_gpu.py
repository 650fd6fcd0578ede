"""The GPU backend: what can be proven without a GPU, and the checks that need one.

Without a GPU (CI):
* NVRTC (the ``nvidia-cuda-nvrtc-cu12`` wheel of the ``test`` extra, loaded with ctypes; no
  driver needed) compiles engine/fleet_kernel.cu with the GPU build's options, and the PTX has
  no fused multiply-add, no approximate instruction and no call. Control: without
  ``--fmad=false`` the same source does compile to FMAs, so the check can fail.
* The GPU path of the pipeline (device state, parameter block, launch, on-device reductions
  and block sums, copies back) run on the CPU stand-in ``HostDevice``, which launches the host
  build of the same source: it reproduces the golden runs (tests/golden/golden.json, produced
  by the Numba kernel) and the CPU path's shard files bit for bit.
* Backend selection, the memory check and Ray's ``num_gpus`` in ``.options()``.

With a GPU (marked ``gpu``, skipped with the reason otherwise): the CuPy device gives the CPU
path's shard files bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path

import numpy as np
import pytest

from distgen import backend
from distgen.config import load_config
from distgen.engine import gpukernel
from distgen.engine.gpukernel import HostDevice, bytes_per_deployment
from distgen.errors import ConfigError
from distgen.model.artifact import ModelLibrary
from distgen.pipeline import plan_run, run_shard

GOLDEN = Path(__file__).resolve().parent / "golden"
#: platforms where the test extra installs the NVRTC wheel (pyproject.toml)
NVRTC_WHEEL_PLATFORM = platform.system() == "Linux" and platform.machine() == "x86_64"


def _golden_module():
    spec = importlib.util.spec_from_file_location("golden_gpu", GOLDEN / "golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ NVRTC / PTX

@pytest.fixture(scope="module")
def nvrtc():
    if gpukernel.nvrtc_library_path() is None:
        if NVRTC_WHEEL_PLATFORM:
            pytest.fail("the NVRTC wheel (nvidia-cuda-nvrtc-cu12) is missing; the test extra "
                        "installs it: pip install -e \".[test]\"")
        pytest.skip(f"no NVRTC wheel for {platform.system()} {platform.machine()}")
    return gpukernel.nvrtc_version()


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_build_has_no_fma_approx_or_call(nvrtc, arch):
    ptx = gpukernel.compile_ptx(arch=arch)
    assert f".entry {gpukernel.DEVICE_ENTRY}(" in ptx
    assert "atom.add.u64" in ptx          # the int64 sums into the target rows
    assert "div.rn.f64" in ptx and "sqrt.rn.f64" in ptx  # IEEE division and square root
    assert gpukernel.ptx_violations(ptx) == []


def test_device_build_fits_in_registers(nvrtc):
    """ptxas (inside NVRTC) for sm_90: no spill to local memory (the kernel's per-deployment
    state stays in registers across the step loop; 168 registers when this was written)."""
    report = gpukernel.register_report("sm_90")
    assert report["registers"] is not None and report["registers"] <= 255, report["log"]
    assert report["spill_stores_bytes"] == 0 and report["spill_loads_bytes"] == 0, report["log"]


def test_ptx_check_catches_contraction(nvrtc):
    """NVRTC's default (--fmad=true) contracts the kernel's a * b + c: the check sees it."""
    default = tuple(o for o in gpukernel.NVRTC_OPTIONS if not o.startswith("--fmad"))
    found = gpukernel.ptx_violations(gpukernel.compile_ptx(options=default))
    assert found and all(v.startswith("fma: fma.rn.f64") for v in found)


def test_ptx_check_sees_each_forbidden_instruction():
    ptx = "\n".join(["\tfma.rn.f64 \t%fd1, %fd2, %fd3, %fd4;",
                     "\t@%p1 fma.rn.f32 \t%f1, %f2, %f3, %f4;",
                     "\tsqrt.approx.f32 \t%f5, %f6;",
                     "\tcall.uni (retval0), __nv_log, (param0);",
                     "\tadd.rn.f64 \t%fd5, %fd6, %fd7; // fma in a comment",
                     "\tmul.rn.f64 \t%fd8, %fd9, %fd10;"])
    assert [v.split(":")[0] for v in gpukernel.ptx_violations(ptx)] == \
        ["fma", "fma", ".approx", "call"]


# ------------------------------------------------------------------ the GPU path on the CPU

def test_device_path_reproduces_the_golden_runs(tmp_path, monkeypatch):
    """generate() with every shard on the device path (HostDevice stands in for the GPU)."""
    import distgen.pipeline as pipeline

    golden = _golden_module()
    pinned = json.loads(golden.GOLDEN_FILE.read_text())["runs"]
    devices = []

    def host_device(backend_name, source, options):
        devices.append(HostDevice())
        return devices[-1]

    monkeypatch.setattr(pipeline, "make_device", host_device)
    for name in golden.RUNS:
        got = golden.generate_run(name, tmp_path / name)
        assert got["workload"] == pinned[name]["workload"], name
        assert got["series_sha256"] == pinned[name]["series_sha256"], name
    assert len(devices) == 4  # two shards per run went through the device path


def _golden_plan(name: str, extra=()):
    """Plan, library and routed replay requests of a golden run, writing servers at 1 s and
    deployments at 0.25 s as well."""
    golden = _golden_module()
    overrides = [*extra, "output.servers_resolution_s=1", "output.deployments_resolution_s=0.25"]
    if name == "replay":
        overrides.append(f"traffic.replay.path={golden.TRACE}")
    library = ModelLibrary.load()
    plan = plan_run(load_config(GOLDEN / f"{name}.yaml", overrides), library)
    replay = None
    if name == "replay":
        from distgen.pipeline import ReplayRequests
        replay = ReplayRequests.build(plan, library)
    return plan, library, replay


@pytest.mark.parametrize("name", ["synthetic", "replay"])
def test_device_path_shard_files_match_cpu_path(name, tmp_path):
    """Every level the config writes (rows, racks, servers, deployments) and the shard summary,
    for each shard, with chunks shorter than the coarsest block (partial blocks carried)."""
    plan, library, replay = _golden_plan(name, ["chunk_s=17"])
    for shard in plan.shards:
        cpu, dev = tmp_path / f"cpu{shard.index}", tmp_path / f"dev{shard.index}"
        a = run_shard(plan, shard, library, cpu, replay_requests=replay)
        b = run_shard(plan, shard, library, dev, replay_requests=replay, device=HostDevice())
        assert a.workload == b.workload and a.by_config == b.by_config
        files = sorted(p.name for p in cpu.glob("*.npy"))
        assert {f.split(".")[1] for f in files} == \
            {"deployments_1", "servers_4", "racks_240", "rows_1", "rows_4"}
        assert files == sorted(p.name for p in dev.glob("*.npy"))
        for f in files:
            np.testing.assert_array_equal(np.load(dev / f), np.load(cpu / f), err_msg=f)


def test_memory_check_names_shards_before_allocating(tmp_path):
    cfg = load_config(GOLDEN / "synthetic.yaml", [])
    library = ModelLibrary.load()
    plan = plan_run(cfg, library)
    shard = plan.shards[0]
    n_dep = plan.topology.fleet(shard.rack_start, shard.rack_stop).n_deployments
    per_dep = bytes_per_deployment(256, 2048)
    with pytest.raises(ConfigError, match=rf"config key 'shards': a shard of {n_dep} deployments "
                                          r"needs .* of GPU memory .*times as many shards"):
        run_shard(plan, shard, library, tmp_path / "p", device=HostDevice(n_dep * per_dep // 2))
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").glob("*.npy"))


def test_state_size_per_deployment():
    """Hand count for 256 sequences and 2048 queue slots: fin, ctx 2 x 256 x 8 B; three int32
    prefill arrays 3 x 256 x 4 B; wait_t 2048 x 8 B; three int32 queue arrays 3 x 2048 x 4 B;
    ten scalars 60 B (ServingState); carried state 8 x 8 + the shares 8 x 8 B - 8 B counted in
    the 8 fields; keys 28 B; inputs 8 + 2 x 4 B; statistics 6 x 8 B."""
    serving = 2 * 256 * 8 + 3 * 256 * 4 + 2048 * 8 + 3 * 2048 * 4 + 60
    assert bytes_per_deployment(256, 2048) == serving + 8 * 15 + 28 + 16 + 48


# ------------------------------------------------------------------ backend selection

def test_backend_cupy_without_a_device_is_a_named_error(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", lambda: None)
    assert backend.resolve_backend("auto") == "numpy"
    assert backend.resolve_backend("numpy") == "numpy"
    with pytest.raises(ConfigError, match=r"config key 'backend': 'cupy' needs CuPy and a CUDA "
                                          r"device \(cupy not installed\).*\[gpu\]"):
        backend.resolve_backend("cupy")
    # shards given GPUs by Ray check their own device
    assert backend.resolve_backend("cupy", remote_gpus=True) == "cupy"
    with pytest.raises(ConfigError, match="ray.num_gpus_per_task"):
        backend.CupyDevice("", ())
    with pytest.raises(ConfigError, match="must be one of"):
        backend.resolve_backend("tpu")


def test_plan_accepts_cupy_when_ray_tasks_get_gpus(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", lambda: None)
    library = ModelLibrary.load()
    with pytest.raises(ConfigError, match="'backend'"):
        plan_run(load_config(GOLDEN / "synthetic.yaml", ["backend=cupy"]), library)
    plan = plan_run(load_config(GOLDEN / "synthetic.yaml",
                                ["backend=cupy", "ray.num_gpus_per_task=1"]), library)
    assert plan.config.backend == "cupy"


def test_ray_gets_num_gpus_in_task_options():
    """num_gpus goes to .options() (not @ray.remote, whose max_calls=1 default would start a
    process and a CUDA context per task)."""
    from distgen.config.schema import RayConfig
    from distgen.distributed.executor import RayExecutor

    opts = RayExecutor(RayConfig(num_gpus_per_task=1.0))._options()
    assert opts["num_gpus"] == 1.0


# ------------------------------------------------------------------ on a GPU

def _has_gpu() -> bool:
    return backend.device_count() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason=f"needs a CUDA device ({backend.gpu_status()})")
@pytest.mark.parametrize("name", ["synthetic", "replay"])
def test_gpu_shard_files_match_cpu_path(name, tmp_path):
    plan, library, replay = _golden_plan(name)
    device = backend.make_device("cupy", gpukernel.SOURCE.read_text(), gpukernel.NVRTC_OPTIONS)
    for shard in plan.shards:
        cpu, gpu = tmp_path / f"cpu{shard.index}", tmp_path / f"gpu{shard.index}"
        a = run_shard(plan, shard, library, cpu, replay_requests=replay)
        b = run_shard(plan, shard, library, gpu, replay_requests=replay, device=device)
        assert a.workload == b.workload
        for f in sorted(p.name for p in cpu.glob("*.npy")):
            np.testing.assert_array_equal(np.load(gpu / f), np.load(cpu / f), err_msg=f)
