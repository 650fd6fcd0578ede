"""Array backends: the one place that imports cupy.

``numpy`` runs the fleet kernel on the CPU (NumPy arrays, the compiled per-deployment loop of
:mod:`distgen.engine.kernel`). ``cupy`` runs the same loop on a CUDA GPU, one thread per
deployment, compiled by NVRTC from ``distgen/engine/fleet_kernel.cu`` without fused
multiply-adds, so both give the same bits (:mod:`distgen.engine.gpukernel`). ``auto`` picks
``cupy`` when CuPy sees a CUDA device, else ``numpy``.

:class:`CupyDevice` is what the GPU path needs from CuPy and nothing more: arrays in device
memory from a pool with a per-process limit, copies to and from the host, the compiled module
and its launch. It knows nothing of distgen's records; the engine hands it the source, the
options and a parameter block. Everything imports without CuPy; CuPy is imported when a GPU is
asked for.
"""

from __future__ import annotations

import os

import numpy as np

from distgen.errors import ConfigError, DistgenError

#: Default share of the device's memory the pool may use (``DISTGEN_GPU_MEMORY_FRACTION``).
DEFAULT_MEMORY_FRACTION = 0.9


def _cupy():
    try:
        import cupy  # the one permitted import
    except ImportError:
        return None
    return cupy


def device_count() -> int:
    """CUDA devices CuPy sees (0 without CuPy, a driver or a device)."""
    cupy = _cupy()
    if cupy is None:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver / no device / CUDA_VISIBLE_DEVICES empty (a Ray task without GPU)
        return 0


def gpu_status() -> str:
    """One line on whether CuPy and a CUDA device are present (for messages and manifests)."""
    cupy = _cupy()
    if cupy is None:
        return "cupy not installed"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver / no device
        return f"cupy installed, no CUDA device ({type(exc).__name__})"
    return f"cupy installed, {n} CUDA device(s)"


def resolve_backend(name: str, *, remote_gpus: bool = False) -> str:
    """The backend a run uses for ``backend = name``: ``numpy`` or ``cupy``.

    ``remote_gpus``: the shards run as tasks that are given GPUs (``ray.num_gpus_per_task >
    0``), so ``cupy`` is not refused for want of a device here; each task checks its own.
    """
    if name == "numpy":
        return "numpy"
    if name == "auto":
        return "cupy" if device_count() > 0 else "numpy"
    if name == "cupy":
        if remote_gpus or device_count() > 0:
            return "cupy"
        raise ConfigError("backend", f"'cupy' needs CuPy and a CUDA device ({gpu_status()}): "
                          "install the GPU extra (pip install -e \".[gpu]\") on a machine with "
                          "a GPU, give Ray tasks one with ray.num_gpus_per_task, or use "
                          "'numpy' or 'auto'")
    raise ConfigError("backend", f"must be one of 'numpy', 'cupy', 'auto'; got {name!r}")


class CupyDevice:
    """One CUDA device through CuPy (the current one, e.g. the GPU Ray gave the task).

    Parameters
    ----------
    source : CUDA C++ source of the module to launch from.
    options : NVRTC options (the target architecture is added by CuPy).
    memory_fraction : share of the device's memory the memory pool may hold (default
        ``$DISTGEN_GPU_MEMORY_FRACTION`` or :data:`DEFAULT_MEMORY_FRACTION`); allocations past
        it fail instead of starving other processes on the device.
    """

    name = "cupy"
    # A GPU shard fills the chip with 10^5-10^6 deployments (threads in flight), about 1000x
    # a CPU shard; its state takes about 45 KB per deployment (gpukernel.bytes_per_deployment).
    #: elements of one chunk's (servers x steps) int64 buffer: long launches (a chunk of a
    #: 10^6-deployment shard is about 1000 steps, 1 GiB)
    chunk_elements = 1 << 27

    def __init__(self, source: str, options: tuple[str, ...], *,
                 memory_fraction: float | None = None):
        cupy = _cupy()
        if cupy is None or device_count() == 0:
            raise ConfigError("backend", f"'cupy' needs a CUDA device in this process "
                              f"({gpu_status()}); in a Ray task, set ray.num_gpus_per_task "
                              "(e.g. 1)")
        self.xp = cupy
        if memory_fraction is None:
            memory_fraction = float(os.environ.get("DISTGEN_GPU_MEMORY_FRACTION",
                                                   DEFAULT_MEMORY_FRACTION))
        self.pool = cupy.get_default_memory_pool()
        self.pool.set_limit(fraction=memory_fraction)
        self.module = cupy.RawModule(code=source, options=tuple(options), backend="nvrtc")
        self._functions: dict = {}
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self.description = (f"{props['name'].decode()} "
                            f"({props['totalGlobalMem'] / 2**30:.0f} GiB, "
                            f"sm_{props['major']}{props['minor']})")

    # arrays ----------------------------------------------------------------------------------
    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype)

    def full(self, shape, value, dtype):
        return self.xp.full(shape, value, dtype)

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    @staticmethod
    def address(a) -> int:
        return int(a.data.ptr)

    def available_bytes(self) -> int:
        """Bytes this process may still allocate: the pool's limit less what it holds in use,
        and no more than the device has free (plus the pool's cached blocks)."""
        free, _total = self.xp.cuda.runtime.memGetInfo()
        room = free + self.pool.free_bytes()
        limit = self.pool.get_limit()
        if limit:
            room = min(room, limit - self.pool.used_bytes())
        return int(room)

    # launch ----------------------------------------------------------------------------------
    def launch(self, entry: str, n_threads: int, params: bytes, threads_per_block: int) -> None:
        """Run ``entry(const Params *)`` on ``n_threads`` threads with the parameter block
        ``params`` copied to the device (asynchronous, on the current stream)."""
        if n_threads <= 0:
            return
        fn = self._functions.get(entry)
        if fn is None:
            fn = self._functions[entry] = self.module.get_function(entry)
        block = self.xp.asarray(np.frombuffer(params, np.uint8))
        blocks = (n_threads + threads_per_block - 1) // threads_per_block
        fn((blocks,), (threads_per_block,), (block,))

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def kernel_attributes(self, entry: str) -> dict:
        """Registers, local (spill) memory and the like of a compiled entry point."""
        fn = self.module.get_function(entry)
        return dict(fn.attributes)


_devices: dict = {}


def make_device(backend: str, source: str, options: tuple[str, ...]):
    """A :class:`CupyDevice` for ``backend == 'cupy'`` (resolved), else None (the CPU path).
    One per process and source: a Ray worker that runs several shards compiles once."""
    if backend == "numpy":
        return None
    if backend != "cupy":
        raise DistgenError(f"unknown resolved backend {backend!r}")
    key = (source, tuple(options))
    if key not in _devices:
        _devices[key] = CupyDevice(source, options)
    return _devices[key]
