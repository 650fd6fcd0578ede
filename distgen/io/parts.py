"""A shard's partial results on disk: streaming merges and resume without pickles.

Layout inside a run's ``.parts/`` folder, for shard ``i`` and stream ``name`` (e.g.
``rows_0.25`` = row power at 0.25 s, ``racks_60`` = rack power at 60 s)::

    shard-{i:05d}.{name}.npy     int64 (n_steps, n_entities), row t = time step t
    shard-{i:05d}.json           done marker, written LAST: summary + streams' shapes and ids

Data files are written under hidden temporary names and renamed when the shard commits; the
marker goes last, so a shard with a readable marker whose files have the recorded sizes is
complete. Writing a shard again (a retried task) replaces it the same way, so it is
idempotent.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap, read_array_header_1_0, read_array_header_2_0, \
    read_magic

from distgen.errors import DistgenError
from distgen.io.outdir import (_json_default, atomic_path, commit_file, fsync_dir,
                               write_json_atomic)

PART_FORMAT = "distgen.part"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MARKER_RE = re.compile(r"^shard-(\d{5,})\.json$")


def marker_path(parts_dir: str | Path, shard_index: int) -> Path:
    """Path of shard ``shard_index``'s done marker."""
    return Path(parts_dir) / f"shard-{int(shard_index):05d}.json"


def stream_path(parts_dir: str | Path, shard_index: int, name: str) -> Path:
    """Path of shard ``shard_index``'s ``.npy`` file for stream ``name``."""
    return Path(parts_dir) / f"shard-{int(shard_index):05d}.{name}.npy"


class PartWriter:
    """Writes one shard's streams as int64 ``.npy`` memmaps, committed all at once.

    Parameters
    ----------
    parts_dir : the run's ``.parts/`` folder (created if missing).
    shard_index : non-negative shard number.
    streams : stream name -> (entity_ids int64 (n_entities,), n_steps). Each stream gets a
        int64 (n_steps, n_entities) array, row ``t`` = time step ``t`` of the stream's grid.
        Integers because the pipeline stores exact milliwatt block sums: integer sums do not
        depend on the order they are added in, so any cut of the fleet gives the same result.

    Notes
    -----
    Use as a context manager: leaving the block with an exception calls :meth:`abort`; a
    normal exit without :meth:`commit` also aborts (a shard is never half-committed).
    """

    def __init__(self, parts_dir: str | Path, shard_index: int,
                 streams: dict[str, tuple[np.ndarray, int]]):
        if int(shard_index) < 0:
            raise ValueError(f"shard_index must be >= 0, got {shard_index}")
        self.parts_dir = Path(parts_dir)
        self.shard_index = int(shard_index)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)  # two attempts with one pid on a shared FS never collide
        self._entity_ids: dict[str, np.ndarray] = {}
        self._shape: dict[str, tuple[int, int]] = {}
        self._tmp: dict[str, Path] = {}
        self._final: dict[str, Path] = {}
        self._maps: dict[str, np.memmap] = {}
        self._written: dict[str, np.ndarray] = {}
        self._done = False
        try:
            for name, (ids, n_steps) in streams.items():
                if not isinstance(name, str) or not _NAME_RE.match(name):
                    raise ValueError(f"stream name {name!r}: use letters, digits, '_', '.', "
                                     f"'-' (not starting with '.' or '-')")
                ids = np.asarray(ids)
                if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                    raise ValueError(f"stream {name!r}: entity_ids must be a 1-D integer array")
                if int(n_steps) < 0:
                    raise ValueError(f"stream {name!r}: n_steps must be >= 0, got {n_steps}")
                shape = (int(n_steps), int(ids.size))
                final = stream_path(self.parts_dir, self.shard_index, name)
                tmp = atomic_path(final, token=token)
                self._entity_ids[name] = ids.astype(np.int64)
                self._shape[name] = shape
                self._final[name] = final
                self._tmp[name] = tmp
                self._maps[name] = open_memmap(tmp, mode="w+", dtype=np.int64, shape=shape)
                self._written[name] = np.zeros(shape[0], dtype=bool)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ writing
    def write(self, name: str, step0: int, block: np.ndarray) -> None:
        """Store ``block`` (n_t, n_entities), an integer array, at steps [step0, step0+n_t)."""
        if self._done:
            raise RuntimeError("PartWriter is already committed or aborted")
        if name not in self._maps:
            raise KeyError(f"unknown stream {name!r}; streams: {sorted(self._maps)}")
        block = np.asarray(block)
        if not np.issubdtype(block.dtype, np.integer):
            raise TypeError(f"stream {name!r}: block must be an integer array, got {block.dtype}")
        n_steps, n_ent = self._shape[name]
        if block.ndim != 2 or block.shape[1] != n_ent:
            raise ValueError(f"stream {name!r}: block shape {block.shape}, expected "
                             f"(n_t, {n_ent})")
        step0 = int(step0)
        if step0 < 0 or step0 + block.shape[0] > n_steps:
            raise ValueError(f"stream {name!r}: steps [{step0}, {step0 + block.shape[0]}) "
                             f"outside [0, {n_steps})")
        self._maps[name][step0:step0 + block.shape[0]] = block
        self._written[name][step0:step0 + block.shape[0]] = True

    def commit(self, summary: dict) -> Path:
        """Flush, rename every stream to its final name, then write the done marker.

        Parameters
        ----------
        summary : JSON-serialisable facts about the shard (NumPy scalars allowed), stored
            under ``"summary"`` in the marker.

        Returns
        -------
        Path of the done marker ``shard-{index:05d}.json``.

        Raises
        ------
        ValueError : a stream has time steps that were never written.
        """
        if self._done:
            raise RuntimeError("PartWriter is already committed or aborted")
        for name, written in self._written.items():
            if not written.all():
                missing = int(np.flatnonzero(~written)[0])
                raise ValueError(f"stream {name!r}: step {missing} (and maybe more) was never "
                                 f"written; {int((~written).sum())} of {written.size} missing")
        json.dumps(summary, default=_json_default)  # fail before touching the finals
        marker = marker_path(self.parts_dir, self.shard_index)
        # A retried shard stops looking done before its files are replaced.
        marker.unlink(missing_ok=True)
        streams_doc = {}
        for name in list(self._maps):
            mm = self._maps.pop(name)
            mm.flush()
            del mm
            commit_file(self._tmp[name], self._final[name])
            streams_doc[name] = {
                "file": self._final[name].name,
                "shape": list(self._shape[name]),
                "dtype": "int64",
                "entity_ids": self._entity_ids[name].tolist(),
            }
        fsync_dir(self.parts_dir)
        write_json_atomic(marker, {
            "format": PART_FORMAT,
            "shard_index": self.shard_index,
            "summary": summary,
            "streams": streams_doc,
        })
        self._done = True
        return marker

    def abort(self) -> None:
        """Drop the temporary files; committed files of an earlier attempt stay untouched."""
        for name in list(self._maps):
            mm = self._maps.pop(name)
            del mm
        for tmp in self._tmp.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._done = True

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()


