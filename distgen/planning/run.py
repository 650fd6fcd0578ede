"""Planner answers from a finished run folder: characterisation, exports, what-ifs.

``analyze_run`` reads a run through :mod:`distgen.io.runoutput`, computes every figure with
the pure functions of :mod:`distgen.analysis` (``loadprofile``, ``oversubscription``,
``capping``), writes the exports, and returns one JSON-ready document (units in the keys).
``distgen analyze`` prints and saves that document; ``distgen report`` renders the same
document, so the report's numbers are the JSON's numbers. The method is described in
docs/PLANNING.md.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from distgen.analysis import capping, loadprofile, oversubscription
from distgen.errors import DistgenError
from distgen.io.runoutput import ENTITY_LEVELS, EntitySeries, RunOutput, SiteSeries
from distgen.planning.options import (AnalysisOptions, AnnualOptions, CappingOptions,
                                      OversubscriptionOptions)

ANALYSIS_FORMAT = "distgen.analysis"
ANALYSIS_VERSION = 1
#: Aggregation smoothing of the reference facility (MODEL.md section 4).
REFERENCE_CV = {"one_server": 0.583, "site_240_servers": 0.127}
#: Published oversubscription answers for a 600 kW row (MODEL.md section 4).
REFERENCE_RACKS = {"tdp": 23, "mean": 42, "lut": 52, "model": 57}
_CHILD = {"rows": "racks", "racks": "servers"}
_S_PER_H = 3600.0
_J_PER_KWH = 3.6e6


# ============================================================================ helpers

def jsonable(value):
    """Plain JSON values: NumPy scalars/arrays to Python, NaN/inf to None, dataclasses to dicts."""
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (Path, dt.date)):
        return str(value)
    return value


def _chars_dict(c: loadprofile.LoadCharacteristics, index=None) -> dict:
    d = {}
    for f in fields(c):
        v = getattr(c, f.name)
        if index is not None and isinstance(v, np.ndarray):
            v = v[index]
        d[f.name] = v
    d["resolution_s"] = d.pop("interval_s")
    return jsonable(d)


def _stats(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"max": None, "mean": None, "min": None}
    return {"max": float(v.max()), "mean": float(v.mean()), "min": float(v.min())}


def load_library(run: RunOutput, directory: str | Path | None = None):
    """The model facts of the run's serving configurations (see
    :meth:`RunOutput.model_facts`), with a note when the library's version differs from the
    run's."""
    facts = run.model_facts(directory)
    note = None
    if run.library_version and facts.version != run.library_version:
        note = (f"model library {facts.source} has version {facts.version}, the run used "
                f"{run.library_version}; baselines come from the former")
    return facts, note


def row_serving(run: RunOutput) -> list[str]:
    f = run.facility()
    serving = f.get("row_serving") or run.topology.get("row_serving")
    if not serving:
        raise DistgenError(f"{run.path}/manifest.json: config.facility.row_serving is missing")
    return list(serving)


@dataclass(frozen=True)
class UnitBaselines:
    """Constant power [W] of one entity of a level under each assumption.

    tdp_w : every GPU at its nameplate power, non-GPU at idle + full activity share.
    mean_w : every deployment at its configuration's training mean power (the library's
        mean-power baseline), non-GPU at the activity share that implies.
    lut_w : every deployment in the busiest phase of the configuration's phase look-up table
        (max of idle / prefill / decode watts), non-GPU likewise.
    gpus : GPUs in the entity.
    """

    tdp_w: float
    mean_w: float
    lut_w: float
    gpus: int


def unit_baselines(run: RunOutput, library, level: str, serving: str) -> UnitBaselines:
    """Baseline power of one ``level`` entity (rows, racks, servers, deployments) whose row
    serves ``serving`` (same rule as benchmarks/facility_report.py for non-GPU power).

    ``library`` is a :class:`~distgen.io.runoutput.ModelFactsSet`."""
    f = run.facility()
    model = library.models[serving]
    gpus_per_server = int(f["gpus_per_server"])
    deployments_per_server = gpus_per_server // int(model.tp)
    non_gpu = f.get("non_gpu") or {}
    idle_ng, act_ng = float(non_gpu.get("idle_w", 0.0)), float(non_gpu.get("activity_w", 0.0))
    lut = model.lut_w

    def per_server(deployment_w: float) -> tuple[float, float]:
        span = max(model.tdp_w - model.idle_w, 1e-9)
        activity = min(max((deployment_w - model.idle_w) / span, 0.0), 1.0)
        return deployments_per_server * deployment_w, idle_ng + act_ng * activity

    values = {}
    for name, dep_w in (("tdp_w", model.tdp_w), ("mean_w", model.mean_w),
                        ("lut_w", max(lut.values()) if lut else float("nan"))):
        if level == "deployments":
            values[name] = float(dep_w)
            continue
        gpu, other = per_server(float(dep_w))
        servers = {"servers": 1, "racks": int(f["servers_per_rack"]),
                   "rows": int(f["servers_per_rack"]) * int(f["racks_per_row"])}[level]
        values[name] = servers * (gpu + other)
    gpus = {"deployments": int(model.tp), "servers": gpus_per_server,
            "racks": gpus_per_server * int(f["servers_per_rack"]),
            "rows": gpus_per_server * int(f["servers_per_rack"]) * int(f["racks_per_row"])}[level]
    return UnitBaselines(values["tdp_w"], values["mean_w"], values["lut_w"], gpus)


