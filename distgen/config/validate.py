"""Value checks of a :class:`~distgen.config.schema.RunConfig` (standard library only).

:func:`validate` raises a :class:`~distgen.errors.ConfigError` naming the dotted key, the value
and the allowed values or range for the first invalid value it finds. Structure and types (unknown
keys, ``seed: abc``) are checked earlier, by :mod:`distgen.config.load`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from distgen.config.schema import (
    ARRIVAL_KINDS,
    BACKENDS,
    BURST_KINDS,
    ROUTINGS,
    TRAFFIC_MODES,
    RunConfig,
)
from distgen.config.serving_mix import FORMS, mix_form, mix_ids, row_serving_ids
from distgen.core.grid import INTERVAL_S, is_step_multiple
from distgen.errors import ConfigError

#: Seeds are 64-bit keys of the random-number generator: [0, 2**64).
SEED_LIMIT = 2 ** 64


# --------------------------------------------------------------------------- helpers


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(key: str, value, *, minimum: int) -> int:
    if not _is_int(value):
        raise ConfigError(key, f"expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value}")
    return value


def _num(key: str, value) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return float(value)


def _at_least(key: str, value, low: float) -> float:
    x = _num(key, value)
    if not x >= low:
        raise ConfigError(key, f"must be >= {low:g}, got {value!r}")
    return x


def _positive(key: str, value) -> float:
    x = _num(key, value)
    if not x > 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    return x



def _step_multiple(key: str, value) -> float:
    """A positive multiple of the 0.25 s base step."""
    x = _num(key, value)
    if not x > 0 or not is_step_multiple(x, INTERVAL_S):
        raise ConfigError(key, f"must be a positive multiple of {INTERVAL_S} s, got {value!r}")
    return x


def _choice(key: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(key, f"must be one of {choices}; got {value!r}")
    return value


def _unit_interval(key: str, value) -> float:
    x = _num(key, value)
    if not 0.0 <= x <= 1.0:
        raise ConfigError(key, f"must be in [0, 1], got {value!r}")
    return x


# --------------------------------------------------------------------------- public helpers


def expand_row_serving(cfg: RunConfig) -> tuple[str, ...]:
    """The serving-configuration id of every row (``facility.rows`` entries), from whichever
    form the serving mix is given in (:mod:`distgen.config.serving_mix`)."""
    fac = cfg.facility
    if fac.row_serving is not None and len(fac.row_serving) not in (1, fac.rows):
        raise ConfigError("facility.row_serving",
                          f"needs 1 entry or one per row (facility.rows = {fac.rows}), "
                          f"got {len(fac.row_serving)}")
    return row_serving_ids(fac)


def parse_start_time(cfg: RunConfig) -> datetime:
    """``start_time`` as a datetime (site-local wall-clock time)."""
    try:
        return datetime.fromisoformat(str(cfg.start_time))
    except (TypeError, ValueError):
        raise ConfigError("start_time",
                          f"must be an ISO-8601 date-time such as '2026-07-01T00:00:00', "
                          f"got {cfg.start_time!r}") from None


def start_time_utc(cfg: RunConfig) -> datetime:
    """``start_time`` as an aware UTC datetime. ``start_time`` is the site's local time; its UTC
    offset is the one written in it (``2026-07-01T09:00:00-05:00``), none meaning UTC."""
    t = parse_start_time(cfg)
    if t.utcoffset() is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def utc_offset_s(cfg: RunConfig) -> float:
    """[s] UTC offset of the site's clock (from ``start_time``; 0 without an offset)."""
    offset = parse_start_time(cfg).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def start_hour_of_day(cfg: RunConfig) -> float:
    """Hour of day of ``start_time`` in [0, 24), fractional (e.g. 06:30 -> 6.5)."""
    t = parse_start_time(cfg)
    return t.hour + t.minute / 60.0 + t.second / 3600.0 + t.microsecond / 3.6e9


def output_resolutions(cfg: RunConfig) -> dict[str, float]:
    """Every output resolution in use: ``{dotted key: seconds}`` (skipped levels left out)."""
    out = cfg.output
    res: dict[str, float] = {}
    for i, r in enumerate(out.site_resolutions_s):
        res[f"output.site_resolutions_s[{i}]"] = r
    for name in ("rows_resolution_s", "racks_resolution_s", "servers_resolution_s",
                 "deployments_resolution_s", "site_csv_resolution_s"):
        r = getattr(out, name)
        if r is not None:
            res[f"output.{name}"] = r
    return res


# --------------------------------------------------------------------------- validate


