"""The entity table of a run (``entities.parquet``): which deployment sits where.

One row per deployment, in site order: ``deployment_id``, ``server_id``, ``rack_id``,
``row_id`` (the ids of the series files), ``serving_config`` (dictionary-encoded text),
``gpus`` (GPUs of the deployment, its tensor-parallel degree) and ``first_gpu`` (index of its
first GPU within the server). Servers and racks are listed through their deployments.

A deployment's power is GPU power only; a server's power adds its non-GPU power (CPUs, memory,
fans, NICs, PSU losses: ``facility.non_gpu``) to the power of its deployments. The file's
schema metadata (key ``distgen``) says so too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distgen.io.manifest import file_digest
from distgen.io.outdir import atomic_path, commit_file

ENTITIES_FORMAT = "distgen.entities"
METADATA_KEY = b"distgen"
POWER_NOTE = ("deployment power is GPU power only; server power = the power of its deployments "
              "+ its non-GPU power (facility.non_gpu: CPUs, memory, fans, NICs, PSU losses); "
              "racks and rows sum their servers")


def write_entity_table(path: str | Path, *, deployment_id: np.ndarray, server_id: np.ndarray,
                       rack_id: np.ndarray, row_id: np.ndarray, serving_code: np.ndarray,
                       serving_ids: list[str], gpus: np.ndarray, first_gpu: np.ndarray,
                       metadata: dict | None = None) -> dict:
    """Write the entity table atomically.

    Parameters
    ----------
    path : file to write.
    deployment_id, server_id, rack_id, row_id : int (n,) stable ids of each deployment and of
        the server, rack and row it belongs to.
    serving_code : int (n,) index into ``serving_ids`` of each deployment's configuration.
    serving_ids : serving-configuration ids.
    gpus, first_gpu : int (n,) GPUs of each deployment and the index of its first GPU in its
        server.
    metadata : further facts stored in the schema metadata (e.g. the serving mix).

    Returns
    -------
    dict: ``path`` (file name), ``level`` ("entities"), ``rows``, ``sha256``, ``bytes``.
    """
    path = Path(path)
    codes = np.asarray(serving_code, np.int32)
    table = pa.table({
        "deployment_id": pa.array(np.asarray(deployment_id, np.int64)),
        "server_id": pa.array(np.asarray(server_id, np.int64)),
        "rack_id": pa.array(np.asarray(rack_id, np.int64)),
        "row_id": pa.array(np.asarray(row_id, np.int64)),
        "serving_config": pa.DictionaryArray.from_arrays(pa.array(codes),
                                                         pa.array(list(serving_ids))),
        "gpus": pa.array(np.asarray(gpus, np.int32)),
        "first_gpu": pa.array(np.asarray(first_gpu, np.int32)),
    })
    meta = {"format": ENTITIES_FORMAT, "power": POWER_NOTE, **(metadata or {})}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode("utf-8")})
    tmp = atomic_path(path)
    try:
        pq.write_table(table, str(tmp), compression="zstd")
        digest, n_bytes = file_digest(tmp), tmp.stat().st_size
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": path.name, "level": "entities", "rows": int(table.num_rows),
            "sha256": digest, "bytes": n_bytes}


def read_entity_table(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The entity table as NumPy columns (``serving_config`` as text) and its metadata."""
    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        cols[name] = col.to_numpy(zero_copy_only=False)
    return cols, json.loads(raw) if raw else {}