def finest_level_series(run: RunOutput, level: str) -> EntitySeries:
    """The finest series of ``level``: its own file, or its children's summed when those are
    finer (racks from servers, rows from racks)."""
    own = run.entities(level) if level in run.levels() else None
    child = _CHILD.get(level)
    if child in run.levels() and (own is None or run.resolutions(child)[0] < own.resolution_s):
        kids = run.entities(child)
        parent = run.entity_rows(child, kids.ids) if level == "rows" else None
        if level == "racks":
            parent = kids.ids // int(run.facility()["servers_per_rack"])
        ids, inv = np.unique(parent, return_inverse=True)
        power = np.zeros((ids.size, kids.power_w.shape[1]))
        np.add.at(power, inv, kids.power_w)
        return EntitySeries(level, kids.resolution_s, ids, kids.time_s, power)
    if own is None:
        raise DistgenError(f"{run.path}: the run has neither a '{level}' nor a '{child}' series")
    return own


# ============================================================================ characterisation

def characterise_levels(run: RunOutput, library) -> dict:
    """Per level: the load characteristics (site) or their spread over entities, coincidence
    and a per-entity table with the TDP / mean-power baselines."""
    site = run.site()
    out = {"site": {"it": _chars_dict(loadprofile.load_characteristics(site.it_power_w,
                                                                       site.resolution_s)),
                    "facility": _chars_dict(loadprofile.load_characteristics(
                        site.facility_power_w, site.resolution_s))}}
    serving = row_serving(run)
    for level in ENTITY_LEVELS:
        if level not in run.levels():
            continue
        ent = run.entities(level)
        chars = loadprofile.load_characteristics(ent.power_w, ent.resolution_s)
        co = loadprofile.coincidence(ent.power_w)
        rows = run.entity_rows(level, ent.ids)
        base = {cfg: unit_baselines(run, library, level, cfg) for cfg in set(serving)}
        table = []
        for i, eid in enumerate(ent.ids):
            cfg = serving[int(rows[i])]
            table.append({"id": int(eid), "row": int(rows[i]), "serving": cfg,
                          "peak_w": float(chars.peak_w[i]), "mean_w": float(chars.mean_w[i]),
                          "p95_w": float(chars.p95_w[i]),
                          "peak_to_average": jsonable(chars.peak_to_average[i]),
                          "demand_peak_15min_w": jsonable(chars.demand_peak_15min_w[i]),
                          "tdp_baseline_w": base[cfg].tdp_w,
                          "mean_baseline_w": base[cfg].mean_w})
        spread = {f.name: _stats(getattr(chars, f.name)) for f in fields(chars)
                  if f.name not in ("interval_s", "duration_s")}
        out[level] = {"resolution_s": ent.resolution_s, "entities": int(ent.ids.size),
                      "per_entity": spread, "coincidence": jsonable(co), "table": table}
    return out


