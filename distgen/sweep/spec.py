"""Parameter sweeps: a base run configuration, a grid and random samples of overrides.

A sweep file (YAML)::

    base: demo.yaml                 # a run config: path (relative to this file) or a mapping
    overrides: [duration_s=3600]    # optional, applied to the base for every point
    grid:                           # dotted key -> list of values; cartesian product
      traffic.site_rate_rps: [200, 400]
      traffic.modulation.rho_site: [0.2, 0.8]
    samples:                        # optional random points
      n: 4
      seed: 0
      keys:
        traffic.modulation.cv: {uniform: [0.1, 0.4]}
        traffic.arrivals: {choice: [poisson, gamma]}
    concurrency: 2                  # points running at once (default: as many as fit)
    out: sweeps/demo                # optional default for --out

Points are the grid's combinations, each crossed with every random sample when both are given
(the same ``n`` samples for every grid combination); only a grid or only samples also work.
A point's overrides are applied after the base and ``overrides`` with the semantics of
:func:`distgen.config.load_config` (dotlist). Its id is a short hash of its overrides.

Each point is a full generation written to ``OUT/points/<id>/``; ``OUT/sweep.parquet`` and
``OUT/sweep.csv`` hold one row per point: the override values and the facility metrics of
:data:`METRIC_COLUMNS`. The P99 and peak figures are taken at 1 s; a point whose config has no
1 s site resolution gets one added.

This module parses sweeps and plans their points; :mod:`.run` runs them and :mod:`.results`
reads their metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distgen.errors import ConfigError, DistgenError

SWEEP_FORMAT = "distgen.sweep"
SWEEP_KEYS = ("base", "overrides", "grid", "samples", "concurrency", "out")
#: The P99 and peak figures of a point are taken at this site resolution [s].
P99_RESOLUTION_S = 1.0


@dataclass(frozen=True)
class Point:
    """One sweep point: its id, the values it sets and the dotlist overrides that set them."""

    id: str
    values: dict
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file; see the module docstring."""

    base_path: str | None
    base_overrides: tuple[str, ...]
    grid: dict = field(default_factory=dict)
    samples: dict | None = None
    concurrency: int | None = None
    out: str | None = None
    source: str = "<sweep>"

    @property
    def keys(self) -> list[str]:
        return list(self.grid) + list((self.samples or {}).get("keys", {}))


# ----------------------------------------------------------------------------- parsing

def _dotlist_value(value) -> str:
    """A value as override text (JSON is YAML: lists, strings, numbers, null, booleans)."""
    return json.dumps(value)


def _flatten(mapping: Mapping, prefix: str = "") -> list[str]:
    out = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _flatten(value, dotted + ".")
        else:
            out.append(f"{dotted}={_dotlist_value(value)}")
    return out


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep file (see the module docstring)."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DistgenError(f"sweep file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DistgenError(f"sweep file {path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise DistgenError(f"sweep file {path}{line}: invalid YAML: "
                           f"{getattr(exc, 'problem', None) or exc}") from None
    return parse_sweep(doc, source=str(path), folder=path.parent)


def parse_sweep(doc, *, source: str = "<sweep>", folder: str | Path = ".") -> SweepSpec:
    """Check a sweep document (a mapping) and resolve its base."""
    if not isinstance(doc, Mapping):
        raise ConfigError("<sweep>", f"{source}: the sweep must be a mapping with keys "
                          f"{', '.join(SWEEP_KEYS)}")
    for key in doc:
        if key not in SWEEP_KEYS:
            raise ConfigError(str(key), f"unknown sweep key in {source}; allowed: "
                              f"{', '.join(SWEEP_KEYS)}")
    base = doc.get("base")
    base_path, base_overrides = None, []
    if isinstance(base, str):
        p = Path(base)
        if not p.is_absolute():
            p = Path(folder) / p if (Path(folder) / p).exists() or not p.exists() else p
        base_path = str(p)
    elif isinstance(base, Mapping):
        base_overrides = _flatten(base)
    elif base is not None:
        raise ConfigError("base", f"expected a run-config path or mapping, got {base!r}")
    extra = doc.get("overrides") or []
    if isinstance(extra, str) or not all(isinstance(o, str) for o in extra):
        raise ConfigError("overrides", "expected a list of KEY=VALUE strings")
    grid = doc.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ConfigError("grid", "expected a mapping of dotted key -> list of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", f"expected a non-empty list of values, got "
                              f"{values!r}")
    samples = doc.get("samples")
    if samples is not None:
        samples = _check_samples(samples)
        both = set(grid) & set(samples["keys"])
        if both:
            raise ConfigError("samples.keys", f"{sorted(both)} are also grid keys")
    if not grid and not samples:
        raise ConfigError("grid", f"{source}: a sweep needs a grid or samples (or both)")
    concurrency = doc.get("concurrency")
    if concurrency is not None and (not isinstance(concurrency, int)
                                    or isinstance(concurrency, bool) or concurrency < 1):
        raise ConfigError("concurrency", f"expected an integer >= 1, got {concurrency!r}")
    out = doc.get("out")
    if out is not None and not isinstance(out, str):
        raise ConfigError("out", f"expected a folder path, got {out!r}")
    return SweepSpec(base_path, tuple(base_overrides) + tuple(extra), dict(grid), samples,
                     concurrency, out, source)