def validate(cfg: RunConfig, *, known_serving: Mapping[str, int] | None = None) -> RunConfig:
    """Check every value of ``cfg``; return it unchanged, or raise :class:`ConfigError`.

    Parameters
    ----------
    cfg : the run configuration.
    known_serving : serving-configuration id -> tensor-parallel degree, from the model library.
        When given, every ``facility.row_serving`` id must be in it and its TP must divide
        ``facility.gpus_per_server``.
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"validate() needs a RunConfig, got {type(cfg).__name__}")

    # ---- run
    _int("seed", cfg.seed, minimum=0)
    if cfg.seed >= SEED_LIMIT:
        # the counter-based generator keys on 64 bits: larger seeds would repeat smaller ones
        raise ConfigError("seed", f"must be below 2**64 = {SEED_LIMIT}, got {cfg.seed}")
    duration = _step_multiple("duration_s", cfg.duration_s)
    parse_start_time(cfg)
    _choice("backend", cfg.backend, BACKENDS)
    _int("shards", cfg.shards, minimum=1)
    if cfg.model_library is not None and (not isinstance(cfg.model_library, str)
                                          or not cfg.model_library):
        raise ConfigError("model_library",
                          f"must be a non-empty path or null, got {cfg.model_library!r}")

    _validate_facility(cfg, known_serving)
    _validate_traffic(cfg)

    # ---- output
    out = cfg.output
    sites = out.site_resolutions_s
    if not isinstance(sites, tuple) or len(sites) == 0:
        raise ConfigError("output.site_resolutions_s",
                          f"needs at least one resolution (seconds), got {sites!r}")
    seen: set[float] = set()
    for i, r in enumerate(sites):
        key = f"output.site_resolutions_s[{i}]"
        _num(key, r)
        if float(r) in seen:
            raise ConfigError("output.site_resolutions_s",
                              f"lists {r!r} twice; each resolution may appear once")
        seen.add(float(r))
    for key, r in output_resolutions(cfg).items():
        _step_multiple(key, r)
        if not is_step_multiple(duration, float(r)):
            raise ConfigError(key, f"resolution {r!r} s must divide duration_s = {duration:g} s")

    # ---- chunking: any length works (block sums carry across chunks)
    _step_multiple("chunk_s", cfg.chunk_s)
    warmup = _num("warmup_s", cfg.warmup_s)
    if warmup < 0 or not is_step_multiple(warmup, INTERVAL_S):
        raise ConfigError("warmup_s", f"must be 0 or a positive multiple of {INTERVAL_S} s, "
                          f"got {cfg.warmup_s!r}")

    # ---- ray
    ray = cfg.ray
    if ray.address is not None and (not isinstance(ray.address, str) or not ray.address):
        raise ConfigError("ray.address",
                          f"must be a cluster address such as 'ray://head:10001' or 'auto', "
                          f"or null for a local Ray; got {ray.address!r}")
    _positive("ray.num_cpus_per_task", ray.num_cpus_per_task)
    _at_least("ray.num_gpus_per_task", ray.num_gpus_per_task, 0.0)
    _int("ray.max_retries", ray.max_retries, minimum=0)
    return cfg


def _validate_facility(cfg: RunConfig, known_serving: Mapping[str, int] | None) -> None:
    fac = cfg.facility
    for name in ("rows", "racks_per_row", "servers_per_rack", "gpus_per_server"):
        _int(f"facility.{name}", getattr(fac, name), minimum=1)

    form = _validate_serving_mix(fac)
    if known_serving is not None:
        rs = mix_ids(fac)
        available = ", ".join(sorted(known_serving)) or "(none)"
        for i, sid in enumerate(rs):
            key = (f"facility.{form}.{sid}" if form == "row_serving_shares"
                   else f"facility.{form}[{i}]" if form != "default" else "facility.row_serving")
            if sid not in known_serving:
                raise ConfigError(key, f"unknown serving configuration {sid!r}; the model "
                                  f"library has: {available}")
            tp = known_serving[sid]
            if not _is_int(tp) or tp < 1 or fac.gpus_per_server % tp:
                rows = (f"rows 0..{fac.rows - 1} use" if len(rs) == 1 and fac.rows > 1
                        else f"row {i} uses" if form == "row_serving" else "rows use")
                raise ConfigError(key, f"{rows} {sid!r} with TP {tp}, which does not divide "
                                  f"facility.gpus_per_server = {fac.gpus_per_server}")

    _at_least("facility.non_gpu.idle_w", fac.non_gpu.idle_w, 0.0)
    _at_least("facility.non_gpu.activity_w", fac.non_gpu.activity_w, 0.0)
    _at_least("facility.pue", fac.pue, 1.0)
    if fac.pue_hourly is not None:
        if not isinstance(fac.pue_hourly, tuple) or len(fac.pue_hourly) != 24:
            n = len(fac.pue_hourly) if isinstance(fac.pue_hourly, tuple) else fac.pue_hourly
            raise ConfigError("facility.pue_hourly",
                              f"needs 24 values (hour 0..23) or null, got {n!r}")
        for h, v in enumerate(fac.pue_hourly):
            _at_least(f"facility.pue_hourly[{h}]", v, 1.0)


def _validate_serving_mix(fac) -> str:
    """Check the serving-mix keys (at most one form, well-formed ids); return the form."""
    given = [k for k in FORMS if getattr(fac, k) is not None]
    if len(given) > 1:
        raise ConfigError(f"facility.{given[1]}",
                          f"give the serving mix in one form only; facility.{given[0]} is "
                          f"set too")
    form = mix_form(fac)
    id_hint = "must be a serving-configuration id such as 'qwen3-8b_A100_tp1'"
    if form == "row_serving":
        rs = fac.row_serving
        if not isinstance(rs, tuple) or len(rs) not in (1, fac.rows):
            n = len(rs) if isinstance(rs, tuple) else rs
            raise ConfigError("facility.row_serving",
                              f"needs 1 entry (used for every row) or exactly facility.rows = "
                              f"{fac.rows} entries, got {n!r}; for a repeating block use "
                              f"facility.row_serving_pattern, for proportions "
                              f"facility.row_serving_shares")
    elif form == "row_serving_pattern":
        rs = fac.row_serving_pattern
        if not isinstance(rs, tuple) or not 1 <= len(rs) <= fac.rows:
            n = len(rs) if isinstance(rs, tuple) else rs
            raise ConfigError("facility.row_serving_pattern",
                              f"needs 1 to facility.rows = {fac.rows} entries, got {n!r}")
    elif form == "row_serving_shares":
        shares = fac.row_serving_shares
        if not isinstance(shares, Mapping) or not shares:
            raise ConfigError("facility.row_serving_shares",
                              f"needs at least one entry id: share, got {shares!r}")
        for sid, share in shares.items():
            if not isinstance(sid, str) or not sid:
                raise ConfigError("facility.row_serving_shares", f"key {sid!r} {id_hint}")
            x = _num(f"facility.row_serving_shares.{sid}", share)
            if not x > 0:
                raise ConfigError(f"facility.row_serving_shares.{sid}",
                                  f"must be > 0 (a relative share), got {share!r}")
        return form
    for i, sid in enumerate(mix_ids(fac)):
        if not isinstance(sid, str) or not sid:
            raise ConfigError(f"facility.{form}[{i}]", f"{id_hint}, got {sid!r}")
    return form


def _validate_traffic(cfg: RunConfig) -> None:
    tr = cfg.traffic
    _choice("traffic.mode", tr.mode, TRAFFIC_MODES)
    _at_least("traffic.site_rate_rps", tr.site_rate_rps, 0.0)
    _choice("traffic.arrivals", tr.arrivals, ARRIVAL_KINDS)
    _positive("traffic.burstiness", tr.burstiness)
    for key in ("input_tokens", "output_tokens"):
        value = getattr(tr, key)
        if value is not None:
            _int(f"traffic.{key}", value, minimum=1)
    share = _num("traffic.prefix_cache_hit_share", tr.prefix_cache_hit_share)
    if not 0.0 <= share < 1.0:
        raise ConfigError("traffic.prefix_cache_hit_share",
                          f"must be in [0, 1), got {tr.prefix_cache_hit_share!r}")

    d = tr.diurnal
    peak = _num("traffic.diurnal.peak_hour", d.peak_hour)
    if not 0.0 <= peak < 24.0:
        raise ConfigError("traffic.diurnal.peak_hour", f"must be in [0, 24), got {d.peak_hour!r}")
    trough = _num("traffic.diurnal.trough_ratio", d.trough_ratio)
    if not 0.0 < trough <= 1.0:
        raise ConfigError("traffic.diurnal.trough_ratio",
                          f"must be in (0, 1] (1 = flat), got {d.trough_ratio!r}")

    m = tr.modulation
    _at_least("traffic.modulation.cv", m.cv, 0.0)
    _step_multiple("traffic.modulation.interval_s", m.interval_s)
    _positive("traffic.modulation.correlation_time_s", m.correlation_time_s)
    rho = [_unit_interval(f"traffic.modulation.{n}", getattr(m, n))
           for n in ("rho_site", "rho_row", "rho_rack")]
    if sum(rho) > 1.0 + 1e-12:
        raise ConfigError("traffic.modulation.rho_site",
                          f"rho_site + rho_row + rho_rack must be <= 1, got "
                          f"{m.rho_site!r} + {m.rho_row!r} + {m.rho_rack!r} = {sum(rho):g}")

    b = tr.bursts
    _choice("traffic.bursts.kind", b.kind, BURST_KINDS)
    _at_least("traffic.bursts.high_factor", b.high_factor, 1.0)
    _positive("traffic.bursts.mean_burst_s", b.mean_burst_s)
    _positive("traffic.bursts.mean_calm_s", b.mean_calm_s)

    r = tr.replay
    _choice("traffic.replay.routing", r.routing, ROUTINGS)
    _positive("traffic.replay.time_scale", r.time_scale)
    _positive("traffic.replay.rate_scale", r.rate_scale)
    _at_least("traffic.replay.start_offset_s", r.start_offset_s, 0.0)
    if not isinstance(r.loop, bool):
        raise ConfigError("traffic.replay.loop", f"must be true or false, got {r.loop!r}")
    if r.path is not None and (not isinstance(r.path, str) or not r.path):
        raise ConfigError("traffic.replay.path", f"must be a file path or null, got {r.path!r}")
    if tr.mode == "replay":
        if r.path is None:
            raise ConfigError("traffic.replay.path",
                              "traffic.mode = 'replay' needs the request trace CSV path")
        if not Path(r.path).is_file():
            raise ConfigError("traffic.replay.path", f"file not found: {r.path}")
