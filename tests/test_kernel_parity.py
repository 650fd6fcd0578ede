"""The C build of the GPU kernel's source (engine/fleet_kernel.cu) against the Numba kernel.

Reference: the Numba kernel (engine/kernel.py), which produced the golden outputs. The C host
build must give the same bits in every array the kernel writes (site-level target sums,
per-deployment milliwatts, statistics) and in every carried-state array after two chunks, for
Poisson, gamma and replayed arrivals (with cached prompt tokens and drops), loads 0 .. 4 req/s
and two models packed together; and it must reproduce the golden runs' pinned hashes
(tests/golden/golden.json). Also: how the host build is found, built and cached.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from distgen.engine import hostkernel
from distgen.engine.deployments import (DeploymentBatch, PackedModels, ReplayArrivals,
                                        SyntheticArrivals, gamma_gap_quantiles)
from distgen.engine.kernel import fleet_kernel
from distgen.engine.kernel_abi import DgFleet
from distgen.errors import DistgenError
from distgen.model.artifact import ModelLibrary

MODELS = ("qwen3-8b_A100_tp1", "gemma-4-26b-a4b-it_A100_tp2")
N_DEP = 48
STEPS = 320          # per chunk; two chunks
WARMUP = 40          # statistics count from this step on
SPI = 16             # rate modulation interval [steps]


@pytest.fixture(scope="module")
def packed() -> PackedModels:
    library = ModelLibrary.load()
    return PackedModels.pack([library[c] for c in MODELS])


def _batch(packed, kernel, queue_capacity=2048):
    # two models interleaved, four deployments per target row, uids spread out
    return DeploymentBatch(packed, np.arange(N_DEP) % 2, 5 + 7 * np.arange(N_DEP),
                           np.arange(N_DEP) // 4, seed=20260718, kernel=kernel,
                           queue_capacity=queue_capacity)


def _synthetic(rps, burstiness=1.0, **kw):
    rng = np.random.default_rng(3)
    n_int = 2 * STEPS // SPI + 2
    mult = (0.5 + rng.random((N_DEP, n_int))).astype(np.float32)  # modulation 0.5 .. 1.5
    return lambda step0: SyntheticArrivals(
        np.full(N_DEP, rps), mult[:, step0 // SPI:], step0 // SPI, SPI,
        gamma_gap_quantiles(burstiness), **kw)


def _replay(rps=2.0, max_prompt=6000):
    """Per deployment: a Poisson stream of ``rps`` over both chunks, with cached tokens, some
    requests arriving before the first step and some at the same time."""
    rng = np.random.default_rng(11)
    span_s = 2 * STEPS * 0.25
    counts = rng.poisson(rps * span_s, N_DEP)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    arrival = np.concatenate([np.sort(rng.uniform(-1.0, span_s, c)) for c in counts])
    arrival[offsets[1:-1]] = arrival[offsets[1:-1] + 1]  # ties
    n_in = rng.integers(1, max_prompt, offsets[-1]).astype(np.int32)
    cached = (n_in * rng.choice([0.0, 0.5, 1.0], offsets[-1])).astype(np.int32)
    n_out = rng.integers(1, 900, offsets[-1]).astype(np.int32)
    replay = ReplayArrivals(offsets, arrival, n_in, cached, n_out)
    return lambda step0: replay


def _run(packed, kernel, arrivals, *, replay=False, queue_capacity=2048):
    batch = _batch(packed, kernel, queue_capacity)
    written = []
    for c in range(2):
        target = np.zeros((N_DEP // 4, STEPS), np.int64)
        deployment = np.zeros((N_DEP, STEPS), np.int32)
        key = "replay" if replay else "synthetic"
        batch.advance(c * STEPS, STEPS, target, deployment_mw=deployment,
                      count_from_step=WARMUP, **{key: arrivals(c * STEPS)})
        written += [target, deployment]
    return batch, written


def _state_arrays(batch) -> dict[str, np.ndarray]:
    out = {f"serving.{k}": v for k, v in batch.state.serving._asdict().items()}
    out.update({k: v for k, v in batch.state._asdict().items() if k != "serving"})
    out["stats"] = batch.stats
    return out


CASES = {
    "poisson-0rps": (_synthetic(0.0), False, 2048),
    "poisson-0.25rps": (_synthetic(0.25), False, 2048),
    "poisson-1rps": (_synthetic(1.0), False, 2048),
    "poisson-4rps": (_synthetic(4.0), False, 2048),
    "gamma-0.3-1rps": (_synthetic(1.0, 0.3), False, 2048),
    "gamma-4-2rps": (_synthetic(2.0, 4.0), False, 2048),
    "fixed-tokens-cached-2rps": (_synthetic(2.0, input_tokens=3000, output_tokens=200,
                                            cached_share=0.4), False, 2048),
    "overload-drops-4rps": (_synthetic(4.0, input_tokens=8000, output_tokens=2000), False, 24),
    "replay-cached": (_replay(), True, 2048),
    "replay-drops": (_replay(8.0, 30000), True, 8),
}


@pytest.mark.parametrize("case", CASES)
def test_host_build_matches_numba_kernel_bit_for_bit(packed, case):
    arrivals, replay, cap = CASES[case]
    ref, ref_out = _run(packed, fleet_kernel, arrivals, replay=replay, queue_capacity=cap)
    got, got_out = _run(packed, hostkernel.host_fleet_kernel, arrivals, replay=replay,
                        queue_capacity=cap)
    for i, (a, b) in enumerate(zip(ref_out, got_out)):
        what = ("target_mw", "deployment_mw")[i % 2] + f" chunk {i // 2}"
        np.testing.assert_array_equal(b, a, err_msg=what)
    ref_state, got_state = _state_arrays(ref), _state_arrays(got)
    for name, a in ref_state.items():
        b = got_state[name]
        assert b.dtype == a.dtype, name
        # bits, not values: -0.0 vs 0.0 or a NaN payload would also be a difference
        assert a.tobytes() == b.tobytes(), f"{name} differs after two chunks"


def test_parity_cases_exercise_what_they_name(packed):
    """The cases are not vacuous: requests arrive and are dropped where named, both models
    produce power, replayed requests are consumed, and the two chunks differ."""
    def run(case):
        arrivals, replay, cap = CASES[case]
        return _run(packed, fleet_kernel, arrivals, replay=replay, queue_capacity=cap)

    idle, idle_out = run("poisson-0rps")
    assert idle.stats[:, 0].sum() == 0
    busy, busy_out = run("poisson-4rps")
    assert busy.stats[:, 0].sum() > N_DEP * 4 * 0.25 * (2 * STEPS - WARMUP) * 0.5
    assert not np.array_equal(busy_out[1], idle_out[1])
    assert not np.array_equal(busy_out[1], busy_out[3])
    dep = busy_out[1]
    assert dep[0::2].mean() != dep[1::2].mean()  # the two models differ
    over, _ = run("overload-drops-4rps")
    assert over.state.serving.dropped.sum() > 0
    rep, _ = run("replay-drops")
    assert rep.state.serving.dropped.sum() > 0
    rep, _ = run("replay-cached")
    assert (rep.state.replay_ptr > np.r_[0, rep.state.replay_ptr[:-1]]).all()
    assert rep.state.serving.dropped.sum() == 0


def test_host_build_reproduces_the_golden_runs(tmp_path, monkeypatch):
    """The golden runs (tests/golden/golden.json, produced by the Numba kernel) generated with
    DISTGEN_CPU_KERNEL=c: the C build gives the pinned hashes."""
    here = Path(__file__).resolve().parent / "golden"
    spec = importlib.util.spec_from_file_location("golden_c", here / "golden.py")
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    pinned = json.loads(golden.GOLDEN_FILE.read_text())["runs"]
    monkeypatch.setenv("DISTGEN_CPU_KERNEL", "c")
    assert hostkernel.cpu_kernel() is hostkernel.host_fleet_kernel
    for name in golden.RUNS:
        got = golden.generate_run(name, tmp_path / name)
        assert got["workload"] == pinned[name]["workload"], name
        assert got["series_sha256"] == pinned[name]["series_sha256"], name


def test_cpu_kernel_selection(monkeypatch):
    monkeypatch.delenv("DISTGEN_CPU_KERNEL", raising=False)
    assert hostkernel.cpu_kernel() is fleet_kernel  # the default (hostkernel.DEFAULT_CPU_KERNEL)
    assert hostkernel.cpu_kernel("c") is hostkernel.host_fleet_kernel
    monkeypatch.setenv("DISTGEN_CPU_KERNEL", "c")
    packed = PackedModels.pack([ModelLibrary.load()[MODELS[0]]])
    assert DeploymentBatch(packed, [0], [0], [0], 1).kernel is hostkernel.host_fleet_kernel
    monkeypatch.setenv("DISTGEN_CPU_KERNEL", "fortran")
    with pytest.raises(DistgenError, match="DISTGEN_CPU_KERNEL.*'fortran'"):
        hostkernel.cpu_kernel()


def test_parameter_block_layout_matches_the_c_struct():
    assert hostkernel.load().dg_fleet_size() == ctypes.sizeof(DgFleet)


def test_no_compiler_is_a_named_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(DistgenError, match=r"no C compiler found .*CC environment variable"):
        hostkernel.find_compiler()
    monkeypatch.setenv("CC", "no-such-cc --quiet")
    with pytest.raises(DistgenError, match=r"CC environment variable \('no-such-cc --quiet'\)"):
        hostkernel.find_compiler()


def test_build_is_cached_by_source_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTGEN_KERNEL_CACHE", str(tmp_path / "cache"))
    first = hostkernel.build()
    assert first.parent == tmp_path / "cache" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert hostkernel.build() == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    edited = tmp_path / "fleet_kernel.cu"
    edited.write_text(hostkernel.SOURCE.read_text() + "\n/* an edit */\n")
    monkeypatch.setattr(hostkernel, "SOURCE", edited)
    second = hostkernel.build()
    assert second != first and second.exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_build_failure_names_the_compiler_and_its_message(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTGEN_KERNEL_CACHE", str(tmp_path))
    broken = tmp_path / "broken.cu"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(hostkernel, "SOURCE", broken)
    with pytest.raises(DistgenError, match="building the host fleet kernel with .* failed"):
        hostkernel.build()
    assert os.listdir(tmp_path) == ["broken.cu"]  # no half-written library left behind
