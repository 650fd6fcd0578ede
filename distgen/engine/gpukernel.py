"""The fleet kernel on a GPU: the NVRTC build of ``fleet_kernel.cu`` and the device-side batch.

The GPU runs the same source as the host build (:mod:`distgen.engine.hostkernel`), one thread
per deployment, compiled by NVRTC with :data:`NVRTC_OPTIONS`: no fused multiply-add
(``--fmad=false``; NVRTC contracts ``a * b + c`` by default, and with contraction 2-3 % of the
milliwatt samples differ), IEEE division and square root, no flush to zero. With those, and no
math-library transcendental in the source, the GPU gives the CPU kernel's bits.
:func:`compile_ptx` runs NVRTC through ctypes (the ``nvidia-cuda-nvrtc-cu12`` wheel, no GPU or
driver needed) so the generated code can be checked anywhere: :func:`ptx_violations` lists
every ``fma``, ``.approx`` or ``call`` instruction in it.

:class:`DeviceDeploymentBatch` keeps a batch's carried state in device memory and advances it
chunk by chunk through a *device*: :class:`distgen.backend.CupyDevice` on a GPU, or
:class:`HostDevice`, which runs the host build on NumPy arrays through the same steps (the
stand-in that lets the GPU path be tested without a GPU). This module never imports CuPy.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from distgen.core.grid import INTERVAL_S
from distgen.core.rng import KIND_DEPLOYMENT, KIND_REQUEST, NORMAL_TABLE, entity_key
from distgen.engine import hostkernel
from distgen.engine.kernel_abi import DgFleet, fleet_params
from distgen.engine.records import (MODE_REPLAY, MODE_SYNTHETIC, N_STATS, CarriedState, Chunk,
                                    Deployments, ModelTables, Outputs, ReplayInputs,
                                    SyntheticInputs)
from distgen.errors import ConfigError, DistgenError
from distgen.workload.serving import ServingState

SOURCE = hostkernel.SOURCE
#: NVRTC options of the GPU build (CuPy adds the target architecture).
NVRTC_OPTIONS = ("--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")
#: The kernel's entry point in fleet_kernel.cu (one thread per deployment).
DEVICE_ENTRY = "dg_fleet_device"
THREADS_PER_BLOCK = 128


# ------------------------------------------------------------------ NVRTC without a GPU

def nvrtc_library_path() -> Path | None:
    """NVRTC of an ``nvidia-cuda-nvrtc`` wheel (``nvidia/cuda_nvrtc/lib/libnvrtc.so.12`` for
    CUDA 12, ``nvidia/cu13/lib/libnvrtc.so.13`` for CUDA 13), if one is installed."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return None
    found = []
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found += [p for p in Path(folder).glob("*/lib/libnvrtc.so.1*")
                  if re.fullmatch(r"libnvrtc\.so\.\d+", p.name)]
    return max(found, key=lambda p: int(p.name.rsplit(".", 1)[1])) if found else None


@lru_cache(maxsize=1)
def _nvrtc() -> ctypes.CDLL:
    path = nvrtc_library_path()
    if path is None:
        raise DistgenError("NVRTC not found: install the nvidia-cuda-nvrtc-cu12 wheel "
                           "(pip install -e \".[gpu]\" or \".[test]\")")
    lib = ctypes.CDLL(str(path))
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def nvrtc_version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def compile_ptx(options: tuple[str, ...] = NVRTC_OPTIONS, arch: str = "compute_90",
                source: str | None = None) -> str:
    """PTX of ``fleet_kernel.cu`` (or ``source``) compiled by NVRTC with ``options`` for
    ``arch``; a :class:`DistgenError` with NVRTC's log when it does not compile."""
    return _compile(options, arch, source)[0]


def register_report(arch: str = "sm_90", options: tuple[str, ...] = NVRTC_OPTIONS) -> dict:
    """Registers per thread, spill stores/loads [bytes] and stack frame [bytes] of the device
    entry as ptxas (inside NVRTC) reports them for a real architecture ``arch``."""
    _, log = _compile((*options, "--ptxas-options=-v"), arch, None)
    out = {"arch": arch, "log": log}
    for key, pattern in (("registers", r"Used (\d+) registers"),
                         ("spill_stores_bytes", r"(\d+) bytes spill stores"),
                         ("spill_loads_bytes", r"(\d+) bytes spill loads"),
                         ("stack_frame_bytes", r"(\d+) bytes stack frame")):
        found = re.search(pattern, log)
        out[key] = int(found.group(1)) if found else None
    return out