def _check_samples(samples) -> dict:
    if not isinstance(samples, Mapping):
        raise ConfigError("samples", "expected a mapping with n, seed, keys")
    for key in samples:
        if key not in ("n", "seed", "keys"):
            raise ConfigError(f"samples.{key}", "unknown key; allowed: n, seed, keys")
    n, seed, keys = samples.get("n"), samples.get("seed", 0), samples.get("keys")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError("samples.n", f"expected an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("samples.seed", f"expected an integer >= 0, got {seed!r}")
    if not isinstance(keys, Mapping) or not keys:
        raise ConfigError("samples.keys", "expected a mapping of dotted key -> "
                          "{uniform: [lo, hi]} or {choice: [values]}")
    for key, dist in keys.items():
        where = f"samples.keys.{key}"
        if not isinstance(dist, Mapping) or len(dist) != 1:
            raise ConfigError(where, f"expected {{uniform: [lo, hi]}} or {{choice: [...]}}, "
                              f"got {dist!r}")
        (kind, arg), = dist.items()
        if kind == "uniform":
            if (not isinstance(arg, list) or len(arg) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in arg) or not arg[0] <= arg[1]):
                raise ConfigError(where, f"uniform needs [lo, hi] with lo <= hi, got {arg!r}")
        elif kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise ConfigError(where, f"choice needs a non-empty list, got {arg!r}")
        else:
            raise ConfigError(where, f"unknown distribution {kind!r}; use uniform or choice")
    return {"n": n, "seed": seed, "keys": dict(keys)}


# ----------------------------------------------------------------------------- points

def point_id(values: Mapping) -> str:
    """Short, stable hash of a point's override values."""
    text = json.dumps(dict(sorted(values.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _draw_samples(samples: dict) -> list[dict]:
    rng = np.random.default_rng(samples["seed"])
    draws = []
    for _ in range(samples["n"]):
        point = {}
        for key, dist in samples["keys"].items():
            (kind, arg), = dist.items()
            if kind == "uniform":
                point[key] = float(rng.uniform(arg[0], arg[1]))
            else:
                point[key] = arg[int(rng.integers(len(arg)))]
        draws.append(point)
    return draws


def sweep_points(spec: SweepSpec) -> list[Point]:
    """Every point of the sweep, in a stable order (grid order, then samples)."""
    grid_keys = list(spec.grid)
    combos = [dict(zip(grid_keys, vals))
              for vals in itertools.product(*(spec.grid[k] for k in grid_keys))] or [{}]
    draws = _draw_samples(spec.samples) if spec.samples else [{}]
    points, seen = [], set()
    for combo in combos:
        for draw in draws:
            values = {**combo, **draw}
            pid = point_id(values)
            if pid in seen:  # a repeated grid value: one run is enough
                continue
            seen.add(pid)
            points.append(Point(pid, values, tuple(f"{k}={_dotlist_value(v)}"
                                                    for k, v in values.items())))
    return points


def point_config(spec: SweepSpec, point: Point):
    """The validated RunConfig of a point (with a 1 s site resolution added when missing)."""
    from distgen.config import load_config

    overrides = [*spec.base_overrides, *point.overrides]
    try:
        cfg = load_config(spec.base_path, overrides)
    except ConfigError as exc:
        raise ConfigError(exc.key, f"sweep point {point.id} "
                          f"({', '.join(point.overrides)}): {exc}") from None
    sites = [float(r) for r in cfg.output.site_resolutions_s]
    if P99_RESOLUTION_S not in sites:
        sites = sorted(sites + [P99_RESOLUTION_S])
        cfg = load_config(spec.base_path, overrides + [f"output.site_resolutions_s={sites}"])
    return cfg
