"""User-facing errors: each names the file, field or value that is wrong.

The CLI prints these as one clear message and exits non-zero; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class DistgenError(Exception):
    """Base class of every error meant for the user rather than the developer."""


class InputError(DistgenError):
    """A measured-data file (or a model artifact) that cannot be used as it is.

    Parameters
    ----------
    path : file the problem is in.
    message : what is wrong, naming the field / value.
    line : 1-based line number in that file, when the problem sits on one line.
    column : column (field) name, when it is about one column.
    """

    def __init__(self, path: str | Path, message: str, *, line: int | None = None,
                 column: str | None = None):
        self.path = str(path)
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")


class ConfigError(DistgenError):
    """A run / sweep configuration key with a missing or invalid value."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class ModelLibraryError(DistgenError):
    """A serving configuration that the model library does not hold, or a bad artifact."""
