"""Reading a finished run folder (manifest + Parquet series) for analysis and reports.

Only the output contract is used: ``manifest.json`` (``files``, ``grid``, ``topology``,
``config``, ``config_hash``, ``model_library``) and the series files it lists. Columns are
selected by name, so files may carry further columns (e.g. ``timestamp_utc``); unknown files
and levels are ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from distgen.errors import DistgenError, InputError
from distgen.io.manifest import read_manifest
from distgen.io.outdir import MANIFEST_NAME
from distgen.io.series import read_series

LEVELS = ("site", "rows", "racks", "servers", "deployments")
ENTITY_LEVELS = LEVELS[1:]
ENTITY_COLUMN = {"rows": "row_id", "racks": "rack_id", "servers": "server_id",
                 "deployments": "deployment_id"}
_REQUIRED_KEYS = ("files", "grid", "topology", "config", "config_hash")


@dataclass(frozen=True)
class SiteSeries:
    """The site at one resolution.

    Attributes
    ----------
    resolution_s : [s] block length.
    time_s : [s] (n_t,) block starts since the run start.
    it_power_w, facility_power_w : [W] (n_t,) block means.
    """

    resolution_s: float
    time_s: np.ndarray
    it_power_w: np.ndarray
    facility_power_w: np.ndarray


@dataclass(frozen=True)
class EntitySeries:
    """One entity level at one resolution, as a dense array.

    Attributes
    ----------
    level : ``rows``, ``racks``, ``servers`` or ``deployments``.
    resolution_s : [s] block length.
    ids : (n_e,) entity ids, increasing.
    time_s : [s] (n_t,) block starts since the run start.
    power_w : [W] (n_e, n_t) block means, one row per entity (time on the last axis).
    """

    level: str
    resolution_s: float
    ids: np.ndarray
    time_s: np.ndarray
    power_w: np.ndarray


@dataclass(frozen=True)
class SiteCsv:
    """The 15-minute (or other) site CSV a run wrote.

    Attributes
    ----------
    path : the file.
    interval_s : [s] (n,) interval lengths.
    facility_power_kw : [kW] (n,) mean facility power per interval.
    facility_energy_kwh : [kWh] (n,) energy per interval.
    """

    path: Path
    interval_s: np.ndarray
    facility_power_kw: np.ndarray
    facility_energy_kwh: np.ndarray


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs of one serving configuration's model artifact.

    Attributes
    ----------
    config_id : the serving configuration.
    tp : GPUs per deployment.
    tdp_w : [W] nameplate power of a deployment (per-GPU TDP x TP).
    idle_w : [W] idle power of a deployment.
    mean_w : [W] the training runs' mean deployment power (mean-power baseline).
    lut_w : [W] phase look-up table, phase -> deployment power (may be empty).
    path : the artifact read.
    """

    config_id: str
    tp: int
    tdp_w: float
    idle_w: float
    mean_w: float
    lut_w: dict
    path: Path


@dataclass(frozen=True)
class ModelFactsSet:
    """Model facts of a run's serving configurations, with the library they came from.

    version : content hash of the library folder's ``*.json`` files, computed as
        :class:`distgen.model.artifact.ModelLibrary` does (first 16 hex digits).
    """

    models: dict
    source: Path
    version: str


def _bundled_library() -> Path:
    return Path(str(resources.files("distgen.library")))


