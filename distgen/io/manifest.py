"""Reading a finished run's ``manifest.json`` and checking the files it lists.

The manifest is written by :func:`distgen.io.outdir.finalize_output_dir` (last, atomically);
its presence means the run folder is complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from distgen.errors import DistgenError, InputError
from distgen.io.outdir import MANIFEST_NAME, MARKER_NAME, RUN_FORMAT, listed_files

_CHUNK_BYTES = 1 << 20


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as lowercase hex; read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(outdir: str | Path) -> dict:
    """The manifest of a complete run folder.

    Parameters
    ----------
    outdir : the run folder, or the path of its ``manifest.json``.

    Returns
    -------
    dict, the parsed manifest (``"format" == "distgen.run"``).

    Raises
    ------
    DistgenError : no manifest (saying so when the folder holds an interrupted run).
    InputError : the manifest is not valid JSON (with its line), not an object, or not a
        distgen run manifest.
    """
    given = Path(outdir)
    path = given if given.name == MANIFEST_NAME and not given.is_dir() else given / MANIFEST_NAME
    folder = path.parent
    if not path.is_file():
        if (folder / MARKER_NAME).is_file():
            raise DistgenError(f"{path} not found: the run in {folder} is incomplete "
                               f"(interrupted or still running); rerun it or pass --resume")
        raise DistgenError(f"{path} not found: {folder} is not a finished distgen run folder")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(doc, dict):
        raise InputError(path, f"the manifest must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != RUN_FORMAT:
        raise InputError(path, f"'format' is {doc.get('format')!r}, expected '{RUN_FORMAT}'",
                         column="format")
    return doc


def verify_manifest(outdir: str | Path) -> dict:
    """Read the manifest and check every listed file exists with its recorded size/digest.

    Entries of ``files`` that are records with ``bytes`` / ``sha256`` are checked against the
    file; plain names are only checked for existence.

    Returns
    -------
    dict, the manifest.

    Raises
    ------
    InputError : naming the first file that is missing or differs.
    """
    folder = Path(outdir)
    if folder.name == MANIFEST_NAME and not folder.is_dir():
        folder = folder.parent
    doc = read_manifest(folder)
    files = doc.get("files")
    records = files.values() if isinstance(files, dict) else (files or [])
    for rel in listed_files(doc):
        target = folder / rel
        if not target.is_file():
            raise InputError(target, "listed in manifest.json but missing")
    for rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("path"), str):
            continue
        target = folder / rec["path"]
        if "bytes" in rec and target.stat().st_size != rec["bytes"]:
            raise InputError(target, f"has {target.stat().st_size} bytes, manifest.json "
                             f"says {rec['bytes']}")
        if "sha256" in rec and file_digest(target) != rec["sha256"]:
            raise InputError(target, "sha256 differs from the one in manifest.json")
    return doc