def aggregation(run: RunOutput, seed: int = 0) -> dict:
    """Coefficient of variation against the number of servers summed, at one common
    resolution: the coarsest of the levels' finest series (racks and rows are summed from
    their children when those are finer), so that every point sees the same time averaging."""
    f = run.facility()
    spr, rpr = int(f["servers_per_rack"]), int(f["racks_per_row"])
    per_entity = {"servers": 1, "racks": spr, "rows": spr * rpr}
    series = []
    for lv in ("servers", "racks", "rows"):
        try:
            series.append(run.entities(lv) if lv == "servers" else finest_level_series(run, lv))
        except DistgenError:
            continue
    site = run.site()
    res = max([site.resolution_s] + [s.resolution_s for s in series])
    points = []
    random_groups = None
    for ent in series:
        p = (loadprofile.block_means(ent.power_w, ent.resolution_s, res)
             if ent.resolution_s != res else ent.power_w)
        if p is None:
            continue
        cv = np.atleast_1d(loadprofile.coefficient_of_variation(p))
        points.append({"level": ent.level, "servers": per_entity[ent.level],
                       "entities": int(p.shape[0]), "resolution_s": res,
                       "cv_mean": float(np.nanmean(cv)), "cv_min": float(np.nanmin(cv)),
                       "cv_max": float(np.nanmax(cv))})
        if ent.level == "servers":
            n = p.shape[0]
            sizes = sorted({1, n, *[2 ** k for k in range(int(math.log2(n)) + 1)]})
            sm = loadprofile.aggregation_smoothing(p, sizes, rng=np.random.default_rng(seed))
            random_groups = jsonable(sm)
    site_res = _site_fine(run, res)
    p = loadprofile.block_means(site_res.it_power_w, site_res.resolution_s, res)
    if p is not None:
        cv = float(loadprofile.coefficient_of_variation(p))
        points.append({"level": "site", "servers": int(run.topology["servers"]), "entities": 1,
                       "resolution_s": res, "cv_mean": cv, "cv_min": cv, "cv_max": cv})
    return {"resolution_s": res, "power": "IT", "duration_s": run.duration_s, "points": points,
            "random_server_groups": random_groups, "reference": REFERENCE_CV}


# ============================================================================ exports

def _site_fine(run: RunOutput, max_resolution_s: float) -> SiteSeries:
    for res in run.resolutions("site"):
        if res <= max_resolution_s and loadprofile.block_factor(res, max_resolution_s):
            return run.site(res)
    raise DistgenError(f"{run.path}: no site series at a resolution dividing "
                       f"{max_resolution_s:g} s (available: {run.resolutions('site')})")


def exports(run: RunOutput, folder: Path | None, options: AnnualOptions) -> dict:
    """The 15-minute CSV check (or a new one), the 8760-hour profile and OpenDSS loadshapes."""
    from distgen.io.csvout import write_site_csv
    from distgen.io.loadshape import opendss_name, write_annual_csv, write_opendss_loadshape

    out: dict = {"folder": str(folder) if folder else None}
    try:
        site = _site_fine(run, 900.0)
    except DistgenError as exc:
        site, reason = None, str(exc)
    n_q, fine_energy = 0, 0.0
    if site is not None:
        q_fac = loadprofile.block_means(site.facility_power_w, site.resolution_s, 900.0)
        q_it = loadprofile.block_means(site.it_power_w, site.resolution_s, 900.0)
        factor = loadprofile.block_factor(site.resolution_s, 900.0)
        n_q = 0 if q_fac is None else q_fac.size
        fine_energy = float(site.facility_power_w[:n_q * factor].sum() * site.resolution_s)
        reason = "the run is shorter than 15 minutes"
    csv = run.site_csv()
    if site is not None and csv is not None and np.allclose(csv.interval_s, 900.0):
        csv_energy = float(csv.facility_energy_kwh.sum() * _J_PER_KWH)
        out["site_15min_csv"] = {"path": str(csv.path), "written": False,
                                 "intervals": int(csv.interval_s.size),
                                 "facility_energy_j": csv_energy,
                                 "fine_trace_facility_energy_j": fine_energy,
                                 "relative_difference": abs(csv_energy - fine_energy)
                                 / fine_energy if fine_energy else None}
    elif n_q:
        path = None
        if folder is not None:
            path = write_site_csv(folder / "site_900s.csv", start_time=str(run.grid["start_time"]),
                                  time_s=np.arange(n_q) * 900.0, interval_s=900.0,
                                  it_power_w=q_it, facility_power_w=q_fac)
        out["site_15min_csv"] = {"path": str(path) if path else None, "written": True,
                                 "intervals": n_q,
                                 "facility_energy_j": float(q_fac.sum() * 900.0),
                                 "fine_trace_facility_energy_j": fine_energy}
    else:
        out["site_15min_csv"] = {"skipped": reason}

    name = opendss_name(f"distgen_{run.config_hash[:8]}")
    if n_q:
        mult, base = loadprofile.per_unit(q_fac)
        entry = {"name": f"{name}_15min", "npts": int(mult.size), "interval_s": 900.0,
                 "base_kw": base / 1e3, "multiplier_max": float(mult.max()),
                 "energy_j": float((mult * base).sum() * 900.0)}
        if folder is not None:
            dss, mpath = write_opendss_loadshape(
                folder / "loadshape_site_15min.dss", name=entry["name"], multipliers=mult,
                interval_s=900.0, base_kw=base / 1e3, attach="daily" if n_q == 96 else "duty",
                description=f"distgen site facility power, 15-minute means, config "
                            f"{run.config_hash[:12]}, from {run.grid['start_time']}")
            entry.update(dss=str(dss), multipliers=str(mpath))
        out["opendss_15min"] = entry

    try:
        hourly_src = _site_fine(run, _S_PER_H)
        start = run.start_time
        sod = start.hour * _S_PER_H + start.minute * 60 + start.second + start.microsecond / 1e6
        fac = loadprofile.daily_pattern(hourly_src.facility_power_w, hourly_src.resolution_s, sod)
        it = loadprofile.daily_pattern(hourly_src.it_power_w, hourly_src.resolution_s, sod)
    except DistgenError as exc:
        out["annual_8760h"] = {"skipped": f"{run.path}: {exc}"}
        return out
    start_date = options.start_date or dt.date(run.start_time.year, 1, 1)
    kw = dict(start_date=start_date, weekday_scale=options.weekday_scale,
              weekend_scale=options.weekend_scale,
              growth_pct_per_year=options.growth_pct_per_year, growth=options.growth)
    try:
        a_fac = loadprofile.annual_profile(fac.power_w, **kw)
        a_it = loadprofile.annual_profile(it.power_w, **kw)
    except ValueError as exc:
        raise DistgenError(f"annual profile options: {exc}") from None
    entry = {"start_date": start_date.isoformat(), "hours": int(a_fac.power_w.size),
             "weekday_scale": options.weekday_scale, "weekend_scale": options.weekend_scale,
             "growth_pct_per_year": options.growth_pct_per_year, "growth": options.growth,
             "pattern_days": fac.days, "daily_facility_energy_j": fac.daily_energy_j,
             "facility_energy_j": a_fac.energy_j, "it_energy_j": a_it.energy_j,
             "facility_peak_w": float(a_fac.power_w.max()),
             "hourly_pattern_facility_w": fac.power_w}
    mult, base = loadprofile.per_unit(a_fac.power_w)
    ls = {"name": f"{name}_8760h", "npts": int(mult.size), "interval_s": _S_PER_H,
          "base_kw": base / 1e3}
    if folder is not None:
        entry["path"] = str(write_annual_csv(
            folder / "annual_8760h.csv", hour_start=a_fac.hour_start, weekend=a_fac.weekend,
            scale=a_fac.scale, it_power_w=a_it.power_w, facility_power_w=a_fac.power_w))
        dss, mpath = write_opendss_loadshape(
            folder / "loadshape_site_8760h.dss", name=ls["name"], multipliers=mult,
            interval_s=_S_PER_H, base_kw=base / 1e3, attach="yearly",
            description=f"distgen site facility power, 8760 hourly means from the daily pattern "
                        f"of config {run.config_hash[:12]}, year from {start_date}")
        ls.update(dss=str(dss), multipliers=str(mpath))
    out["annual_8760h"] = jsonable(entry)
    out["opendss_8760h"] = ls
    return out


