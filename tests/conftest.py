"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def measured_dir() -> Path:
    """The measured-run fixtures (three runs; see tests/data/measured/PROVENANCE.md)."""
    return Path(__file__).parent / "data" / "measured"
