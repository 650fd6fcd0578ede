"""Compile-once kernels: Numba's on-disk cache, keyed by every source file a kernel inlines.

Numba invalidates a cached function only when the function's own file changes, not when an
inlined helper from another module does, so a stale kernel could survive an edit of the serving
model. Kernels decorated here cache into a folder named after a fingerprint of all their source
files (and the Numba and distgen versions); any change gives a fresh folder. Without a writable
cache location they are simply compiled in each process (a few seconds).

``DISTGEN_NUMBA_CACHE`` sets the cache root (default ``~/.cache/distgen/numba``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numba
import numba.core.config as numba_config

import distgen


def _cache_root() -> Path:
    env = os.environ.get("DISTGEN_NUMBA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distgen" / "numba"


def fingerprint(paths) -> str:
    digest = hashlib.sha256(f"{numba.__version__}|{distgen.__version__}".encode())
    for path in sorted(str(p) for p in paths):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def cached_njit(*modules: str):
    """``numba.njit(cache=True)`` keyed by the source of the decorated function's module and of
    ``modules`` (dotted names of modules whose functions it inlines).

    Kernels compile without Numba's reference-counting runtime (``_nrt=False``): they allocate
    nothing, and with the runtime every array of a record passed to an inlined step function
    is reference-counted on every call (two atomic operations per array per step: 100 ns of a
    serving step's 105 ns), and with NumPy's error model (a float division by zero gives
    inf or nan instead of raising: the kernels guard their divisions, and Python's model puts
    a check and an exception path on every one).
    """

    def decorate(fn):
        files = ([__file__, sys.modules[fn.__module__].__file__]
                 + [sys.modules[m].__file__ for m in modules])
        cache_dir = _cache_root() / fingerprint(files)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            probe = cache_dir / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError:
            return numba.njit(_nrt=False, error_model="numpy")(fn)
        previous = numba_config.CACHE_DIR
        numba_config.CACHE_DIR = str(cache_dir)  # read when the dispatcher sets up its cache
        try:
            return numba.njit(cache=True, _nrt=False, error_model="numpy")(fn)
        finally:
            numba_config.CACHE_DIR = previous

    return decorate