# ============================================================================ what-ifs

def _constant_units(limit_w: float, unit_w: float) -> int | None:
    """Units of constant power within the limit; None when the assumption has no value (a
    model without a phase look-up table)."""
    if not (math.isfinite(unit_w) and unit_w > 0):
        return None
    return oversubscription.units_within_constant(limit_w, unit_w)


def oversubscribe(run: RunOutput, library, options: OversubscriptionOptions) -> dict:
    """Units admitted under ``limit_w`` per serving configuration: trace model and the TDP,
    mean-power and phase-LUT assumptions."""
    if options.level not in _CHILD:
        raise DistgenError(f"oversubscription level must be one of {sorted(_CHILD)}, got "
                           f"{options.level!r}")
    unit_level = _CHILD[options.level]
    pool = finest_level_series(run, unit_level)
    if options.resolution_s is not None and options.resolution_s != pool.resolution_s:
        coarse = (loadprofile.block_means(pool.power_w, pool.resolution_s, options.resolution_s)
                  if options.resolution_s > pool.resolution_s else None)
        if coarse is None:
            raise DistgenError(f"--limit-resolution-s {options.resolution_s:g}: the run's "
                               f"{unit_level} are at {pool.resolution_s:g} s; give a whole "
                               "multiple of that, within the run's duration")
        pool = EntitySeries(unit_level, float(options.resolution_s), pool.ids,
                            np.arange(coarse.shape[1]) * options.resolution_s, coarse)
    rows = run.entity_rows(unit_level, pool.ids)
    serving = row_serving(run)
    result = {"limit_w": options.limit_w, "level": options.level, "unit": unit_level,
              "percentile": options.percentile, "repetitions": options.repetitions,
              "seed": options.seed, "resolution_s": pool.resolution_s, "by_serving": {},
              "reference_racks_600kw_row": REFERENCE_RACKS}
    for k, cfg in enumerate(sorted(set(serving))):
        sel = np.array([serving[int(r)] == cfg for r in rows])
        if not sel.any():
            continue
        units = pool.power_w[sel]
        base = unit_baselines(run, library, unit_level, cfg)
        rng = np.random.default_rng([options.seed, k])
        adm = oversubscription.admissible_units(units, options.limit_w, rng=rng,
                                                percentile=options.percentile,
                                                repetitions=options.repetitions)
        result["by_serving"][cfg] = jsonable({
            "pool_units": adm.pool_units, "gpus_per_unit": base.gpus,
            "unit_tdp_w": base.tdp_w, "unit_mean_baseline_w": base.mean_w,
            "unit_lut_busiest_w": base.lut_w,
            "unit_run_mean_w": float(units.mean()),
            "unit_run_peak_max_w": float(units.max(axis=1).max()),
            "units_tdp": _constant_units(options.limit_w, base.tdp_w),
            "units_mean": _constant_units(options.limit_w, base.mean_w),
            "units_lut": _constant_units(options.limit_w, base.lut_w),
            "units_model": adm.units,
            "with_replacement_from": adm.with_replacement_from,
            "peak_percentile_w_by_n": adm.peak_percentile_w,
            "peak_mean_w_by_n": adm.peak_mean_w})
    return result


