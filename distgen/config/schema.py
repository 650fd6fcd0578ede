"""Run configuration: frozen dataclasses, standard library only.

Every key carries its unit in its name. ``distgen.config.load`` turns YAML + dotlist overrides
into these objects and calls :func:`validate`, which rejects unknown keys and invalid values with
a :class:`~distgen.errors.ConfigError` naming the key and the allowed values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("numpy", "cupy", "auto")
ROUTINGS = ("random", "round_robin", "least_loaded")
ARRIVAL_KINDS = ("poisson", "gamma")
BURST_KINDS = ("none", "mmpp")
TRAFFIC_MODES = ("synthetic", "replay")


@dataclass(frozen=True)
class NonGpuConfig:
    """Server power outside the GPUs (CPUs, memory, fans, NICs, PSU losses).

    Server non-GPU power = ``idle_w + activity_w * activity``, where activity in [0, 1] is the
    server's GPU power above idle over its span from idle to TDP.
    """

    idle_w: float = 1000.0
    activity_w: float = 0.0


@dataclass(frozen=True)
class FacilityConfig:
    """Site topology: rows x racks x servers x GPUs, one serving configuration per row.

    The serving mix names serving-configuration ids of the model library (e.g.
    ``qwen3-8b_A100_tp1``) in one of three forms (at most one may be given; none = every row
    runs ``qwen3-8b_A100_tp1``; see :mod:`distgen.config.serving_mix`):

    * ``row_serving``: one entry for every row, or exactly ``rows`` entries;
    * ``row_serving_pattern``: a list repeated over the rows (row r runs entry r mod length);
    * ``row_serving_shares``: ``{id: share}``, relative weights; rows are assigned
      deterministically (largest remainders, then spread evenly) and reported in the manifest.

    ``pue_hourly``, when given, holds 24 values (hour of day 0..23, site local time) and replaces
    the constant ``pue``.
    """

    rows: int = 2
    racks_per_row: int = 3
    servers_per_rack: int = 4
    gpus_per_server: int = 8
    row_serving: tuple[str, ...] | None = None
    row_serving_pattern: tuple[str, ...] | None = None
    row_serving_shares: dict[str, float] | None = None
    non_gpu: NonGpuConfig = field(default_factory=NonGpuConfig)
    pue: float = 1.3
    pue_hourly: tuple[float, ...] | None = None


@dataclass(frozen=True)
class DiurnalConfig:
    """24-hour shape of the site request rate: a cosine with its maximum at ``peak_hour``.

    ``trough_ratio`` = minimum rate / maximum rate (1.0 = flat). The shape has mean 1 over a day.
    """

    peak_hour: float = 15.0
    trough_ratio: float = 0.35


@dataclass(frozen=True)
class ModulationConfig:
    """Slow random rate fluctuations and how synchronised they are across the fleet.

    The log-rate of each deployment gets a unit-variance AR(1) process (time constant
    ``correlation_time_s``, sampled every ``interval_s``), built from a site part, a row part, a
    rack part and a per-deployment part with variance shares ``rho_site``, ``rho_row``,
    ``rho_rack`` and ``1 - rho_site - rho_row - rho_rack``; scaled so that the rate multiplier has
    mean 1 and coefficient of variation ``cv``. ``rho_site`` is then the correlation of two
    deployments' rate fluctuations in different rows; same row adds ``rho_row``, same rack adds
    ``rho_rack``. ``cv = 0`` switches modulation off.
    """

    cv: float = 0.25
    interval_s: float = 60.0
    correlation_time_s: float = 900.0
    rho_site: float = 0.6
    rho_row: float = 0.1
    rho_rack: float = 0.0


@dataclass(frozen=True)
class BurstConfig:
    """Site-wide Markov-modulated bursts: a two-state (calm / burst) chain shared by all servers.

    In a burst the rate is ``high_factor`` times the calm rate; sojourn times are exponential with
    means ``mean_calm_s`` and ``mean_burst_s``. The factor is renormalised to mean 1, so bursts
    reshape but do not change the daily request count.
    """

    kind: str = "none"
    high_factor: float = 2.0
    mean_burst_s: float = 120.0
    mean_calm_s: float = 1800.0


@dataclass(frozen=True)
class ReplayConfig:
    """Replay of a request trace CSV with columns timestamp, input tokens, output tokens.

    Column names are matched case-insensitively against common spellings (``TIMESTAMP``,
    ``ContextTokens``, ``GeneratedTokens``; ``timestamp``, ``input_tokens``, ``output_tokens``).
    Trace time is mapped onto the run as ``(t_trace - t_first) / time_scale + start_offset_s``;
    with ``loop`` the trace repeats to fill ``duration_s``. ``rate_scale`` thins (< 1) or replicates
    (> 1, with jittered copies) the requests to reach a target load.
    """

    path: str | None = None
    routing: str = "random"
    time_scale: float = 1.0
    rate_scale: float = 1.0
    start_offset_s: float = 0.0
    loop: bool = True


@dataclass(frozen=True)
class TrafficConfig:
    """Request traffic offered to the fleet.

    In ``synthetic`` mode the site receives ``site_rate_rps`` requests per second on average over
    the day (before diurnal shaping), routed uniformly at random to deployments; each
    deployment's arrivals are a renewal process (``poisson``, or ``gamma`` with shape
    ``burstiness``: < 1 bursty, > 1 smooth, as in vLLM's benchmark client) in operational time of
    its modulated rate. Token lengths come from the serving configuration's fitted
    distributions unless ``input_tokens`` / ``output_tokens`` fix them for every request; in
    ``replay`` mode they come from the trace. ``prefix_cache_hit_share`` of every synthetic
    prompt is served from the prefix cache (no prefill compute; it still counts as context).
    """

    mode: str = "synthetic"
    site_rate_rps: float = 40.0
    arrivals: str = "poisson"
    burstiness: float = 1.0
    diurnal: DiurnalConfig = field(default_factory=DiurnalConfig)
    modulation: ModulationConfig = field(default_factory=ModulationConfig)
    bursts: BurstConfig = field(default_factory=BurstConfig)
    input_tokens: int | None = None
    output_tokens: int | None = None
    prefix_cache_hit_share: float = 0.0
    replay: ReplayConfig = field(default_factory=ReplayConfig)


@dataclass(frozen=True)
class OutputConfig:
    """What is written, at which resolutions (block means of the 0.25 s grid, energy-preserving).

    ``site_resolutions_s`` lists the site-level resolutions; each other level has one resolution,
    or None to skip that level. Every resolution must be a multiple of 0.25 s and divide
    ``duration_s``. ``site_csv_resolution_s`` adds a CSV of the site profile for utility
    planners (None to skip).
    """

    site_resolutions_s: tuple[float, ...] = (1.0, 60.0, 900.0, 3600.0)
    rows_resolution_s: float | None = 60.0
    racks_resolution_s: float | None = 60.0
    servers_resolution_s: float | None = None
    deployments_resolution_s: float | None = None
    site_csv_resolution_s: float | None = 900.0


@dataclass(frozen=True)
class RayConfig:
    """Ray resources per shard task and where the cluster is (None = local Ray on demand)."""

    address: str | None = None
    num_cpus_per_task: float = 1.0
    num_gpus_per_task: float = 0.0
    max_retries: int = 3


@dataclass(frozen=True)
class RunConfig:
    """A whole generation run.

    ``start_time`` is the site-local ISO-8601 time of the first step (sets the hour of day for
    the diurnal shape and the hourly PUE), with the site's UTC offset written in it
    (``2026-07-01T09:00:00-05:00``; no offset = the site clock is UTC). The offset is fixed
    for the run (no daylight-saving shifts); outputs carry UTC timestamps and the site CSV
    keeps the offset. ``seed`` is in [0, 2**64). ``chunk_s`` is the length of the time chunks that
    generation streams through (memory is O(deployments x chunk), not O(duration)).
    ``warmup_s`` runs the fleet for that long before the first output step, at the traffic of
    the start time, so queues and power states start from a loaded steady state rather than an
    all-idle fleet (whose synchronised start would be a spurious site-wide ramp). ``shards`` is
    how many pieces the fleet is cut into (on row boundaries where possible, else on rack
    boundaries).
    """

    seed: int = 0
    duration_s: float = 3600.0
    start_time: str = "2026-07-01T00:00:00"
    backend: str = "auto"
    shards: int = 1
    chunk_s: float = 3600.0
    warmup_s: float = 600.0
    model_library: str | None = None
    facility: FacilityConfig = field(default_factory=FacilityConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
