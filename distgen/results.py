"""Results that cross modules: what a shard did, and what a run produced.

Frozen dataclasses with units in their names (the pattern of pvlib's ``ModelChainResult``). The
manifest stores them as JSON through :meth:`RunSummary.to_dict` and reads them back with
:meth:`RunSummary.from_dict`; the CLI, sweeps and benchmarks read these objects, never raw
dictionaries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from distgen.core.grid import ENTITY_LEVELS


def _build(cls, doc: dict):
    """``cls(**doc)`` keeping only the fields ``cls`` has (older manifests may hold more)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True)
class WorkloadSummary:
    """Work done in the output period (warm-up excluded), summed over deployments.

    Attributes
    ----------
    deployment_steps : deployments x output steps.
    requests_arrived : requests that arrived (served, queued or dropped).
    requests_dropped : requests refused because a deployment's queue was full.
    requests_waiting_at_end : requests still queued after the last step.
    prefill_tokens : [tokens] prompt tokens processed (whole tokens per deployment).
    decode_tokens : [tokens] tokens generated (whole tokens per deployment).
    running_request_steps : sum over steps of the running requests (request-steps).
    busy_ms : [ms] time the GPUs of all deployments were busy (whole ms per deployment).
    outside_envelope_steps : deployment-steps whose work lies outside the operating envelope
        of their configuration's model (an extrapolation; see distgen.model.envelope).
    """

    deployment_steps: int
    requests_arrived: int
    requests_dropped: int
    requests_waiting_at_end: int
    prefill_tokens: int
    decode_tokens: int
    running_request_steps: int
    busy_ms: int = 0
    outside_envelope_steps: int = 0

    @property
    def mean_running_per_deployment(self) -> float:
        """Mean requests running on a deployment."""
        return self.running_request_steps / max(self.deployment_steps, 1)

    def __add__(self, other: "WorkloadSummary") -> "WorkloadSummary":
        return WorkloadSummary(*(getattr(self, f.name) + getattr(other, f.name)
                                 for f in fields(self)))

    @property
    def outside_envelope_share(self) -> float:
        """Share of deployment-steps outside the operating envelope."""
        return self.outside_envelope_steps / max(self.deployment_steps, 1)

    @classmethod
    def zero(cls) -> "WorkloadSummary":
        return cls(0, 0, 0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class ShardSummary:
    """One generated shard (stored in its done marker).

    Attributes
    ----------
    shard, rack_start, rack_stop : the shard and its racks ``[rack_start, rack_stop)``.
    deployments, servers : entities generated.
    workload : the shard's :class:`WorkloadSummary`.
    wall_s : [s] wall time of the shard.
    inputs_sha256 : content hash of everything the shard was computed from.
    by_config : serving configuration -> its deployments' :class:`WorkloadSummary`.
    """

    shard: int
    rack_start: int
    rack_stop: int
    deployments: int
    servers: int
    workload: WorkloadSummary
    wall_s: float
    inputs_sha256: str
    by_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> "ShardSummary":
        by_config = {c: _build(WorkloadSummary, w) for c, w in doc.get("by_config", {}).items()}
        return _build(cls, {**doc, "workload": _build(WorkloadSummary, doc["workload"]),
                            "by_config": by_config})


@dataclass(frozen=True)
class SeriesStats:
    """Statistics of one power series at one resolution.

    Attributes
    ----------
    energy_j : [J] energy over the run.
    mean_w, peak_w, min_w : [W] mean, largest and smallest block mean.
    peak_to_average : peak_w / mean_w (None for a zero mean).
    """

    energy_j: float
    mean_w: float
    peak_w: float
    min_w: float
    peak_to_average: float | None


@dataclass(frozen=True)
class SiteStats:
    """The site's IT and facility (IT x PUE) power at one resolution ``resolution_s`` [s]."""

    resolution_s: float
    it: SeriesStats
    facility: SeriesStats


@dataclass(frozen=True)
class LevelStats:
    """One entity level (rows, racks, servers or deployments) at its resolution.

    Attributes
    ----------
    level : level name.
    resolution_s : [s] resolution of its series.
    entities : number of entities.
    energy_j : [J] energy summed over entities.
    max_peak_w, mean_peak_w : [W] the largest and the mean of the entities' peaks.
    """

    level: str
    resolution_s: float
    entities: int
    energy_j: float
    max_peak_w: float
    mean_peak_w: float


def resolution_label(seconds: float) -> str:
    """``0.25 -> '0.25s'``, ``60.0 -> '60s'``."""
    return f"{seconds:g}s"


@dataclass(frozen=True)
class RunSummary:
    """What a run produced, as recorded in its manifest.

    Attributes
    ----------
    site : per site resolution, :class:`SiteStats` (ascending resolution).
    max_15min_ramp_w : [W] largest change, up or down, between consecutive 15-minute means of
        facility power (None for runs shorter than two quarter hours).
    levels : per written entity level, :class:`LevelStats`.
    workload : the whole run's :class:`WorkloadSummary`.
    shards : per shard, :class:`ShardSummary` (not in the manifest, which stays small for any
        number of shards: they are in the run's ``shards.parquet``; empty when read back).
    by_config : serving configuration -> the work of its deployments over the whole run
        (:func:`by_config_of` of the shards).
    """

    site: tuple[SiteStats, ...]
    max_15min_ramp_w: float | None
    levels: tuple[LevelStats, ...]
    workload: WorkloadSummary
    shards: tuple[ShardSummary, ...]
    by_config: dict = field(default_factory=dict)

    def site_at(self, resolution_s: float) -> SiteStats:
        for s in self.site:
            if s.resolution_s == resolution_s:
                return s
        raise KeyError(f"no site series at {resolution_s:g} s")

    def to_dict(self) -> dict:
        site = {resolution_label(s.resolution_s): {"resolution_s": s.resolution_s,
                                                   "it": asdict(s.it),
                                                   "facility": asdict(s.facility)}
                for s in self.site}
        return {"site": site, "max_15min_ramp_w": self.max_15min_ramp_w,
                **{lv.level: asdict(lv) for lv in self.levels},
                "workload": {**asdict(self.workload),
                             "mean_running_per_deployment":
                                 self.workload.mean_running_per_deployment},
                "outside_envelope_share": {c: w.outside_envelope_share
                                           for c, w in self.by_config.items()},
                "by_config": {c: asdict(w) for c, w in self.by_config.items()}}

    @classmethod
    def from_dict(cls, doc: dict) -> "RunSummary":
        shards = tuple(ShardSummary.from_dict(s) for s in doc.get("shards", []))  # older runs
        site = tuple(SiteStats(float(s["resolution_s"]), SeriesStats(**s["it"]),
                               SeriesStats(**s["facility"])) for s in doc["site"].values())
        return cls(site=tuple(sorted(site, key=lambda s: s.resolution_s)),
                   max_15min_ramp_w=doc.get("max_15min_ramp_w"),
                   levels=tuple(_build(LevelStats, doc[lv]) for lv in ENTITY_LEVELS if lv in doc),
                   workload=_build(WorkloadSummary, doc["workload"]),
                   shards=shards,
                   by_config=({c: _build(WorkloadSummary, w) for c, w in doc["by_config"].items()}
                              if "by_config" in doc else by_config_of(shards)))


def by_config_of(shards) -> dict[str, WorkloadSummary]:
    """Serving configuration -> the work of its deployments, summed over ``shards``."""
    out: dict[str, WorkloadSummary] = {}
    for s in shards:
        for c, w in s.by_config.items():
            out[c] = out.get(c, WorkloadSummary.zero()) + w
    return dict(sorted(out.items()))