def _window_offset_s(run: RunOutput, text: str) -> float:
    start = run.start_time
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    try:
        if m:
            when = start.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0,
                                 microsecond=0)
            if when < start:
                when += dt.timedelta(days=1)
        else:
            when = dt.datetime.fromisoformat(text.strip()).replace(tzinfo=None)
    except ValueError:
        raise DistgenError(f"--dr-start {text!r} is neither HH:MM nor an ISO date-time") from None
    offset = (when - start).total_seconds()
    if not 0 <= offset < run.duration_s:
        end = start + dt.timedelta(seconds=run.duration_s)
        raise DistgenError(f"--dr-start {text!r} ({when.isoformat()}) is outside the run "
                           f"({start.isoformat()} to {end.isoformat()})")
    return offset


def cap_gpus(run: RunOutput, library, gpu_cap_w: float
             ) -> tuple[dict, capping.CappedTrace, EntitySeries]:
    """A per-GPU cap applied at the lowest level the run wrote (deployments, servers, racks or
    rows), each entity capped at its GPUs x cap (+ its largest non-GPU power when the level
    includes it)."""
    if not (gpu_cap_w > 0 and math.isfinite(gpu_cap_w)):
        raise DistgenError(f"--gpu-cap-w must be a positive number of watts, got {gpu_cap_w}")
    level = next(lv for lv in ("deployments", "servers", "racks", "rows")
                 if lv in run.levels())
    ent = run.entities(level)
    f = run.facility()
    serving = row_serving(run)
    rows = run.entity_rows(level, ent.ids)
    non_gpu = f.get("non_gpu") or {}
    non_gpu_max = float(non_gpu.get("idle_w", 0.0)) + float(non_gpu.get("activity_w", 0.0))
    gps = int(f["gpus_per_server"])
    servers_in = {"servers": 1, "racks": int(f["servers_per_rack"]),
                  "rows": int(f["servers_per_rack"]) * int(f["racks_per_row"])}
    if level == "deployments":
        cap = np.array([library.models[serving[int(r)]].tp * gpu_cap_w for r in rows])
        note = "deployment power is GPU-only: each deployment capped at TP x cap"
    else:
        n = servers_in[level]
        cap = np.full(ent.ids.size, n * (gps * gpu_cap_w + non_gpu_max))
        note = (f"{level} are the finest IT level in this run: each is capped as one pool at "
                f"{n} server(s) x ({gps} GPUs x cap + {non_gpu_max:g} W largest non-GPU power); "
                "GPUs of one entity share the headroom, so the cap binds less than per GPU")
    res = capping.fluid_cap(ent.power_w, cap[:, None], ent.resolution_s)
    site_before = ent.power_w.sum(axis=0)
    site_after = res.served_w.sum(axis=0)
    served_back = res.served_back_j
    weights = np.where(np.isfinite(res.mean_delay_s), served_back, 0.0)
    mean_delay = (float((np.nan_to_num(res.mean_delay_s) * weights).sum() / weights.sum())
                  if weights.sum() > 0 else None)
    doc = {"gpu_cap_w": gpu_cap_w, "level": level, "resolution_s": ent.resolution_s,
           "entities": int(ent.ids.size), "entity_cap_w": _stats(cap), "note": note,
           "level_sum_peak_before_w": float(site_before.max()),
           "level_sum_peak_after_w": float(site_after.max()),
           "peak_reduction_w": float(site_before.max() - site_after.max()),
           "entity_peak_before_max_w": float(res.peak_before_w.max()),
           "entity_peak_after_max_w": float(res.peak_after_w.max()),
           "energy_before_j": float(res.energy_before_j.sum()),
           "energy_after_j": float(res.energy_after_j.sum()),
           "energy_deferred_j": float(res.deferred_j.sum()),
           "energy_served_back_j": float(served_back.sum()),
           "energy_still_deferred_j": float(res.still_deferred_j.sum()),
           "mean_delay_s": mean_delay,
           "max_delay_s": jsonable(np.nanmax(res.max_delay_s)) if np.isfinite(
               res.max_delay_s).any() else None,
           "capped_entity_steps_pct": 100.0 * float(res.capped_steps.sum()) / res.served_w.size}
    return jsonable(doc), res, ent


