"""Shared pytest fixtures."""

import os

# as in distgen.cli: one BLAS thread (small fits; parallelism is across processes)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def measured_dir() -> Path:
    """The measured-run fixtures (three runs; see tests/data/measured/PROVENANCE.md)."""
    return Path(__file__).parent / "data" / "measured"