def _compile(options, arch, source) -> tuple[str, str]:
    """(PTX, NVRTC's log)."""
    lib = _nvrtc()
    text = (SOURCE.read_text() if source is None else source).encode()
    prog = ctypes.c_void_p()

    def check(status: int, what: str) -> None:
        if status != 0:
            log = ""
            size = ctypes.c_size_t()
            if prog.value and lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)) == 0:
                buf = ctypes.create_string_buffer(size.value)
                lib.nvrtcGetProgramLog(prog, buf)
                log = buf.value.decode(errors="replace").strip()
            raise DistgenError(f"NVRTC {what} failed: "
                               f"{lib.nvrtcGetErrorString(status).decode()}\n{log}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), text, SOURCE.name.encode(), 0, None,
                                 None), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in (*options, f"--gpu-architecture={arch}")]
        argv = (ctypes.c_char_p * len(opts))(*opts)
        check(lib.nvrtcCompileProgram(prog, len(opts), argv), "compilation")
        size = ctypes.c_size_t()
        check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        return buf.value.decode(), log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


_FORBIDDEN = (("fma", re.compile(r"^\s*(@!?%\w+\s+)?fma\.")),
              (".approx", re.compile(r"\.approx\b")),
              ("call", re.compile(r"^\s*(@!?%\w+\s+)?call(\.uni)?\b")))


def ptx_violations(ptx: str) -> list[str]:
    """PTX instruction lines that would break bit-identity with the CPU: fused multiply-adds
    (``fma.*``), approximate arithmetic (``*.approx*``) and calls (into a math library).
    Comments are ignored."""
    found = []
    for line in ptx.splitlines():
        code = line.split("//", 1)[0]
        for name, pattern in _FORBIDDEN:
            if pattern.search(code):
                found.append(f"{name}: {code.strip()}")
    return found


# ------------------------------------------------------------------ devices

class HostDevice:
    """The GPU path on the CPU: NumPy arrays, and a launch runs the host build of the same
    source over the threads' deployments. It takes every step the GPU path takes (device state,
    parameter block, on-device reductions and block sums, copies back), so those steps are
    tested without a GPU; a real GPU differs only in where the arrays live.

    ``memory_bytes`` stands for the device's free memory (default: unlimited).
    """

    name = "host"
    xp = np
    chunk_elements = 1 << 22
    description = "host build of fleet_kernel.cu (CPU stand-in for a GPU)"

    def __init__(self, memory_bytes: int | None = None):
        self.memory_bytes = memory_bytes

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype)

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    @staticmethod
    def address(a) -> int:
        return int(a.ctypes.data)

    def available_bytes(self) -> int:
        return (1 << 62) if self.memory_bytes is None else int(self.memory_bytes)

    def launch(self, entry: str, n_threads: int, params: bytes, threads_per_block: int) -> None:
        if entry != DEVICE_ENTRY:
            raise ValueError(f"HostDevice runs {DEVICE_ENTRY} only, not {entry}")
        block = DgFleet.from_buffer_copy(params)
        hostkernel.load().dg_fleet_host(ctypes.byref(block), 0, int(n_threads))

    def synchronize(self) -> None:
        pass


# ------------------------------------------------------------------ device-side batch

class ServingCounts(NamedTuple):
    """Host copies of the serving counters a shard summary reads (see ServingState)."""

    dropped: np.ndarray
    wait_n: np.ndarray


def bytes_per_deployment(seq_capacity: int, queue_capacity: int, n_intervals: int = 2) -> int:
    """Device memory one deployment's state, keys and per-chunk inputs take [bytes] (the
    serving queues dominate: about 37 KB with 256 sequences and 2048 queue slots)."""
    serving = sum(a.nbytes for a in ServingState.empty(1, seq_capacity, queue_capacity))
    carried = 8 * (1 + 1 + 1 + 8 + 1 + 1 + 1 + 1)   # state .. replay_ptr
    keys = 8 + 8 + 4 + 8                              # Deployments
    inputs = 8 + 4 * n_intervals                      # base_rps, rate_mult
    return serving + carried + keys + inputs + 8 * N_STATS


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.3g} MiB"