def demand_response(run: RunOutput, options: CappingOptions
                    ) -> tuple[dict, capping.CappedTrace, SiteSeries, tuple[int, int]]:
    """A site-level cap on facility power during a window (see CappingOptions)."""
    if (options.dr_reduction_pct is None) == (options.dr_cap_w is None):
        raise DistgenError("a demand-response window needs exactly one of --dr-reduction-pct "
                           "and --dr-cap-w")
    if options.dr_reduction_pct is not None and not 0 < options.dr_reduction_pct < 100:
        raise DistgenError(f"--dr-reduction-pct must be in (0, 100), got "
                           f"{options.dr_reduction_pct}")
    if options.dr_cap_w is not None and not options.dr_cap_w >= 0:
        raise DistgenError(f"--dr-cap-w must be >= 0, got {options.dr_cap_w}")
    if not options.dr_duration_s > 0:
        raise DistgenError(f"--dr-hours must be positive, got {options.dr_duration_s / 3600:g}")
    site = run.site()
    p = site.facility_power_w
    res = site.resolution_s
    offset = _window_offset_s(run, options.dr_start)
    i0 = int(round(offset / res))
    i1 = min(p.size, i0 + int(round(options.dr_duration_s / res)))
    cap = np.full(p.size, np.inf)
    if options.dr_reduction_pct is not None:
        cap[i0:i1] = (1.0 - options.dr_reduction_pct / 100.0) * p[i0:i1]
    else:
        cap[i0:i1] = options.dr_cap_w
    out = capping.fluid_cap(p, cap, res, catch_up_w=options.dr_catch_up_w)
    back = out.backlog_j
    after = np.flatnonzero(back[i1:] <= 0) if i1 < p.size else np.array([], dtype=np.int64)
    drain = float((after[0] + 1) * res) if after.size else None
    if i1 < p.size and back[i1 - 1] <= 0:
        drain = 0.0
    window_start = run.start_time + dt.timedelta(seconds=i0 * res)
    doc = {"window_start_local": window_start.isoformat(), "window_s": (i1 - i0) * res,
           "window_clipped_to_run_end": bool(i0 + int(round(options.dr_duration_s / res))
                                             > p.size),
           "reduction_pct": options.dr_reduction_pct, "cap_w": options.dr_cap_w,
           "catch_up_w": float(options.dr_catch_up_w if options.dr_catch_up_w is not None
                               else p.max()),
           "power": "facility", "resolution_s": res,
           "peak_before_w": float(out.peak_before_w), "peak_after_w": float(out.peak_after_w),
           "peak_reduction_w": float(out.peak_before_w - out.peak_after_w),
           "window_peak_before_w": float(p[i0:i1].max()),
           "window_peak_after_w": float(out.served_w[i0:i1].max()),
           "window_energy_before_j": float(p[i0:i1].sum() * res),
           "window_energy_after_j": float(out.served_w[i0:i1].sum() * res),
           "energy_before_j": float(out.energy_before_j),
           "energy_after_j": float(out.energy_after_j),
           "energy_deferred_j": float(out.deferred_j),
           "energy_served_back_j": float(out.served_back_j),
           "energy_still_deferred_j": float(out.still_deferred_j),
           "mean_delay_s": out.mean_delay_s, "max_delay_s": out.max_delay_s,
           "drain_time_after_window_s": drain,
           "rebound_peak_w": float(out.served_w[i1:].max()) if i1 < p.size else None}
    return jsonable(doc), out, site, (i0, i1)


# ============================================================================ the document

@dataclass
class Analysis:
    """The JSON document plus the arrays the report's figures need (not serialised)."""

    doc: dict
    run: RunOutput
    gpu_cap: tuple | None = None
    demand_response: tuple | None = None


