"""Assemble committed shard parts into the run's output files and summary.

The site is the sum of every shard's (partial) row sums; rows cut by a shard boundary are summed
across shards; racks, servers and deployments are concatenated. All sums are integer
milliwatts until the final conversion to mean watts, so the result is the same for any shard
count. Reads are windowed over time so memory stays bounded for long runs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from distgen.config.serving_mix import mix_report
from distgen.config.validate import start_hour_of_day, start_time_utc, utc_offset_s
from distgen.engine.resample import block_means_w, coarsen_sums
from distgen.errors import DistgenError
from distgen.io.csvout import write_site_csv
from distgen.io.entities import POWER_NOTE, write_entity_table
from distgen.io.manifest import file_digest
from distgen.io.parts import completed_shards, open_part
from distgen.io.series import SeriesWriter
from distgen.io.table import write_table
from distgen.core.grid import INTERVAL_S, steps_of
from distgen.pipeline import RunPlan
from distgen.results import (LevelStats, RunSummary, SeriesStats, ShardSummary, SiteStats,
                             WorkloadSummary, by_config_of, resolution_label)

WINDOW_ELEMENTS = 1 << 21
ENTITY_COLUMN = {"rows": "row_id", "racks": "rack_id", "servers": "server_id",
                 "deployments": "deployment_id"}
FIFTEEN_MIN_STEPS = 3600
ENTITIES_FILE = "entities.parquet"
SHARDS_FILE = "shards.parquet"
ROW_STATS_FILE = "row_stats.parquet"


def pue_per_block(plan: RunPlan, factor: int, n_blocks: int) -> np.ndarray:
    """PUE of each block of ``factor`` steps: constant, or the hourly profile at the block start
    (site local hour of day)."""
    f = plan.config.facility
    if f.pue_hourly is None:
        return np.full(n_blocks, f.pue)
    hours = start_hour_of_day(plan.config) + np.arange(n_blocks) * factor * INTERVAL_S / 3600.0
    return np.asarray(f.pue_hourly)[np.floor(hours).astype(np.int64) % 24]


def _check_parts(plan: RunPlan, parts_dir: Path) -> None:
    done = completed_shards(parts_dir)
    missing = [s.index for s in plan.shards if s.index not in done]
    if missing:
        raise DistgenError(f"shards {missing} have no committed results in {parts_dir}")
    for s in plan.shards:
        summary = done[s.index].get("summary", {})
        if (summary.get("rack_start"), summary.get("rack_stop")) != (s.rack_start, s.rack_stop):
            raise DistgenError(f"shard {s.index} in {parts_dir} covers other racks than this "
                               "plan; the folder holds parts of another run")


def _windows(n_blocks: int, n_entities: int):
    step = max(1, WINDOW_ELEMENTS // max(n_entities, 1))
    for a in range(0, n_blocks, step):
        yield a, min(n_blocks, a + step)


def _site_sums(plan: RunPlan, parts_dir: Path) -> np.ndarray:
    name = f"rows_{plan.site_factor}"
    total = np.zeros(plan.n_steps // plan.site_factor, np.int64)
    for s in plan.shards:
        values, _ = open_part(parts_dir, s.index, name)
        for a, b in _windows(values.shape[0], values.shape[1]):
            total[a:b] += np.asarray(values[a:b]).sum(axis=1)
        del values
    return total


def _series_stats(power_w: np.ndarray, resolution_s: float) -> SeriesStats:
    mean = float(power_w.mean())
    peak = float(power_w.max())
    return SeriesStats(energy_j=float(power_w.sum() * resolution_s), mean_w=mean, peak_w=peak,
                       min_w=float(power_w.min()),
                       peak_to_average=peak / mean if mean > 0 else None)


def max_ramp_w(power_w: np.ndarray) -> float:
    """[W] the largest change, up or down, between consecutive values of a series."""
    return float(np.abs(np.diff(power_w)).max())


def _write_site(plan: RunPlan, out: Path, site_sums: np.ndarray,
                grid: dict) -> tuple[list, list[SiteStats], float | None]:
    cfg = plan.config
    feed = plan.site_factor
    it_feed_w = block_means_w(site_sums, feed)
    facility_feed_w = it_feed_w * pue_per_block(plan, feed, it_feed_w.size)
    files, stats, ramp = [], [], None
    targets = [(f, "parquet") for f in plan.site_factors]
    if cfg.output.site_csv_resolution_s is not None:
        targets.append((steps_of(cfg.output.site_csv_resolution_s), "csv"))
    for factor, kind in targets:
        ratio = factor // feed
        it_w = block_means_w(coarsen_sums(site_sums, ratio), factor)
        facility_w = coarsen_sums(facility_feed_w, ratio) / ratio
        resolution_s = factor * INTERVAL_S
        time_s = np.arange(it_w.size) * resolution_s
        label = resolution_label(resolution_s)
        if kind == "csv":
            path = out / f"site_{label}.csv"
            write_site_csv(path, start_time=cfg.start_time, time_s=time_s, interval_s=resolution_s,
                           it_power_w=it_w, facility_power_w=facility_w)
            files.append({"path": path.name, "level": "site", "rows": int(it_w.size),
                          "sha256": file_digest(path), "bytes": path.stat().st_size,
                          "resolution_s": resolution_s, "format": "csv"})
            continue
        with SeriesWriter(out / f"site_{label}.parquet", level="site", resolution_s=resolution_s,
                          value_columns=["it_power_w", "facility_power_w"], entity_column=None,
                          units={"it_power_w": "W", "facility_power_w": "W"}, grid=grid) as w:
            w.write(time_s, {"it_power_w": it_w, "facility_power_w": facility_w})
            info = w.close()
        files.append({**info, "resolution_s": resolution_s, "format": "parquet"})
        stats.append(SiteStats(resolution_s, _series_stats(it_w, resolution_s),
                               _series_stats(facility_w, resolution_s)))
    if FIFTEEN_MIN_STEPS % feed == 0 and plan.n_steps >= 2 * FIFTEEN_MIN_STEPS:
        ratio = FIFTEEN_MIN_STEPS // feed
        quarter_w = coarsen_sums(facility_feed_w, ratio) / ratio
        ramp = max_ramp_w(quarter_w)
    return files, stats, ramp


def _write_level(plan: RunPlan, out: Path, parts_dir: Path, level: str, factor: int, grid: dict):
    name = f"{level}_{factor}"
    parts = [open_part(parts_dir, s.index, name) for s in plan.shards]
    ids = np.unique(np.concatenate([p[1] for p in parts]))
    columns = [np.searchsorted(ids, p[1]) for p in parts]
    n_blocks = plan.n_steps // factor
    resolution_s = factor * INTERVAL_S
    peak = np.zeros(ids.size)
    low = np.full(ids.size, np.inf)
    entity_energy_j = np.zeros(ids.size)
    path = out / f"{level}_{resolution_label(resolution_s)}.parquet"
    with SeriesWriter(path, level=level, resolution_s=resolution_s, value_columns=["power_w"],
                      entity_column=ENTITY_COLUMN[level], units={"power_w": "W"},
                      grid=grid, metadata={"power": POWER_NOTE,
                                           "entities": ENTITIES_FILE}) as w:
        for a, b in _windows(n_blocks, ids.size):
            total = np.zeros((b - a, ids.size), np.int64)
            for (values, _), col in zip(parts, columns):
                total[:, col] += np.asarray(values[a:b])
            power_w = block_means_w(total, factor)
            w.write(np.arange(a, b) * resolution_s, {"power_w": power_w}, entity_ids=ids)
            peak = np.maximum(peak, power_w.max(axis=0))
            low = np.minimum(low, power_w.min(axis=0))
            entity_energy_j += power_w.sum(axis=0) * resolution_s
        info = w.close()
    del parts
    stats = LevelStats(level=level, resolution_s=resolution_s, entities=int(ids.size),
                       energy_j=float(entity_energy_j.sum()), max_peak_w=float(peak.max()),
                       mean_peak_w=float(peak.mean()))
    per_entity = {"ids": ids, "energy_j": entity_energy_j, "peak_w": peak, "min_w": low}
    return {**info, "resolution_s": resolution_s, "format": "parquet"}, stats, per_entity


def _write_row_stats(plan: RunPlan, out: Path, stats: LevelStats, per_row: dict) -> dict:
    """Per row: its serving configuration, GPUs, and energy, mean, peak and minimum power at
    the rows resolution (the per-row figures that used to swell the manifest)."""
    t = plan.topology
    rows = [int(r) for r in per_row["ids"]]
    duration_s = plan.n_steps * INTERVAL_S
    gpus_per_row = t.racks_per_row * t.servers_per_rack * t.gpus_per_server
    columns = {"row_id": rows, "serving_config": [t.row_serving[r] for r in rows],
               "gpus": [gpus_per_row] * len(rows),
               "energy_j": [float(e) for e in per_row["energy_j"]],
               "mean_w": [float(e) / duration_s for e in per_row["energy_j"]],
               "peak_w": [float(v) for v in per_row["peak_w"]],
               "min_w": [float(v) for v in per_row["min_w"]]}
    path = out / ROW_STATS_FILE
    write_table(path, None, columns, metadata={
        "format": "distgen.row_stats", "resolution_s": stats.resolution_s,
        "units": {"energy_j": "J", "mean_w": "W", "peak_w": "W", "min_w": "W"},
        "power": POWER_NOTE})
    return {"path": path.name, "level": "row_stats", "kind": "table", "rows": len(rows),
            "sha256": file_digest(path), "bytes": path.stat().st_size,
            "resolution_s": stats.resolution_s, "format": "parquet"}


def time_grid(plan: RunPlan) -> dict:
    """The run's time grid as the output files record it: ``start_time`` (site-local, as
    configured), ``start_utc``, ``utc_offset_s`` [s], ``interval_s`` [s], ``n_steps``."""
    cfg = plan.config
    return {"start_time": cfg.start_time, "start_utc": start_time_utc(cfg).isoformat(),
            "utc_offset_s": utc_offset_s(cfg), "interval_s": INTERVAL_S,
            "n_steps": plan.n_steps}


def _write_entities(plan: RunPlan, out: Path) -> dict:
    t = plan.topology
    table = t.deployment_table()
    serving_ids = sorted(set(t.row_serving))
    row_code = np.array([serving_ids.index(c) for c in t.row_serving], np.int32)
    info = write_entity_table(
        out / ENTITIES_FILE, deployment_id=table["deployment_id"],
        server_id=table["server_id"], rack_id=table["rack_id"], row_id=table["row_id"],
        serving_code=row_code[table["row_id"]], serving_ids=serving_ids, gpus=table["gpus"],
        first_gpu=table["first_gpu"],
        metadata={"serving_mix": mix_report(plan.config.facility),
                  "non_gpu": {"idle_w": plan.config.facility.non_gpu.idle_w,
                              "activity_w": plan.config.facility.non_gpu.activity_w}})
    return {**info, "kind": "table", "format": "parquet"}


def _write_shards(shards: tuple[ShardSummary, ...], out: Path) -> dict:
    """One row per shard: its racks, size, wall time, inputs hash and work (``by_config`` as
    JSON text: serving configuration -> work)."""
    work = [f for f in WorkloadSummary.__dataclass_fields__]
    columns = {"shard": [s.shard for s in shards],
               "rack_start": [s.rack_start for s in shards],
               "rack_stop": [s.rack_stop for s in shards],
               "deployments": [s.deployments for s in shards],
               "servers": [s.servers for s in shards],
               "wall_s": [float(s.wall_s) for s in shards],
               "inputs_sha256": [s.inputs_sha256 for s in shards],
               **{f: [getattr(s.workload, f) for s in shards] for f in work},
               "by_config": [{c: dict(vars(w)) for c, w in s.by_config.items()}
                             for s in shards]}
    path = out / SHARDS_FILE
    write_table(path, None, columns, metadata={
        "format": "distgen.shards", "units": {"wall_s": "s", "busy_ms": "ms",
                                              "prefill_tokens": "tokens",
                                              "decode_tokens": "tokens"}})
    return {"path": path.name, "level": "shards", "kind": "table", "rows": len(shards),
            "sha256": file_digest(path), "bytes": path.stat().st_size, "format": "parquet"}


def assemble(plan: RunPlan, out: Path) -> tuple[list[dict], RunSummary]:
    """Write every output file of the run from ``out/.parts``; return (files, summary)."""
    parts_dir = out / ".parts"
    _check_parts(plan, parts_dir)
    grid = time_grid(plan)
    files, site_stats, ramp = _write_site(plan, out, _site_sums(plan, parts_dir), grid)
    levels = []
    for level, factor in plan.level_factors.items():
        info, stats, per_entity = _write_level(plan, out, parts_dir, level, factor, grid)
        files.append(info)
        levels.append(stats)
        if level == "rows":
            files.append(_write_row_stats(plan, out, stats, per_entity))
    shards = tuple(ShardSummary.from_dict(m["summary"])
                   for _, m in sorted(completed_shards(parts_dir).items()))
    files.append(_write_entities(plan, out))
    files.append(_write_shards(shards, out))
    workload = sum((s.workload for s in shards), WorkloadSummary.zero())
    return files, RunSummary(site=tuple(site_stats), max_15min_ramp_w=ramp,
                             levels=tuple(levels), workload=workload, shards=shards,
                             by_config=by_config_of(shards))


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
