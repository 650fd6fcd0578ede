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

While a run writes into a folder it holds the folder's lock (:class:`OutputLock`): a second run
into the same folder is refused, naming the first one's pid; the lock of a run that was killed
does not block anyone.

Temporary files are hidden (leading dot), sit in the same folder as their final file (so
``os.replace`` is atomic) and carry the writer's pid.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from distgen.errors import DistgenError, os_error_text

MANIFEST_NAME = "manifest.json"
MARKER_NAME = ".distgen-incomplete"
LOCK_NAME = ".distgen-lock"
#: A lock file younger than this that cannot be read yet is being written by its owner.
LOCK_WRITE_GRACE_S = 10.0
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


# --------------------------------------------------------------------------- lock

def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start_ticks(pid: int) -> str | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field 22), or
    None when no such process exists. With the pid it names one process across pid reuse."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # fields after "pid (comm) "


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def lock_owner_alive(owner: dict) -> bool | None:
    """Whether the run that wrote lock record ``owner`` still runs.

    True / False on the machine that wrote it (same host name and boot): the pid exists and,
    where ``/proc`` tells, started at the recorded time (so a reused pid does not count).
    None for a lock written on another machine (a shared file system): it cannot be checked
    from here.
    """
    if owner.get("host") != socket.gethostname() or owner.get("boot_id", "") != _boot_id():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    ticks = _process_start_ticks(pid)
    if ticks is not None and owner.get("process_start"):
        return ticks == owner["process_start"]
    return _pid_exists(pid)


class OutputLock:
    """An exclusive lock on a run folder, held while a run writes into it.

    The lock is the file ``.distgen-lock``, created with ``O_CREAT | O_EXCL`` (atomic on local
    file systems and on NFS v3+) holding its owner: pid, host name, boot id, the process start
    time and a random token. Another run finding it is refused with a
    :class:`~distgen.errors.DistgenError` naming the owner, unless the owner is dead
    (:func:`lock_owner_alive`): a killed run's lock is taken over. A lock from another machine
    is never taken over (its owner cannot be checked); the message says how to remove it.

    Use as a context manager; the lock is released (its file removed, if still ours) on exit.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.token = secrets.token_hex(8)
        self._held = False

    def _record(self) -> dict:
        pid = os.getpid()
        return {"format": "distgen.lock", "pid": pid, "host": socket.gethostname(),
                "boot_id": _boot_id(), "process_start": _process_start_ticks(pid),
                "started_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                "token": self.token}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, (json.dumps(self._record()) + "\n").encode("utf-8"))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True

    def _refuse(self, owner: dict, alive: bool | None) -> DistgenError:
        who = (f"pid {owner.get('pid')} on {owner.get('host')}, started "
               f"{owner.get('started_at')}")
        if alive is None:
            return DistgenError(
                f"output folder {self.folder} is locked by a distgen run on another machine "
                f"({who}); wait for it, or if that run is gone delete {self.path}")
        return DistgenError(f"output folder {self.folder} is in use by another distgen run "
                            f"({who}); wait for it to finish or choose another --out")

    def _take_over(self, owner: dict) -> None:
        """Remove the lock of the dead ``owner`` (and nothing else)."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else removed it first
        moved = _read_json_quiet(aside)
        if isinstance(moved, dict) and moved.get("token") != owner.get("token"):
            # a live run replaced the stale lock between our read and the rename: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            raise self._refuse(moved, lock_owner_alive(moved))
        aside.unlink(missing_ok=True)

    def acquire(self) -> "OutputLock":
        for _ in range(5):
            if self._create():
                self._held = True
                return self
            owner = _read_json_quiet(self.path)
            if not isinstance(owner, dict):
                try:
                    age_s = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age_s < LOCK_WRITE_GRACE_S:  # its owner is still writing it
                    time.sleep(0.2)
                    continue
                owner = {}
            alive = lock_owner_alive(owner) if owner else False
            if alive is not False:
                raise self._refuse(owner, alive)
            self._take_over(owner)
        raise DistgenError(f"could not lock output folder {self.folder}: {self.path} keeps "
                           f"changing (several runs starting at once?)")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        doc = _read_json_quiet(self.path)
        if isinstance(doc, dict) and doc.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- lifecycle