def analyze_run(path: str | Path, options: AnalysisOptions | None = None, *,
                library_dir: str | Path | None = None) -> Analysis:
    """Analyse the run folder at ``path`` (see the module docstring)."""
    options = options or AnalysisOptions()
    run = RunOutput.open(path)
    library, note = load_library(run, library_dir)
    folder = None
    if options.write_exports:
        folder = Path(options.exports_dir) if options.exports_dir else run.path / "analysis"
        folder.mkdir(parents=True, exist_ok=True)
    doc = {"format": ANALYSIS_FORMAT, "version": ANALYSIS_VERSION,
           "run": {"path": str(run.path), "config_hash": run.config_hash, "seed": run.seed,
                   "start_time": str(run.grid["start_time"]), "duration_s": run.duration_s,
                   "topology": run.topology, "row_serving": row_serving(run),
                   "levels": {lv: run.resolutions(lv) for lv in run.levels()},
                   "model_library_version": library.version},
           "notes": [note] if note else []}
    doc["levels"] = characterise_levels(run, library)
    doc["aggregation"] = aggregation(run, options.oversubscription.seed)
    doc["exports"] = exports(run, folder, options.annual)
    doc["oversubscription"] = oversubscribe(run, library, options.oversubscription)
    analysis = Analysis(doc=doc, run=run)
    cap = options.capping
    doc["capping"] = {}
    if cap.gpu_cap_w is not None:
        d, res, ent = cap_gpus(run, library, cap.gpu_cap_w)
        doc["capping"]["per_gpu"] = d
        analysis.gpu_cap = (res, ent)
    if cap.dr_start is not None:
        d, res, site, window = demand_response(run, cap)
        doc["capping"]["demand_response"] = d
        analysis.demand_response = (res, site, window)
    elif cap.dr_reduction_pct is not None or cap.dr_cap_w is not None:
        raise DistgenError("--dr-reduction-pct / --dr-cap-w need --dr-start")
    analysis.doc = jsonable(doc)
    return analysis


# ============================================================================ text output

def _kw(w) -> str:
    return "-" if w is None else f"{w / 1e3:,.1f}"


def _num(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def site_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    """The site characterisation as table cells (shared by the CLI and the report)."""
    header = ["series", "res [s]", "peak [kW]", "mean [kW]", "PAR", "load factor",
              "15-min demand [kW]", "P50/P95/P99 [kW]", "ramp up 1min/15min/1h [kW]",
              "ramp down 1min/15min/1h [kW]"]
    rows = []
    for kind in ("facility", "it"):
        c = doc["levels"]["site"][kind]
        rows.append([f"site {'IT' if kind == 'it' else kind}", f"{c['resolution_s']:g}",
                     _kw(c["peak_w"]), _kw(c["mean_w"]), _num(c["peak_to_average"]),
                     _num(c["load_factor"]), _kw(c["demand_peak_15min_w"]),
                     "/".join(_kw(c[k]) for k in ("p50_w", "p95_w", "p99_w")),
                     "/".join(_kw(c[f"ramp_up_max_w_per_{w}"]) for w in ("1min", "15min", "1h")),
                     "/".join(_kw(c[f"ramp_down_max_w_per_{w}"])
                              for w in ("1min", "15min", "1h"))])
    return header, rows


def entity_rows_table(doc: dict) -> tuple[list[str], list[list[str]]]:
    header = ["level", "res [s]", "entities", "peak max/mean [kW]", "mean per entity [kW]",
              "PAR max", "load factor min", "ramp up 15min max [kW]", "coincidence",
              "diversity"]
    rows = []
    for level in ENTITY_LEVELS:
        d = doc["levels"].get(level)
        if d is None:
            continue
        pe = d["per_entity"]
        rows.append([level, f"{d['resolution_s']:g}", str(d["entities"]),
                     f"{_kw(pe['peak_w']['max'])}/{_kw(pe['peak_w']['mean'])}",
                     _kw(pe["mean_w"]["mean"]), _num(pe["peak_to_average"]["max"]),
                     _num(pe["load_factor"]["min"]),
                     _kw(pe["ramp_up_max_w_per_15min"]["max"]),
                     _num(d["coincidence"]["coincidence_factor"]),
                     _num(d["coincidence"]["diversity_factor"])])
    return header, rows


def oversubscription_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    o = doc["oversubscription"]
    unit = o["unit"]
    header = ["serving", f"{unit} in run", f"TDP [kW/{unit[:-1]}]", f"mean [kW/{unit[:-1]}]",
              f"LUT [kW/{unit[:-1]}]", f"{unit}: TDP", "mean", "LUT",
              f"trace P{o['percentile']:g}"]
    rows = []
    for cfg, r in o["by_serving"].items():
        model = str(r["units_model"])
        if r["with_replacement_from"] and r["units_model"] >= r["with_replacement_from"]:
            model += "*"
        rows.append([cfg, str(r["pool_units"]), _kw(r["unit_tdp_w"]),
                     _kw(r["unit_mean_baseline_w"]), _kw(r["unit_lut_busiest_w"]),
                     str(r["units_tdp"]), str(r["units_mean"]), str(r["units_lut"]), model])
    return header, rows


def capping_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    header = ["what-if", "peak before [kW]", "peak after [kW]", "energy deferred [kWh]",
              "still deferred at end [kWh]", "mean delay [s]", "max delay [s]"]
    rows = []
    for key, label in (("per_gpu", "per-GPU cap"), ("demand_response", "site window cap")):
        c = doc.get("capping", {}).get(key)
        if not c:
            continue
        if key == "per_gpu":
            label = f"{c['gpu_cap_w']:g} W per GPU ({c['level']})"
            before, after = c["level_sum_peak_before_w"], c["level_sum_peak_after_w"]
        else:
            what = (f"-{c['reduction_pct']:g} %" if c["reduction_pct"] is not None
                    else f"{c['cap_w'] / 1e3:,.0f} kW")
            label = f"site {what}, {c['window_s'] / 3600:g} h from {c['window_start_local']}"
            before, after = c["window_peak_before_w"], c["window_peak_after_w"]
        rows.append([label, _kw(before), _kw(after), _num(c["energy_deferred_j"] / _J_PER_KWH,
                                                          "{:,.1f}"),
                     _num(c["energy_still_deferred_j"] / _J_PER_KWH, "{:,.1f}"),
                     _num(c["mean_delay_s"], "{:,.0f}"), _num(c["max_delay_s"], "{:,.0f}")])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header] + rows
    width = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in width))
    return "\n".join(lines)


