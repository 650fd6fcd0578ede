"""Output folders that never lose a user's files and never look complete when they are not.

A folder is *ours* (a distgen run folder) when it holds ``manifest.json`` with
``"format": "distgen.run"`` (a complete run) or the marker ``.distgen-incomplete`` (a run in
progress or one that was interrupted). The life of a run folder:

1. :func:`prepare_output_dir` — refuse a foreign non-empty folder (unless ``overwrite``), clear
   what a previous distgen run wrote (only the files its manifest or marker lists, the
   ``.parts/`` folder and our own temporary files), write the marker.
2. Writers put every file under :func:`atomic_path` and :func:`commit_file` it when complete.
3. :func:`finalize_output_dir` — write ``manifest.json`` atomically, *then* remove the marker
   and ``.parts/``. A folder with a manifest is therefore complete.

Temporary files are hidden (leading dot), sit in the same folder as their final file (so
``os.replace`` is atomic) and carry the writer's pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from distgen.errors import DistgenError

MANIFEST_NAME = "manifest.json"
MARKER_NAME = ".distgen-incomplete"
PARTS_DIR_NAME = ".parts"
RUN_FORMAT = "distgen.run"
TMP_INFIX = ".distgen-tmp-"

_TMP_RE = re.compile(r"^\..+" + re.escape(TMP_INFIX) + r"\d+(-[0-9a-f]+)?$")


# --------------------------------------------------------------------------- atomic files

def atomic_path(final_path: str | Path, *, token: str | None = None) -> Path:
    """The temporary name a file is written under until it is complete.

    Parameters
    ----------
    final_path : where the file will live once committed.
    token : optional extra tag (e.g. a random hex string) for writers that may run as two
        processes with the same pid on a shared file system.

    Returns
    -------
    Path in the same folder, hidden: ``.{name}.distgen-tmp-{pid}[-{token}]``. Deterministic
    for a given process (and token).
    """
    final_path = Path(final_path)
    tag = f"{os.getpid()}" + (f"-{token}" if token else "")
    return final_path.with_name(f".{final_path.name}{TMP_INFIX}{tag}")


def is_temp_name(name: str) -> bool:
    """True for a file name made by :func:`atomic_path`."""
    return bool(_TMP_RE.match(name))


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (the renames in it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush one file's contents to disk."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def commit_file(tmp: str | Path, final: str | Path) -> Path:
    """Make a completely written temporary file visible under its final name.

    fsyncs ``tmp``, renames it onto ``final`` with ``os.replace`` (atomic on one file system;
    an existing ``final`` is replaced) and fsyncs the folder.

    Returns
    -------
    Path of the final file.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def write_bytes_atomic(final: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` through a temporary file + fsync + rename."""
    final = Path(final)
    tmp = atomic_path(final)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


def write_json_atomic(final: str | Path, doc: object) -> Path:
    """Write ``doc`` as indented JSON, atomically (see :func:`write_bytes_atomic`)."""
    text = json.dumps(doc, indent=2, default=_json_default) + "\n"
    return write_bytes_atomic(final, text.encode("utf-8"))


def _json_default(obj: object) -> object:
    """JSON for NumPy scalars/arrays and paths (so manifests can hold them directly)."""
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# --------------------------------------------------------------------------- ownership

def _read_json_quiet(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest_doc(folder: Path) -> dict | None:
    """The folder's manifest if it is a distgen run manifest, else None."""
    doc = _read_json_quiet(folder / MANIFEST_NAME)
    if isinstance(doc, dict) and doc.get("format") == RUN_FORMAT:
        return doc
    return None


def is_complete(path: str | Path) -> bool:
    """True when the folder holds a distgen run manifest (the manifest is written last)."""
    return _manifest_doc(Path(path)) is not None


def is_ours(path: str | Path) -> bool:
    """True when the folder is a distgen run folder (complete, running or interrupted)."""
    folder = Path(path)
    return (folder / MARKER_NAME).is_file() or is_complete(folder)


def listed_files(manifest: dict) -> list[str]:
    """Relative file names a manifest lists under ``files``.

    Accepts a list of names, a list of ``{"path": ...}`` records, or a mapping of
    name -> name / record (the shapes :class:`~distgen.io.series.SeriesWriter.close` and
    callers produce).
    """
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        entries = list(files.values())
    elif isinstance(files, list):
        entries = files
    else:
        return []
    out = []
    for entry in entries:
        if isinstance(entry, dict):
            entry = entry.get("path")
        if isinstance(entry, str) and entry:
            out.append(entry)
    return out


def _inside(folder: Path, rel: str) -> Path | None:
    """``folder / rel`` if it stays inside ``folder`` (no absolute paths, no ``..``)."""
    if os.path.isabs(rel):
        return None
    candidate = (folder / rel).resolve()
    root = folder.resolve()
    if candidate == root or root not in candidate.parents:
        return None
    return candidate


def _remove_listed(folder: Path, names: list[str]) -> None:
    """Delete the listed regular files (and nothing else) inside ``folder``.

    Names are resolved (links followed) and must stay inside ``folder``; a listed name that
    is a link out of the folder is left alone.
    """
    for rel in names:
        target = _inside(folder, rel)
        if target is not None and target.is_file():
            target.unlink()


def _remove_our_temp_files(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_file() and is_temp_name(entry.name):
            entry.unlink(missing_ok=True)


def _write_marker(folder: Path, previous_files: list[str]) -> None:
    now = time.time()
    write_json_atomic(folder / MARKER_NAME, {
        "format": "distgen.incomplete",
        "pid": os.getpid(),
        "start_time": datetime.fromtimestamp(now, timezone.utc).isoformat(),
        "start_unix_s": now,
        # files a previous run of this folder listed; cleared by the next non-resume prepare
        "previous_files": sorted(set(previous_files)),
    })


# --------------------------------------------------------------------------- lifecycle

def prepare_output_dir(path: str | Path, *, overwrite: bool = False,
                       resume: bool = False) -> Path:
    """Make ``path`` ready for a run without losing anything that is not distgen's.

    Parameters
    ----------
    path : output folder; created (with parents) if missing.
    overwrite : accept a non-empty folder that is not a distgen run folder. Its files are all
        kept; those with the names of files this run writes are replaced when committed.
    resume : continue an interrupted run: the folder must be a distgen run folder; its
        ``.parts/`` (completed shards) is kept.

    Returns
    -------
    Path of the folder (as given, not resolved).

    Raises
    ------
    DistgenError : ``path`` is a file; a non-empty foreign folder without ``overwrite``;
        ``resume`` on a folder that is not a distgen run folder.

    Notes
    -----
    For a previous distgen run (not resumed) the marker is written first (so the folder never
    looks foreign), then ``manifest.json`` is removed (so it stops looking complete), then
    the files the old manifest (or an interrupted run's marker) listed, our temporary files
    and ``.parts/`` are deleted. No other file is ever deleted.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DistgenError(f"output path {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)

    manifest = _manifest_doc(folder)
    marker = folder / MARKER_NAME
    ours = manifest is not None or marker.is_file()

    if resume:
        if not ours:
            raise DistgenError(
                f"cannot resume in {folder}: it is not a distgen run folder (no "
                f"{MANIFEST_NAME} with format '{RUN_FORMAT}' and no {MARKER_NAME} marker)")
        previous = listed_files(manifest or {})
        old_marker = _read_json_quiet(marker)
        if isinstance(old_marker, dict):
            previous += [f for f in old_marker.get("previous_files", []) if isinstance(f, str)]
        _write_marker(folder, previous)
        _remove_our_temp_files(folder)
        if (folder / PARTS_DIR_NAME).is_dir():
            _remove_our_temp_files(folder / PARTS_DIR_NAME)
        if manifest is not None:  # re-running a complete run: it stops looking complete
            (folder / MANIFEST_NAME).unlink(missing_ok=True)
            fsync_dir(folder)
        return folder

    if not ours:
        if any(folder.iterdir()) and not overwrite:
            raise DistgenError(
                f"output folder {folder} is not empty and was not written by distgen; pass "
                f"--overwrite to write into it anyway (its other files are kept) or pick "
                f"another folder")
        _write_marker(folder, [])
        return folder

    # A previous distgen run (complete or interrupted): clear only what it wrote.
    previous = listed_files(manifest or {})
    old_marker = _read_json_quiet(marker)
    if isinstance(old_marker, dict):
        previous += [f for f in old_marker.get("previous_files", []) if isinstance(f, str)]
    _write_marker(folder, previous)          # still ours if we stop anywhere below
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(folder)
    _remove_listed(folder, previous)
    _remove_our_temp_files(folder)
    parts = folder / PARTS_DIR_NAME
    if parts.is_dir() and not parts.is_symlink():
        shutil.rmtree(parts)
    _write_marker(folder, [])                # the old files are gone
    return folder


def finalize_output_dir(path: str | Path, manifest: dict) -> Path:
    """Mark a run folder complete: manifest first, then drop the marker and ``.parts/``.

    Parameters
    ----------
    path : the run folder (prepared with :func:`prepare_output_dir`).
    manifest : JSON-serialisable run description (NumPy scalars/arrays allowed). ``"format":
        "distgen.run"`` is added when missing.

    Returns
    -------
    Path of ``manifest.json``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DistgenError(f"output folder {folder} does not exist")
    doc = dict(manifest)
    doc.setdefault("format", RUN_FORMAT)
    if doc["format"] != RUN_FORMAT:
        raise ValueError(f"manifest format must be '{RUN_FORMAT}', got {doc['format']!r}")
    target = write_json_atomic(folder / MANIFEST_NAME, doc)
    (folder / MARKER_NAME).unlink(missing_ok=True)
    parts = folder / PARTS_DIR_NAME
    if parts.is_dir() and not parts.is_symlink():
        shutil.rmtree(parts)
    fsync_dir(folder)
    return target


def parts_dir(path: str | Path) -> Path:
    """The folder for shards' partial results inside a run folder (created if missing)."""
    out = Path(path) / PARTS_DIR_NAME
    out.mkdir(parents=True, exist_ok=True)
    return out
