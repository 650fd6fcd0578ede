"""Array backends: the one place that may import cupy.

``numpy`` runs the fleet kernel on the CPU: NumPy arrays, the per-deployment loop compiled with
Numba (see :mod:`distgen.engine.kernel`). ``cupy`` is reserved for the GPU kernel (one CUDA
thread per deployment running the same loop, with the same counter-based random numbers);
until it exists, asking for it is an error rather than a silent CPU run, and ``auto`` picks
``numpy``.
"""

from __future__ import annotations

from distgen.errors import ConfigError


def gpu_status() -> str:
    """One line on whether CuPy and a CUDA device are present (for messages and manifests)."""
    try:
        import cupy  # noqa: F401  (the one permitted import)
    except ImportError:
        return "cupy not installed"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver / no device
        return f"cupy installed, no CUDA device ({type(exc).__name__})"
    return f"cupy installed, {n} CUDA device(s)"


def resolve_backend(name: str) -> str:
    """The backend a run uses for ``backend = name``."""
    if name in ("numpy", "auto"):
        return "numpy"
    if name == "cupy":
        raise ConfigError("backend", "'cupy' (the GPU fleet kernel) is not available in this "
                          f"version of distgen ({gpu_status()}); use 'numpy' or 'auto', which "
                          "run the compiled CPU kernel")
    raise ConfigError("backend", f"must be one of 'numpy', 'cupy', 'auto'; got {name!r}")