def check_output_target(path: str | Path, *, resume: bool = False) -> Path:
    """Refuse an output path that cannot become a run folder, before anything is created.

    Raises
    ------
    DistgenError : ``path`` is a file; ``resume`` and ``path`` does not exist (nothing to
        resume, and no empty folder is left behind); the folder cannot be created or written
        (names the folder and the system's reason).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DistgenError(f"output path {folder} exists and is not a folder")
    if resume and not folder.is_dir():
        raise DistgenError(f"cannot resume in {folder}: the folder does not exist (run without "
                           f"--resume to start the run)")
    check_writable_folder(folder, what="output folder")
    return folder


def check_writable_folder(path: str | Path, *, what: str = "folder") -> None:
    """Raise a DistgenError unless a file can be created in ``path`` (or, when it does not
    exist yet, in its nearest existing parent, where it would be created).

    The check creates and removes a hidden probe file: permissions alone do not tell (a
    read-only mount, root, ACLs), and a full disk cannot be seen before a write.
    """
    folder = Path(path)
    probe_in = folder
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise DistgenError(f"cannot create {what} {folder}: {probe_in} is not a folder")
    probe = probe_in / f".distgen-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"distgen write check\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        where = "" if probe_in == folder else f" (it would be created in {probe_in})"
        raise DistgenError(f"cannot write to {what} {folder}{where}: "
                           f"{os_error_text(exc).split(': ', 1)[-1]}") from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_output_file(path: str | Path, *, what: str = "output file") -> None:
    """Raise a DistgenError unless ``path`` can be written as a file: its folder exists and
    takes files, and ``path`` is not a folder. For checks before work whose result would be
    lost if the write failed at the end."""
    target = Path(path)
    if target.is_dir():
        raise DistgenError(f"cannot write {what} {target}: it is a folder")
    folder = target.parent
    if not folder.is_dir():
        raise DistgenError(f"cannot write {what} {target}: folder {folder} does not exist")
    check_writable_folder(folder, what=f"the folder of {what}")


def check_artifact_folder(path: str | Path, *, artifact_format: str,
                          overwrite: bool = False) -> None:
    """Check a folder that JSON artifacts (e.g. fitted power models) are about to be written to,
    before the work: it is a folder (or can be created) that takes files, and it holds nothing
    but such artifacts (``"format": artifact_format``) and hidden files unless ``overwrite``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DistgenError(f"output path {folder} exists and is not a folder")
    check_writable_folder(folder, what="output folder")
    if overwrite or not folder.is_dir():
        return
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        doc = _read_json_quiet(entry) if entry.suffix == ".json" and entry.is_file() else None
        if not (isinstance(doc, dict) and doc.get("format") == artifact_format):
            foreign.append(entry.name)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise DistgenError(f"output folder {folder} holds files that distgen did not write "
                           f"({', '.join(foreign[:3])}{more}); pass --overwrite to write into "
                           f"it anyway (those files are kept) or pick another folder")


def interrupted_shards(path: str | Path) -> int:
    """Number of finished shards an interrupted run left in ``path`` (0 when none, or when the
    folder is not an interrupted run)."""
    folder = Path(path)
    if not (folder / MARKER_NAME).is_file() or is_complete(folder):
        return 0
    parts = folder / PARTS_DIR_NAME
    return len(list(parts.glob("shard-*.json"))) if parts.is_dir() else 0


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
    folder = check_output_target(path, resume=resume)
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
        if any(e.name != LOCK_NAME for e in folder.iterdir()) and not overwrite:
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