def read_model_facts(directory: str | Path, config_ids: list[str],
                     manifest_models: dict | None = None) -> ModelFactsSet:
    """Read only the fields planning needs from model artifacts (``<config_id>.json``).

    Reads the JSON directly (``tp``, ``tdp_w``, ``baselines``; the idle power from the run's
    manifest when it recorded one, else the artifact's lowest state), so it does not depend on
    the rest of the artifact format.

    Raises
    ------
    InputError : an artifact is missing or lacks a field (named).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise DistgenError(f"model library folder {folder} does not exist")
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")):
        digest.update(path.read_bytes())
    models = {}
    for cid in dict.fromkeys(config_ids):
        path = folder / f"{cid}.json"
        if not path.is_file():
            raise InputError(path, f"no model artifact for serving configuration '{cid}' in "
                             f"{folder}; pass --models with the library the run used")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            base = doc["baselines"]
            recorded = (manifest_models or {}).get(cid) or {}
            idle = recorded.get("idle_w")
            if idle is None:
                idle = ((doc.get("states") or {}).get("mean_w") or [None])[0]
            if idle is None:
                idle = (doc.get("energy_account") or {}).get("idle_w", float("nan"))
            models[cid] = ModelFacts(cid, int(doc["tp"]), float(recorded.get("tdp_w",
                                                                             doc["tdp_w"])),
                                     float(idle), float(base["mean_w"]),
                                     {k: float(v) for k, v in (base.get("lut_w") or {}).items()},
                                     path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not a readable model artifact ({exc})") from None
        except (KeyError, IndexError, TypeError) as exc:
            raise InputError(path, f"model artifact lacks the field {exc}") from None
    return ModelFactsSet(models, folder, digest.hexdigest()[:16])


class RunOutput:
    """A complete run folder (its manifest exists and lists files that are present).

    Use :meth:`open`; it raises a :class:`~distgen.errors.DistgenError` naming the problem for
    a folder without a complete manifest.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._files: dict[str, list[tuple[float, Path]]] = {}
        for rec in manifest.get("files") or []:
            if not isinstance(rec, dict) or rec.get("format", "parquet") != "parquet":
                continue
            level, rel = rec.get("level"), rec.get("path")
            if level not in LEVELS or not isinstance(rel, str):
                continue
            res = rec.get("resolution_s")
            if res is None:
                continue
            self._files.setdefault(level, []).append((float(res), path / rel))
        for level in self._files:
            self._files[level].sort()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> "RunOutput":
        """Open a run folder, checking its manifest and the presence of the listed files."""
        folder = Path(path)
        if folder.name == MANIFEST_NAME and not folder.is_dir():
            folder = folder.parent
        manifest = read_manifest(folder)
        mpath = folder / MANIFEST_NAME
        for key in _REQUIRED_KEYS:
            if key not in manifest:
                raise InputError(mpath, f"key '{key}' is missing; the manifest is incomplete",
                                 column=key)
        grid = manifest["grid"]
        for key in ("start_time", "interval_s", "n_steps"):
            if key not in grid:
                raise InputError(mpath, f"key 'grid.{key}' is missing", column=f"grid.{key}")
        for rec in manifest["files"]:
            rel = rec.get("path") if isinstance(rec, dict) else rec
            if isinstance(rel, str) and not (folder / rel).is_file():
                raise InputError(folder / rel, "listed in manifest.json but missing; the run "
                                 "folder is incomplete")
        run = cls(folder, manifest)
        if "site" not in run._files:
            raise InputError(mpath, "lists no site Parquet file (level 'site')", column="files")
        return run

    # ------------------------------------------------------------------ facts
    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def config_hash(self) -> str:
        return str(self.manifest["config_hash"])

    @property
    def seed(self):
        return self.manifest.get("seed")

    @property
    def grid(self) -> dict:
        return self.manifest["grid"]

    @property
    def topology(self) -> dict:
        return self.manifest["topology"]

    @property
    def start_time(self) -> datetime:
        """Site-local start of the run (any UTC offset dropped: the local clock as written)."""
        text = str(self.grid["start_time"])
        try:
            return datetime.fromisoformat(text).replace(tzinfo=None)
        except ValueError:
            raise InputError(self.path / MANIFEST_NAME, f"grid.start_time {text!r} is not an "
                             "ISO 8601 date/time", column="grid.start_time") from None

    @property
    def duration_s(self) -> float:
        g = self.grid
        return float(g.get("duration_s", g["n_steps"] * g["interval_s"]))

    @property
    def models(self) -> dict:
        """``model_library.models``: config id -> {tdp_w, idle_w, ...}."""
        return (self.manifest.get("model_library") or {}).get("models") or {}

    @property
    def library_source(self) -> str | None:
        return (self.manifest.get("model_library") or {}).get("source")

    @property
    def library_version(self) -> str | None:
        return (self.manifest.get("model_library") or {}).get("version")

    def model_facts(self, directory: str | Path | None = None) -> ModelFactsSet:
        """Facts of the run's serving configurations from ``directory``, else the library
        folder the manifest recorded (when it still exists), else the bundled library."""
        if directory is None:
            source = self.library_source
            directory = source if source and Path(source).is_dir() else _bundled_library()
        serving = self.facility().get("row_serving") or self.topology.get("row_serving") or []
        return read_model_facts(directory, list(serving), self.models)

    def facility(self) -> dict:
        """``config.facility`` (rows, racks_per_row, servers_per_rack, gpus_per_server,
        row_serving, non_gpu {idle_w, activity_w}, pue)."""
        f = self.config.get("facility")
        if not isinstance(f, dict):
            raise InputError(self.path / MANIFEST_NAME, "config.facility is missing",
                             column="config.facility")
        return f

    # ------------------------------------------------------------------ series
    def levels(self) -> list[str]:
        """Levels with at least one Parquet series, top down."""
        return [lv for lv in LEVELS if lv in self._files]

    def resolutions(self, level: str) -> list[float]:
        """[s] resolutions available for ``level``, finest first."""
        return [r for r, _ in self._files.get(level, [])]

    def _file(self, level: str, resolution_s: float | None) -> tuple[float, Path]:
        files = self._files.get(level)
        if not files:
            raise DistgenError(f"{self.path}: the run has no '{level}' series (manifest.json "
                               f"lists levels {', '.join(self.levels())})")
        if resolution_s is None:
            return files[0]
        for res, path in files:
            if abs(res - float(resolution_s)) < 1e-9:
                return res, path
        raise DistgenError(f"{self.path}: no '{level}' series at {resolution_s:g} s (available: "
                           f"{', '.join(f'{r:g} s' for r, _ in files)})")

    def site(self, resolution_s: float | None = None) -> SiteSeries:
        """The site series at ``resolution_s`` (the finest one by default)."""
        res, path = self._file("site", resolution_s)
        cols, _ = read_series(path, columns=["time_s", "it_power_w", "facility_power_w"])
        order = np.argsort(cols["time_s"], kind="stable")
        return SiteSeries(res, cols["time_s"][order], cols["it_power_w"][order].astype(np.float64),
                          cols["facility_power_w"][order].astype(np.float64))

    def entities(self, level: str, resolution_s: float | None = None) -> EntitySeries:
        """An entity level as an (n_entities, n_t) array (finest resolution by default)."""
        if level not in ENTITY_COLUMN:
            raise ValueError(f"level must be one of {sorted(ENTITY_COLUMN)}, got {level!r}")
        res, path = self._file(level, resolution_s)
        id_col = ENTITY_COLUMN[level]
        cols, _ = read_series(path, columns=["time_s", id_col, "power_w"])
        t, ids, p = cols["time_s"], cols[id_col], cols["power_w"].astype(np.float64)
        times, ti = np.unique(t, return_inverse=True)
        uids, ei = np.unique(ids, return_inverse=True)
        if times.size * uids.size != p.size:
            raise InputError(path, f"holds {p.size} rows, not one per time step and entity "
                             f"({times.size} x {uids.size})")
        dense = np.full((uids.size, times.size), np.nan)
        dense[ei, ti] = p
        if np.isnan(dense).any():
            raise InputError(path, "some (time_s, entity) pairs are repeated or missing")
        return EntitySeries(level, res, uids.astype(np.int64), times, dense)

    def entity_rows(self, level: str, ids: np.ndarray) -> np.ndarray:
        """The row of each entity id of ``level`` (from the id scheme of the topology:
        rack_uid = row * racks_per_row + rack, server_uid = rack_uid * servers_per_rack +
        server, deployment_uid = server_uid * gpus_per_server + first GPU)."""
        f = self.facility()
        ids = np.asarray(ids, dtype=np.int64)
        if level == "rows":
            return ids
        if level == "deployments":
            ids = ids // int(f["gpus_per_server"])
            level = "servers"
        if level == "servers":
            ids = ids // int(f["servers_per_rack"])
            level = "racks"
        if level == "racks":
            return ids // int(f["racks_per_row"])
        raise ValueError(f"no row mapping for level {level!r}")

    def site_csv(self) -> SiteCsv | None:
        """The site CSV the run wrote (None when the manifest lists none)."""
        for rec in self.manifest.get("files") or []:
            if isinstance(rec, dict) and rec.get("format") == "csv" and rec.get("level") == "site":
                path = self.path / rec["path"]
                try:
                    table = pcsv.read_csv(str(path))
                except (OSError, pa.ArrowInvalid) as exc:
                    raise InputError(path, f"cannot read the CSV ({exc})") from None
                need = ("interval_s", "facility_power_kw", "facility_energy_kwh")
                missing = [c for c in need if c not in table.column_names]
                if missing:
                    raise InputError(path, f"columns {missing} are missing")
                col = {c: table.column(c).to_numpy().astype(np.float64) for c in need}
                return SiteCsv(path, col["interval_s"], col["facility_power_kw"],
                               col["facility_energy_kwh"])
        return None
