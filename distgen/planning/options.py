"""Options of ``distgen analyze`` / ``distgen report`` (stdlib only, so that building the
command-line parser stays cheap)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from distgen.errors import DistgenError

_S_PER_H = 3600.0


# ============================================================================ options

@dataclass(frozen=True)
class AnnualOptions:
    """The 8760-hour profile: day-type scaling and growth (see loadprofile.annual_profile).

    start_date : first day of the profile (default: 1 January of the run's year).
    """

    start_date: dt.date | None = None
    weekday_scale: float = 1.0
    weekend_scale: float = 1.0
    growth_pct_per_year: float = 0.0
    growth: str = "compound"


@dataclass(frozen=True)
class OversubscriptionOptions:
    """limit_w [W] at ``level`` (``rows``: racks are admitted; ``racks``: servers are);
    percentile [%] of the group peak over ``repetitions`` Monte-Carlo orders from ``seed``;
    unit traces at the finest resolution the run has, or block means at ``resolution_s`` [s]
    (e.g. 60 for a breaker that tolerates sub-minute peaks)."""

    limit_w: float = 600e3
    level: str = "rows"
    percentile: float = 95.0
    repetitions: int = 200
    seed: int = 0
    resolution_s: float | None = None


@dataclass(frozen=True)
class CappingOptions:
    """gpu_cap_w [W] per GPU (None: no per-GPU cap); a site window from ``dr_start`` (``HH:MM``
    local, first occurrence in the run, or an ISO date-time) for ``dr_duration_s`` [s], cut by
    ``dr_reduction_pct`` [%] of the uncapped power or held at ``dr_cap_w`` [W] facility
    power; deferred work is served back at up to ``dr_catch_up_w`` [W] (default: the run's
    facility peak)."""

    gpu_cap_w: float | None = None
    dr_start: str | None = None
    dr_duration_s: float = 3 * _S_PER_H
    dr_reduction_pct: float | None = None
    dr_cap_w: float | None = None
    dr_catch_up_w: float | None = None


@dataclass(frozen=True)
class AnalysisOptions:
    """Everything ``distgen analyze`` / ``distgen report`` can be told.

    exports_dir : where the exports go (default ``OUT/analysis``); None with
        ``write_exports=False`` writes nothing.
    """

    exports_dir: Path | None = None
    write_exports: bool = True
    annual: AnnualOptions = field(default_factory=AnnualOptions)
    oversubscription: OversubscriptionOptions = field(default_factory=OversubscriptionOptions)
    capping: CappingOptions = field(default_factory=CappingOptions)


# ============================================================================ CLI glue

def add_analysis_arguments(p) -> None:
    """The options ``distgen analyze`` and ``distgen report`` share."""
    g = p.add_argument_group("exports")
    g.add_argument("--exports", default=None, metavar="DIR",
                   help="folder for the exports (default: OUT_DIR/analysis)")
    g.add_argument("--annual-start", default=None, metavar="YYYY-MM-DD",
                   help="first day of the 8760-h profile (default: 1 January of the run's year)")
    g.add_argument("--weekday-scale", type=float, default=1.0,
                   help="factor on weekdays, relative to the run's day (default 1)")
    g.add_argument("--weekend-scale", type=float, default=1.0,
                   help="factor on Saturdays and Sundays (default 1)")
    g.add_argument("--growth-pct-per-year", type=float, default=0.0,
                   help="load growth over the year [%%] (default 0)")
    g.add_argument("--growth", choices=("compound", "linear"), default="compound")
    o = p.add_argument_group("oversubscription")
    o.add_argument("--limit-w", type=float, default=600e3,
                   help="power limit of the level [W] (default 600000, a 600 kW row)")
    o.add_argument("--limit-level", choices=("rows", "racks"), default="rows",
                   help="rows: racks are admitted (default); racks: servers are")
    o.add_argument("--percentile", type=float, default=95.0,
                   help="percentile of the group peak held within the limit (default 95)")
    o.add_argument("--repetitions", type=int, default=200, help="Monte-Carlo draws (default 200)")
    o.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    o.add_argument("--limit-resolution-s", type=float, default=None,
                   help="judge peaks of block means at this resolution [s] (default: the "
                        "finest unit traces of the run)")
    c = p.add_argument_group("capping and demand response")
    c.add_argument("--gpu-cap-w", type=float, default=None, help="per-GPU power cap [W]")
    c.add_argument("--dr-start", default=None, metavar="HH:MM|ISO",
                   help="start of a site-level cap window (local time)")
    c.add_argument("--dr-hours", type=float, default=3.0, help="window length [h] (default 3)")
    c.add_argument("--dr-reduction-pct", type=float, default=None,
                   help="cut facility power by this share of the uncapped power [%%]")
    c.add_argument("--dr-cap-w", type=float, default=None,
                   help="hold facility power at this many watts in the window")
    c.add_argument("--dr-catch-up-w", type=float, default=None,
                   help="largest facility power at which deferred work is served back [W] "
                        "(default: the run's facility peak)")
    p.add_argument("--models", default=None,
                   help="model library for the baselines (default: the run's, else bundled)")


def options_from_args(args) -> AnalysisOptions:
    start = None
    if args.annual_start:
        try:
            start = dt.date.fromisoformat(args.annual_start)
        except ValueError:
            raise DistgenError(f"--annual-start {args.annual_start!r} is not a YYYY-MM-DD "
                               "date") from None
    if args.repetitions < 1:
        raise DistgenError(f"--repetitions must be >= 1, got {args.repetitions}")
    if not 0 < args.percentile <= 100:
        raise DistgenError(f"--percentile must be in (0, 100], got {args.percentile}")
    if not args.limit_w > 0:
        raise DistgenError(f"--limit-w must be positive, got {args.limit_w}")
    return AnalysisOptions(
        exports_dir=Path(args.exports) if args.exports else None,
        annual=AnnualOptions(start, args.weekday_scale, args.weekend_scale,
                             args.growth_pct_per_year, args.growth),
        oversubscription=OversubscriptionOptions(args.limit_w, args.limit_level,
                                                 args.percentile, args.repetitions, args.seed,
                                                 args.limit_resolution_s),
        capping=CappingOptions(args.gpu_cap_w, args.dr_start, args.dr_hours * _S_PER_H,
                               args.dr_reduction_pct, args.dr_cap_w, args.dr_catch_up_w))