class DeviceDeploymentBatch:
    """:class:`~distgen.engine.deployments.DeploymentBatch` with its state in device memory.

    The same constructor arguments plus ``device`` (:class:`distgen.backend.CupyDevice` or
    :class:`HostDevice`); :meth:`advance` takes device arrays for ``target_mw`` and
    ``deployment_mw`` and host arrivals (rate multipliers and replayed requests are copied to
    the device). ``reserve_bytes`` is device memory the caller will need beside the state
    (its chunk buffers): the memory check before anything is allocated counts it.
    """

    def __init__(self, models, model_index, deployment_uid, target_index, seed: int, *,
                 device, queue_capacity: int = 2048, interval_s: float = INTERVAL_S,
                 reserve_bytes: int = 0):
        uid = np.asarray(deployment_uid, np.int64)
        n = int(uid.shape[0])
        self.device = device
        self.models = models
        self.interval_s = float(interval_s)
        seq_cap = models.seq_capacity()
        per_dep = bytes_per_deployment(seq_cap, queue_capacity)
        tables = sum(a.nbytes for a in models.tables if isinstance(a, np.ndarray))
        need = n * per_dep + tables + NORMAL_TABLE.nbytes + int(reserve_bytes)
        have = device.available_bytes()
        if need > have:
            raise ConfigError("shards", f"a shard of {n:,} deployments needs "
                              f"{_size(need)} of GPU memory ({per_dep / 1024:.1f} KiB of state "
                              f"per deployment plus chunk buffers), {_size(have)} are "
                              f"available on {device.description}: use at least "
                              f"{-(-need // max(have, 1))} times as many shards")
        self.deployments = Deployments(
            state_key=entity_key(seed, KIND_DEPLOYMENT, uid),
            request_key=entity_key(seed, KIND_REQUEST, uid),
            model=np.asarray(model_index, np.int32),
            target=np.asarray(target_index, np.int64))
        up = device.asarray
        self._deps = Deployments(*(up(a) for a in self.deployments))
        self._tables = ModelTables(*(up(a) if isinstance(a, np.ndarray) else a
                                     for a in models.tables))
        self._normal = up(NORMAL_TABLE)
        template = ServingState.empty(1, seq_cap, queue_capacity)
        serving = ServingState(*(device.zeros((n, *a.shape[1:]), a.dtype) for a in template))
        self.state = CarriedState(
            serving=serving, state=device.full(n, -1, np.int64),
            latent_z=device.zeros(n, np.float64), over_limit_j=device.zeros(n, np.float64),
            shares_prev=device.zeros((n, 2, 4), np.float64),
            op_time=device.zeros(n, np.float64), next_arrival=device.full(n, -1.0, np.float64),
            n_arrived=device.zeros(n, np.int64), replay_ptr=device.zeros(n, np.int64))
        self.device_stats = device.zeros((n, N_STATS), np.float64)
        self._replay_started = False
        self._replay_key = None
        self._replay_dev = None
        self._no_synthetic = SyntheticInputs(up(np.zeros(n)), up(np.zeros((n, 1), np.float32)),
                                             0, 1, 0, up(np.zeros(0)), 0, 0, 0.0)
        empty_i32 = up(np.zeros(1, np.int32))
        self._no_replay = ReplayInputs(up(np.zeros(n + 1, np.int64)), up(np.zeros(1)),
                                       empty_i32, empty_i32, empty_i32)
        self._no_deployments = device.zeros((0, 0), np.int32)

    @property
    def n_deployments(self) -> int:
        return int(self.deployments.state_key.shape[0])

    @property
    def stats(self) -> np.ndarray:
        """Host copy of the accumulated statistics (Outputs.stats columns)."""
        return self.device.to_host(self.device_stats)

    @property
    def serving_state(self) -> ServingCounts:
        sv = self.state.serving
        return ServingCounts(self.device.to_host(sv.dropped), self.device.to_host(sv.wait_n))

    def _replay_inputs(self, replay) -> ReplayInputs:
        key = id(replay)
        if self._replay_key != key:  # copied to the device once per request set
            up = self.device.asarray
            self._replay_dev = ReplayInputs(up(replay.offsets, np.int64),
                                            up(replay.arrival_s, np.float64),
                                            up(replay.input_tokens, np.int32),
                                            up(replay.cached_tokens, np.int32),
                                            up(replay.output_tokens, np.int32))
            self._replay_key = key
        return self._replay_dev

    def advance(self, step0: int, n_steps: int, target_mw, *, synthetic=None, replay=None,
                deployment_mw=None, count_from_step: int = 0) -> None:
        """As DeploymentBatch.advance, on the device (``target_mw``, ``deployment_mw``: device
        arrays). Asynchronous on a GPU: the results are there for the next device operation.
        """
        if (synthetic is None) == (replay is None):
            raise ValueError("give exactly one of synthetic or replay arrivals")
        up = self.device.asarray
        syn, rep = self._no_synthetic, self._no_replay
        if synthetic is not None:
            mode = MODE_SYNTHETIC
            syn = SyntheticInputs(up(synthetic.base_rps, np.float64),
                                  up(np.ascontiguousarray(synthetic.rate_mult, np.float32)),
                                  int(synthetic.rate_k0), int(synthetic.steps_per_interval),
                                  int(synthetic.step_offset),
                                  up(synthetic.gamma_q, np.float64),
                                  int(synthetic.input_tokens), int(synthetic.output_tokens),
                                  float(synthetic.cached_share))
        else:
            mode = MODE_REPLAY
            rep = self._replay_inputs(replay)
            if not self._replay_started:  # each deployment reads its own CSR row
                self.state.replay_ptr[:] = rep.offsets[:-1]
                self._replay_started = True
        if deployment_mw is None:
            deployment_mw = self._no_deployments
        chunk = Chunk(int(step0), int(n_steps), self.interval_s, mode, int(count_from_step))
        params, keep = fleet_params(chunk, self._deps, self._tables, syn, rep, self.state,
                                    Outputs(target_mw, deployment_mw, self.device_stats),
                                    address=self.device.address, xp=self.device.xp,
                                    normal_table=self._normal)
        self.device.launch(DEVICE_ENTRY, self.n_deployments, bytes(params), THREADS_PER_BLOCK)
        del keep  # stream-ordered: memory freed after the launch is reused only after it
