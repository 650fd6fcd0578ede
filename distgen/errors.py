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


_OS_HINTS = {28: "the disk is full", 122: "the disk quota is exceeded",
             30: "the file system is read-only", 13: "no permission to write there"}


def os_error_text(exc: OSError) -> str:
    """One line for an operating-system error: the file, what the system said, and a hint for
    the usual causes (a full disk, a read-only file system, missing permissions).

    Examples: ``"/out/site_1s.parquet: No space left on device (the disk is full)"``.
    """
    what = exc.strerror or str(exc) or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno)
    if hint and hint.split()[-1] not in what.lower():
        what += f" ({hint})"
    name = exc.filename
    if name is not None and exc.filename2 is not None:
        return f"{name} -> {exc.filename2}: {what}"
    return f"{name}: {what}" if name is not None else what