# ---------------------------------------------------------------------- reading

def _npy_matches(path: Path, shape: tuple[int, int]) -> bool:
    """True when ``path`` is an int64 C-order .npy of ``shape`` with all its data bytes."""
    try:
        with open(path, "rb") as fh:
            version = read_magic(fh)
            reader = read_array_header_1_0 if version == (1, 0) else read_array_header_2_0
            got_shape, fortran, dtype = reader(fh)
            data_start = fh.tell()
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return False
    if tuple(got_shape) != tuple(shape) or fortran or dtype != np.dtype(np.int64):
        return False
    return size == data_start + 8 * int(np.prod(shape, dtype=np.int64))


def _valid_marker(parts_dir: Path, index: int, doc: object) -> bool:
    if not isinstance(doc, dict) or doc.get("format") != PART_FORMAT:
        return False
    if doc.get("shard_index") != index or not isinstance(doc.get("streams"), dict):
        return False
    for name, rec in doc["streams"].items():
        if not isinstance(rec, dict):
            return False
        shape = rec.get("shape")
        ids = rec.get("entity_ids")
        if (not isinstance(shape, list) or len(shape) != 2 or not isinstance(ids, list)
                or len(ids) != shape[1]):
            return False
        if not _npy_matches(stream_path(parts_dir, index, name), tuple(shape)):
            return False
    return True


def completed_shards(parts_dir: str | Path) -> dict[int, dict]:
    """The shards that finished writing (for resume).

    Parameters
    ----------
    parts_dir : the run's ``.parts/`` folder (missing = none finished).

    Returns
    -------
    dict shard_index -> its done marker (``summary``, ``streams``). Shards whose marker is
    missing or unreadable, or whose data files are missing or of the wrong size/shape, are
    left out; temporary files are ignored.
    """
    folder = Path(parts_dir)
    if not folder.is_dir():
        return {}
    out: dict[int, dict] = {}
    for entry in sorted(folder.iterdir()):
        m = _MARKER_RE.match(entry.name)
        if not m or not entry.is_file():
            continue
        index = int(m.group(1))
        try:
            doc = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _valid_marker(folder, index, doc):
            out[index] = doc
    return out


def open_part(parts_dir: str | Path, shard_index: int,
              name: str) -> tuple[np.ndarray, np.ndarray]:
    """One committed stream of one shard.

    Returns
    -------
    values : read-only int64 memmap (n_steps, n_entities).
    entity_ids : int64 (n_entities,).

    Raises
    ------
    DistgenError : the shard is not committed, has no such stream, or its file is damaged.
    """
    folder = Path(parts_dir)
    marker = marker_path(folder, shard_index)
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DistgenError(f"{marker}: shard {shard_index} has no readable done marker "
                           f"(not finished)") from None
    streams = doc.get("streams", {}) if isinstance(doc, dict) else {}
    if name not in streams:
        raise DistgenError(f"{marker}: shard {shard_index} has no stream {name!r}; streams: "
                           f"{sorted(streams)}")
    rec = streams[name]
    path = stream_path(folder, shard_index, name)
    if not _npy_matches(path, tuple(rec["shape"])):
        raise DistgenError(f"{path}: missing or not an int64 array of shape "
                           f"{tuple(rec['shape'])} (damaged part; rerun without --resume)")
    values = np.load(path, mmap_mode="r")
    return values, np.asarray(rec["entity_ids"], dtype=np.int64)
