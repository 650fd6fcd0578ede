"""``distgen report OUT_DIR``: figures and a Markdown + HTML report of one run.

The numbers in the report's tables come from the analysis document (:mod:`distgen.planning`),
the same one ``distgen analyze --json`` writes; the figures draw the series behind them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distgen import __version__
from distgen.analysis import loadprofile
from distgen.errors import DistgenError
from distgen.io.outdir import write_json_atomic
from distgen.io.runoutput import ENTITY_LEVELS
from distgen.planning.run import (Analysis, capping_rows, entity_rows_table, oversubscription_rows,
                              site_rows)
from distgen.report import figures
from distgen.report.document import Document

ZOOM_S = 600.0
LDC_POINTS = 400
LDC_MAX_CURVES = 100


def _stamp(doc: dict) -> str:
    r = doc["run"]
    return f"config {r['config_hash'][:16]} | seed {r['seed']} | distgen {__version__}"


def _hash(doc: dict) -> str:
    return f"config `{doc['run']['config_hash'][:12]}`"


def _fig_site_power(analysis: Analysis, folder: Path, stamp: str):
    run = analysis.run
    series = []
    for res in run.resolutions("site"):
        s = run.site(res)
        series.append((res, s.time_s, s.facility_power_w))
    finest = series[0]
    if not any(abs(r - 3600.0) < 1e-9 for r, _, _ in series):
        hourly = loadprofile.block_means(finest[2], finest[0], 3600.0)
        if hourly is not None:
            series.append((3600.0, np.arange(hourly.size) * 3600.0, hourly))
    zoom = zoom_coarse = None
    res, t, p = finest
    if t.size * res > 2 * ZOOM_S and res < 60:
        n = int(ZOOM_S / res)
        i = int(np.argmax(p))
        a = min(max(0, i - n // 2), t.size - n)
        zoom = (res, t[a:a + n], p[a:a + n])
        coarser = [s for s in series if s[0] > res and s[0] <= ZOOM_S / 4]
        if coarser:
            r2, t2, p2 = coarser[0]
            sel = (t2 >= t[a]) & (t2 < t[a] + n * res)
            if sel.any():
                zoom_coarse = (r2, t2[sel], p2[sel])
    path = figures.site_power(folder / "site_power.png", start=run.start_time, series=series,
                              zoom=zoom, zoom_coarse=zoom_coarse, stamp=stamp)
    caption = ("Site facility power (IT x PUE) at every resolution the run wrote "
               "(block means of the 0.25 s grid, so each has the same energy)"
               + (", with the hourly means computed from the finest series" if len(series)
                  > len(run.resolutions("site")) else "")
               + (f"; below, {ZOOM_S / 60:g} minutes around the {finest[0]:g} s peak"
                  if zoom else ""))
    return path, caption


def _fig_load_duration(analysis: Analysis, folder: Path, stamp: str):
    run = analysis.run
    site = run.site()
    panels = [("site facility and IT", site.resolution_s,
               [loadprofile.load_duration_curve(site.facility_power_w, LDC_POINTS),
                loadprofile.load_duration_curve(site.it_power_w, LDC_POINTS)],
               ["facility", "IT"])]
    for level in ENTITY_LEVELS:
        if level not in run.levels():
            continue
        ent = run.entities(level)
        pick = np.unique(np.linspace(0, ent.ids.size - 1, min(ent.ids.size, LDC_MAX_CURVES))
                         .round().astype(int))
        panels.append((level, ent.resolution_s,
                       [loadprofile.load_duration_curve(ent.power_w[i], LDC_POINTS)
                        for i in pick], [f"{level[:-1]} {ent.ids[i]}" for i in pick]))
    path = figures.load_duration(folder / "load_duration.png", panels=panels, stamp=stamp)
    return path, ("Load-duration curves: the share of time each series is at or above a power, "
                  "per level at its finest resolution (entity levels: "
                  f"one curve per entity, at most {LDC_MAX_CURVES})")


def _fig_ramps(analysis: Analysis, folder: Path, stamp: str):
    site = analysis.run.site()
    ramps = []
    for label, window in (("1 min", 60.0), ("15 min", 900.0)):
        m = loadprofile.block_means(site.facility_power_w, site.resolution_s, window)
        if m is not None and m.size >= 2:
            ramps.append((label, np.diff(m)))
    if not ramps:
        return None, None
    path = figures.ramp_distribution(folder / "ramps.png", ramps=ramps, stamp=stamp)
    return path, ("Distribution of site facility ramps: changes between consecutive "
                  + " and ".join(r[0] for r in ramps) + " means")


def _fig_peaks(analysis: Analysis, folder: Path, stamp: str, breaker_w, breaker_level):
    panels = []
    for level in ("rows", "racks"):
        d = analysis.doc["levels"].get(level)
        if d is None:
            continue
        table = d["table"]
        panels.append({"level": level, "resolution_s": d["resolution_s"],
                       "ids": [r["id"] for r in table], "peak_w": [r["peak_w"] for r in table],
                       "tdp_w": [r["tdp_baseline_w"] for r in table],
                       "mean_w": [r["mean_baseline_w"] for r in table],
                       "breaker_w": breaker_w if breaker_level == level else None})
    if not panels:
        return None, None
    path = figures.peaks_vs_limits(folder / "peaks.png", panels=panels, stamp=stamp)
    return path, ("Generated peak of each row and rack (at the level's finest resolution) "
                  "against the constant TDP and mean-power baselines"
                  + (f" and a {breaker_level[:-1]} breaker of {breaker_w / 1e3:,.1f} kW"
                     if breaker_w else ""))


def write_run_report(analysis: Analysis, folder: str | Path, *, breaker_w: float | None = None,
                     breaker_level: str = "racks") -> dict:
    """Write the figures, ``report.md``, ``report.html`` and ``analysis.json`` into ``folder``.

    Returns
    -------
    dict: ``markdown``, ``html``, ``json`` paths and ``figures`` (list of paths).
    """
    if breaker_w is not None and not breaker_w > 0:
        raise DistgenError(f"--breaker-w must be a positive number of watts, got {breaker_w}")
    if breaker_level not in ("racks", "rows"):
        raise DistgenError(f"--breaker-level must be racks or rows, got {breaker_level!r}")
    if breaker_w is not None and breaker_level not in analysis.doc["levels"]:
        raise DistgenError(f"--breaker-level {breaker_level}: the run has no {breaker_level} "
                           "series")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = analysis.doc
    run = analysis.run
    stamp = _stamp(doc)
    r = doc["run"]
    t = r["topology"]
    report = Document(f"distgen run report: {Path(r['path']).name}")
    report.para(f"Run `{r['path']}`, {_hash(doc)} (full hash `{r['config_hash']}`), seed "
                f"{r['seed']}, model library `{r['model_library_version']}`. {t['rows']} rows, "
                f"{t['racks']} racks, {t['servers']} servers, {t['gpus']} GPUs, "
                f"{t['deployments']} deployments; {r['duration_s'] / 3600:g} h from "
                f"{r['start_time']} (site-local time). Levels and resolutions: "
                + "; ".join(f"{lv} {', '.join(f'{x:g} s' for x in rs)}"
                            for lv, rs in r["levels"].items()) + ".")
    report.para("Every number below is in `analysis.json` next to this file, written by the "
                "same code as `distgen analyze --json`. Definitions: docs/PLANNING.md.")

    report.heading("Site power")
    path, cap = _fig_site_power(analysis, folder, stamp)
    report.figure(path, f"{cap}. {_hash(doc)}.")

    report.heading("Utility-facing characterisation")
    report.table(*site_rows(doc))
    report.para("PAR: peak-to-average of the samples; load factor: average / 15-minute demand "
                "peak; P50/P95/P99: power not exceeded that share of the time; ramps: largest "
                "change between consecutive block means.")
    if any(lv in doc["levels"] for lv in ENTITY_LEVELS):
        report.table(*entity_rows_table(doc))
        report.para("Per entity level: statistics over the entities; coincidence = peak of the "
                    "level's sum / sum of the entities' own peaks, diversity = its reciprocal.")
    path, cap = _fig_load_duration(analysis, folder, stamp)
    report.figure(path, f"{cap}. {_hash(doc)}.")
    path, cap = _fig_ramps(analysis, folder, stamp)
    if path:
        report.figure(path, f"{cap}. {_hash(doc)}.")

    report.heading("Peaks against baselines" + (" and breakers" if breaker_w else ""))
    path, cap = _fig_peaks(analysis, folder, stamp, breaker_w, breaker_level)
    if path:
        report.figure(path, f"{cap}. {_hash(doc)}.")
    if breaker_w:
        table = doc["levels"][breaker_level]["table"]
        over = [row for row in table if row["peak_w"] > breaker_w]
        report.para(f"{len(over)} of {len(table)} {breaker_level} peak above the "
                    f"{breaker_w / 1e3:,.1f} kW breaker"
                    + (": " + ", ".join(str(row["id"]) for row in over[:20]) if over else "")
                    + ".")

    report.heading("Aggregation smoothing")
    agg = doc["aggregation"]
    if agg["points"]:
        path = figures.aggregation(folder / "aggregation.png", points=agg["points"],
                                   random_groups=agg["random_server_groups"],
                                   reference=agg["reference"], resolution_s=agg["resolution_s"],
                                   stamp=stamp)
        report.figure(path, "Coefficient of variation (std / mean over time) of IT power "
                      f"summed over N servers, all at {agg['resolution_s']:g} s, with the "
                      "1/sqrt(N) line of independent servers and the reference facility's "
                      f"values. {_hash(doc)}.")
        report.table(["level", "servers per entity", "entities", "CV mean", "CV min", "CV max"],
                     [[p["level"], p["servers"], p["entities"], f"{p['cv_mean']:.3f}",
                       f"{p['cv_min']:.3f}", f"{p['cv_max']:.3f}"] for p in agg["points"]])

    report.heading("Oversubscription")
    o = doc["oversubscription"]
    report.para(f"{o['unit'].capitalize()} admitted per {o['level'][:-1]} under "
                f"{o['limit_w'] / 1e3:,.0f} kW. Trace model: P{o['percentile']:g} of the "
                f"{o['level'][:-1]} peak over {o['repetitions']} random orders of the run's "
                f"{o['resolution_s']:g} s {o['unit']} of one serving configuration (seed "
                f"{o['seed']}); * marks answers whose groups repeat {o['unit']} because the "
                "run has fewer. TDP, mean and LUT: constant power per unit (GPUs at "
                "nameplate; deployments at their training mean; deployments in the busiest "
                "phase of the look-up table), each with its non-GPU power. The published "
                "reference (600 kW row, DGX-class racks): TDP 23, mean 42, LUT 52, trace "
                "model 57 racks.")
    report.table(*oversubscription_rows(doc))
    curves = [{"label": cfg, "peak_w_by_n": v["peak_percentile_w_by_n"],
               "unit_w": {"TDP": v["unit_tdp_w"], "mean": v["unit_mean_baseline_w"],
                          "LUT": v["unit_lut_busiest_w"]},
               "answers": {"TDP": v["units_tdp"], "mean": v["units_mean"],
                           "LUT": v["units_lut"], "trace": v["units_model"]}}
              for cfg, v in o["by_serving"].items()]
    if curves:
        path = figures.oversubscription(folder / "oversubscription.png", curves=curves,
                                        limit_w=o["limit_w"], unit=o["unit"], level=o["level"],
                                        percentile=o["percentile"], stamp=stamp)
        report.figure(path, f"{o['level'][:-1].capitalize()} power against the number of "
                      f"{o['unit']} per serving configuration: P{o['percentile']:g} of the "
                      f"generated {o['level'][:-1]} peak, and N times the constant {o['unit'][:-1]}"
                      f" power of each assumption, with the limit; dots mark each answer. "
                      f"{_hash(doc)}.")

    if doc.get("capping"):
        report.heading("Power capping and demand response")
        report.table(*capping_rows(doc))
        report.para("Post-hoc fluid approximation: power above the cap is deferred work, "
                     "served later (first in, first out) whenever power is below the ceiling, "
                     "so energy is conserved and no peak rises; delays are those of the "
                     "deferred energy. It leaves out the non-linear power-throughput curve under "
                     "a cap and latency-dependent user behaviour (docs/PLANNING.md).")
        pg = doc["capping"].get("per_gpu")
        if pg:
            report.para(f"Per-GPU cap: {pg['note']}.")
        if analysis.demand_response is not None:
            res, site, (i0, i1) = analysis.demand_response
            c = doc["capping"]["demand_response"]
            path = figures.capping(
                folder / "demand_response.png", start=run.start_time, time_s=site.time_s,
                before_w=site.facility_power_w, after_w=res.served_w, backlog_j=res.backlog_j,
                window_s=(i0 * site.resolution_s, i1 * site.resolution_s),
                resolution_s=site.resolution_s,
                title="Site facility power with a demand-response cap and the deferred work",
                stamp=stamp)
            report.figure(path, f"Facility power without and with the cap window from "
                          f"{c['window_start_local']} ({c['window_s'] / 3600:g} h), and the "
                          f"deferred energy waiting to be served. {_hash(doc)}.")

    report.heading("Exports")
    e = doc["exports"]
    lines = []
    q = e.get("site_15min_csv", {})
    if "facility_energy_j" in q:
        lines.append(f"15-minute interval CSV `{q['path']}`: {q['intervals']} intervals, "
                     f"{q['facility_energy_j'] / 3.6e6:,.1f} kWh (fine trace over the same "
                     f"intervals: {q['fine_trace_facility_energy_j'] / 3.6e6:,.1f} kWh)")
    elif "skipped" in q:
        lines.append(f"15-minute interval CSV: skipped ({q['skipped']})")
    a = e.get("annual_8760h", {})
    lines.append(f"8760-hour profile: skipped ({a['skipped']})" if "skipped" in a else
                 f"8760-hour profile `{a.get('path')}` from {a['start_date']}: "
                 f"{a['facility_energy_j'] / 3.6e9:,.1f} MWh, peak "
                 f"{a['facility_peak_w'] / 1e3:,.1f} kW")
    for key in ("opendss_15min", "opendss_8760h"):
        if e.get(key, {}).get("dss"):
            lines.append(f"OpenDSS loadshape `{e[key]['dss']}` ({e[key]['npts']} points, base "
                         f"{e[key]['base_kw']:,.1f} kW)")
    for line in lines:
        report.para(line + ".")
    for note in doc.get("notes", []):
        report.para(f"Note: {note}")

    js = write_json_atomic(folder / "analysis.json", doc)
    md, page = report.write(folder)
    return {"markdown": md, "html": page, "json": js, "figures": report.figures()}

