"""Reader for a run's ``manifest.json`` (and the JSON loader the request reader shares)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from distgen.errors import InputError
from distgen.ingest.trace import ServingSettings

_MISSING = object()


def load_json(path: Path) -> Any:
    """Parse a JSON file; a missing file or broken JSON is an :class:`InputError` (with line)."""
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON: {exc.msg} (column {exc.colno})",
                         line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass(frozen=True)
class RunManifest:
    """What the reader needs from ``manifest.json``.

    Attributes
    ----------
    run_id, model, hardware : as in the manifest (``hardware`` upper-cased).
    tp : tensor-parallel degree.
    active_uuids : ``server.active_gpu_uuids`` (or ``instrumentation.power.device_ids``),
        or None when the manifest lists neither.
    power_basis : ``clock.power_timestamp_basis``, ``"local_wall_time"`` or ``"unix_epoch"``.
    request_basis : ``clock.request_timestamp_basis``, ``"unix_epoch"`` or ``"monotonic"``
        (the client's monotonic clock; ``clock.request_epoch_offset_s`` is then its zero on
        the epoch clock, and required).
    local_utc_offset_s : [s] local wall time minus UTC (-25200 for UTC-7).
    power_epoch_offset_s, request_epoch_offset_s, engine_epoch_offset_s : [s] added to the
        respective timestamps after conversion to epoch (0 when absent).
    serving : batching settings from the ``server`` block.
    raw : the whole manifest.
    """

    run_id: str
    model: str
    hardware: str
    tp: int
    active_uuids: tuple[str, ...] | None
    power_basis: str
    request_basis: str
    local_utc_offset_s: float
    power_epoch_offset_s: float
    request_epoch_offset_s: float
    engine_epoch_offset_s: float
    serving: ServingSettings
    raw: dict


def _get(path: Path, doc: dict, key: str, kind: type | tuple, default: Any = _MISSING) -> Any:
    """``doc[a][b]...`` for ``key = "a.b..."``, type-checked; an InputError names the key."""
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise InputError(path, f"missing key '{key}'", column=key)
            return default
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(node, kinds) and not (isinstance(node, bool) and bool not in kinds)
    if ok and isinstance(node, float) and not math.isfinite(node):
        ok = False
    if not ok:
        want = " or ".join(k.__name__ for k in kinds)
        raise InputError(path, f"key '{key}' must be {want}, got {node!r}", column=key)
    return node


def read_manifest(path: Path) -> RunManifest:
    """Read and check ``manifest.json``.

    Required: ``model``, ``hardware`` (or ``gpu``), ``tp`` (>= 1). ``run_id`` defaults to the
    folder name. ``clock.power_timestamp_basis`` defaults to ``"unix_epoch"``; with
    ``"local_wall_time"``, ``clock.local_utc_offset_s`` is required. Engine timestamps must be
    Unix epoch; request timestamps Unix epoch or, with ``clock.request_timestamp_basis =
    "monotonic"``, a monotonic clock whose zero ``clock.request_epoch_offset_s`` gives. Missing
    ``server`` keys take the :class:`ServingSettings` defaults.
    """
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise InputError(path, "the manifest must be a JSON object")
    num = (int, float)
    tp = _get(path, doc, "tp", int)
    if tp < 1:
        raise InputError(path, f"key 'tp' must be >= 1, got {tp}", column="tp")
    basis = _get(path, doc, "clock.power_timestamp_basis", str, "unix_epoch")
    if basis not in ("local_wall_time", "unix_epoch"):
        raise InputError(path, f"clock.power_timestamp_basis must be 'local_wall_time' or "
                         f"'unix_epoch', got {basis!r}", column="clock.power_timestamp_basis")
    offset = _get(path, doc, "clock.local_utc_offset_s", num,
                  _MISSING if basis == "local_wall_time" else 0.0)
    key = "clock.engine_timestamp_basis"
    if _get(path, doc, key, str, "unix_epoch") != "unix_epoch":
        raise InputError(path, f"{key} must be 'unix_epoch', got {doc['clock'][key]!r}",
                         column=key)
    key = "clock.request_timestamp_basis"
    request_basis = _get(path, doc, key, str, "unix_epoch")
    if request_basis not in ("unix_epoch", "monotonic"):
        raise InputError(path, f"{key} must be 'unix_epoch' or 'monotonic', got "
                         f"{request_basis!r}", column=key)
    if request_basis == "monotonic":
        _get(path, doc, "clock.request_epoch_offset_s", num)  # required: names the key
    active = _get(path, doc, "server.active_gpu_uuids", list, None)
    if active is None:
        active = _get(path, doc, "instrumentation.power.device_ids", list, None)
    if active is not None and not all(isinstance(u, str) for u in active):
        raise InputError(path, f"GPU uuids must be strings, got {active!r}",
                         column="server.active_gpu_uuids")
    defaults = ServingSettings()
    serving = {}
    for f in fields(ServingSettings):
        kind = bool if isinstance(f.default, bool) else int
        serving[f.name] = _get(path, doc, f"server.{f.name}", kind, getattr(defaults, f.name))
        if kind is int and serving[f.name] < 1:
            raise InputError(path, f"key 'server.{f.name}' must be >= 1, got {serving[f.name]}",
                             column=f"server.{f.name}")
    return RunManifest(
        run_id=_get(path, doc, "run_id", str, path.parent.name),
        model=_get(path, doc, "model", str),
        hardware=_get(path, doc, "hardware" if "hardware" in doc or "gpu" not in doc else "gpu",
                      str).upper(),
        tp=tp,
        active_uuids=None if active is None else tuple(active),
        power_basis=basis,
        request_basis=request_basis,
        local_utc_offset_s=float(offset),
        power_epoch_offset_s=float(_get(path, doc, "clock.power_epoch_offset_s", num, 0.0)),
        request_epoch_offset_s=float(_get(path, doc, "clock.request_epoch_offset_s", num, 0.0)),
        engine_epoch_offset_s=float(_get(path, doc, "clock.engine_epoch_offset_s", num, 0.0)),
        serving=ServingSettings(**serving),
        raw=doc,
    )