def format_analysis(doc: dict) -> str:
    """The analysis as readable text tables (``distgen analyze`` stdout)."""
    r = doc["run"]
    t = r["topology"]
    out = [f"run {r['path']}  config {r['config_hash'][:12]}  seed {r['seed']}",
           f"{t['rows']} rows, {t['racks']} racks, {t['servers']} servers, {t['gpus']} GPUs; "
           f"{r['duration_s'] / 3600:g} h from {r['start_time']}", ""]
    out += [text_table(*site_rows(doc)), ""]
    if any(lv in doc["levels"] for lv in ENTITY_LEVELS):
        out += [text_table(*entity_rows_table(doc)), ""]
    o = doc["oversubscription"]
    out.append(f"oversubscription: {o['unit']} per {o['level'][:-1]} within {o['limit_w'] / 1e3:,.0f}"
               f" kW (P{o['percentile']:g} of the {o['level'][:-1]} peak over {o['repetitions']}"
               f" draws of {o['resolution_s']:g} s {o['unit']}; * = draws repeat {o['unit']})")
    out += [text_table(*oversubscription_rows(doc)), ""]
    if doc.get("capping"):
        out += [text_table(*capping_rows(doc)), ""]
    e = doc["exports"]
    q = e.get("site_15min_csv", {})
    if "facility_energy_j" in q:
        out.append(f"15-min CSV {q['path']}: {q['facility_energy_j'] / _J_PER_KWH:,.1f} kWh "
                   f"(fine trace {q['fine_trace_facility_energy_j'] / _J_PER_KWH:,.1f} kWh)")
    elif "skipped" in q:
        out.append(f"15-min CSV: skipped ({q['skipped']})")
    a = e.get("annual_8760h", {})
    if "skipped" in a:
        out.append(f"8760-h profile: skipped ({a['skipped']})")
    else:
        out.append(f"8760-h profile {a.get('path', '(not written)')}: "
                   f"{a['facility_energy_j'] / 3.6e12:,.3f} GWh, peak {_kw(a['facility_peak_w'])} kW")
    for key in ("opendss_15min", "opendss_8760h"):
        if key in e and e[key].get("dss"):
            out.append(f"OpenDSS loadshape {e[key]['dss']} (base {e[key]['base_kw']:,.1f} kW)")
    for note in doc.get("notes", []):
        out.append(f"note: {note}")
    return "\n".join(out)


__all__ = ["AnalysisOptions", "AnnualOptions", "OversubscriptionOptions", "CappingOptions",
           "Analysis", "analyze_run", "format_analysis", "jsonable", "unit_baselines"]
