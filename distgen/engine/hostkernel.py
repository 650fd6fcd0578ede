"""The C fleet kernel built for this machine: compiled at first use, cached, called via ctypes.

``fleet_kernel.cu`` is the GPU kernel's source; the same file compiled by the system C compiler
is a CPU kernel that gives the Numba kernel's bits (``tests/test_kernel_parity.py``). It is
built the first time a process needs it, with ``-O2 -ffp-contract=off -fno-fast-math`` (no
fused multiply-add, no value-changing optimisation), into a shared library cached under a name
made of the hash of the source, the flags and the compiler's version, so an edit or another
compiler gives a new build and concurrent processes never see a half-written one.

* ``CC`` names the compiler (default: the first of ``cc``, ``gcc``, ``clang`` on the PATH);
* ``DISTGEN_KERNEL_CACHE`` sets the cache folder (default ``~/.cache/distgen/kernel``; a
  temporary folder when that is not writable).

Without a compiler, :func:`load` raises a :class:`~distgen.errors.DistgenError` saying so.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from distgen.engine.kernel_abi import DgFleet, fleet_params
from distgen.engine.records import (CarriedState, Chunk, Deployments, ModelTables, Outputs,
                                    ReplayInputs, SyntheticInputs)
from distgen.errors import DistgenError

SOURCE = Path(__file__).with_name("fleet_kernel.cu")
#: Value-safe flags: no contraction of a * b + c into a fused multiply-add, no fast math.
#: ``-fno-math-errno`` only lets sqrt compile to the instruction (same value).
CFLAGS = ("-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-fPIC", "-shared",
          "-x", "c")

_lock = threading.Lock()


def cache_dir() -> Path:
    """Where built kernels are kept (``DISTGEN_KERNEL_CACHE``, else ``~/.cache/distgen/kernel``).
    """
    env = os.environ.get("DISTGEN_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distgen" / "kernel"


def find_compiler() -> list[str]:
    """The C compiler command: ``$CC`` (may carry arguments), else cc / gcc / clang."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        cmd = shlex.split(cc)
        if shutil.which(cmd[0]) is None:
            raise DistgenError(f"the C compiler named by the CC environment variable ({cc!r}) "
                               "was not found; the host fleet kernel needs one")
        return cmd
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise DistgenError("no C compiler found (tried cc, gcc, clang on the PATH) to build the "
                       f"host fleet kernel from {SOURCE.name}; install gcc or clang, or name "
                       "one with the CC environment variable")


def _compiler_identity(cmd: list[str]) -> str:
    try:
        res = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise DistgenError(f"cannot run the C compiler {cmd[0]}: {exc}") from exc
    return (res.stdout or res.stderr).strip().splitlines()[0] if (res.stdout or res.stderr) \
        else cmd[0]


def build(directory: Path | None = None) -> Path:
    """Compile ``fleet_kernel.cu`` for this machine unless a build of this source, these flags
    and this compiler is cached; return the shared library's path."""
    cmd = find_compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(cmd).encode(), " ".join(CFLAGS).encode(),
                                     _compiler_identity(cmd).encode()])).hexdigest()[:16]
    for folder in ([directory] if directory else [cache_dir(), Path(tempfile.gettempdir())
                                                  / "distgen-kernel"]):
        lib = folder / f"fleet_kernel-{key}.so"
        if lib.exists():
            return lib
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{lib.name}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.touch()
        except OSError:
            continue
        res = subprocess.run([*cmd, *CFLAGS, "-o", str(tmp), str(SOURCE), "-lm"],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            tmp.unlink(missing_ok=True)
            tail = "\n".join(res.stderr.strip().splitlines()[-20:])
            raise DistgenError(f"building the host fleet kernel with {cmd[0]} failed "
                               f"(exit {res.returncode}):\n{tail}")
        os.replace(tmp, lib)  # atomic: another process sees the old name or the whole file
        return lib
    raise DistgenError(f"no writable folder for the host fleet kernel build (tried "
                       f"{cache_dir()} and the temporary folder); set DISTGEN_KERNEL_CACHE")


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    with _lock:
        lib = ctypes.CDLL(str(build()))
    lib.dg_fleet_host.argtypes = [ctypes.POINTER(DgFleet), ctypes.c_int64, ctypes.c_int64]
    lib.dg_fleet_host.restype = None
    lib.dg_fleet_size.argtypes = []
    lib.dg_fleet_size.restype = ctypes.c_int64
    if lib.dg_fleet_size() != ctypes.sizeof(DgFleet):
        raise DistgenError("the host fleet kernel's parameter block does not match "
                           "kernel_abi.FIELDS (sizeof(DgFleet) = "
                           f"{lib.dg_fleet_size()} vs {ctypes.sizeof(DgFleet)})")
    return lib


def load() -> ctypes.CDLL:
    """The built host kernel library (compiled on the first call in a process)."""
    return _library()


def _address(a: np.ndarray) -> int:
    return a.ctypes.data


def host_fleet_kernel(chunk: Chunk, deps: Deployments, models: ModelTables,
                      syn: SyntheticInputs, rep: ReplayInputs, state: CarriedState,
                      out: Outputs) -> None:
    """:func:`distgen.engine.kernel.fleet_kernel` run by the C build of ``fleet_kernel.cu``:
    the same records, the same effect, the same bits."""
    lib = load()
    params, keep = fleet_params(chunk, deps, models, syn, rep, state, out, address=_address)
    lib.dg_fleet_host(ctypes.byref(params), 0, int(params.n_deployments))
    del keep  # the arrays the parameters point into lived until here


#: CPU kernel implementations: the Numba kernel (engine/kernel.py) and the C build of the GPU
#: kernel's source; they give the same bits.
CPU_KERNELS = ("numba", "c")
DEFAULT_CPU_KERNEL = "numba"


def cpu_kernel(name: str | None = None):
    """The CPU fleet kernel ``name`` (default: ``$DISTGEN_CPU_KERNEL``, else
    :data:`DEFAULT_CPU_KERNEL`), a function with ``fleet_kernel``'s signature."""
    name = name or os.environ.get("DISTGEN_CPU_KERNEL") or DEFAULT_CPU_KERNEL
    if name == "numba":
        from distgen.engine.kernel import fleet_kernel
        return fleet_kernel
    if name == "c":
        return host_fleet_kernel
    raise DistgenError(f"DISTGEN_CPU_KERNEL: must be one of {', '.join(CPU_KERNELS)}; "
                       f"got {name!r}")
