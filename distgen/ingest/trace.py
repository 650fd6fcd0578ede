"""Plain-value containers for one measured run, all on one clock (Unix epoch seconds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RequestLog:
    """Requests as the benchmark client sent them, sorted by arrival (arrays aligned).

    Attributes
    ----------
    arrival_s : float64 (n,) [s, Unix epoch]; sorted ascending.
    input_tokens : int64 (n,) [tokens] prompt length.
    output_tokens : int64 (n,) [tokens] generated length.
    ttft_s : float64 (n,) [s] time to first token, or None when the log has none.
    latency_s : float64 (n,) [s] end-to-end latency (TTFT + sum of inter-token latencies, or
        the client's own per-request latency), or None when the log has neither.
    cached_tokens : int64 (n,) [tokens] prompt tokens served from the engine's prefix cache
        (``0 <= cached_tokens <= input_tokens``); zeros when the log does not record them
        (``None`` given to the constructor becomes zeros).
    turn_index : int64 (n,) turn of the request within its session (0 = first), or None for
        a log without sessions.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray | None = None
    latency_s: np.ndarray | None = None
    cached_tokens: np.ndarray | None = None
    turn_index: np.ndarray | None = None

    def __post_init__(self):
        if self.cached_tokens is None:
            object.__setattr__(self, "cached_tokens",
                               np.zeros(self.arrival_s.shape[0], np.int64))

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def window(self, start_s: float, end_s: float) -> "RequestLog":
        """Requests that arrived in [start_s, end_s)."""
        keep = (self.arrival_s >= start_s) & (self.arrival_s < end_s)
        pick = (lambda a: None if a is None else a[keep])
        return RequestLog(self.arrival_s[keep], self.input_tokens[keep], self.output_tokens[keep],
                          pick(self.ttft_s), pick(self.latency_s), self.cached_tokens[keep],
                          pick(self.turn_index))


@dataclass(frozen=True)
class EngineLog:
    """The serving engine's own metrics scrape (vLLM /metrics at about 4 Hz).

    Gauges are as sampled; ``*_total`` arrays are cumulative counters since server start.

    Attributes
    ----------
    time_s : float64 (m,) [s, Unix epoch]; strictly increasing.
    running : float64 (m,) requests in the running batch.
    waiting : float64 (m,) requests queued.
    kv_cache_usage : float64 (m,) KV-cache use, fraction 0..1.
    prompt_tokens_total : float64 (m,) cumulative prefill tokens.
    generation_tokens_total : float64 (m,) cumulative decode tokens.
    iterations_total : float64 (m,) cumulative engine iterations (steps).
    """

    time_s: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    kv_cache_usage: np.ndarray
    prompt_tokens_total: np.ndarray
    generation_tokens_total: np.ndarray
    iterations_total: np.ndarray

    def __len__(self) -> int:
        return int(self.time_s.shape[0])


@dataclass(frozen=True)
class ServingSettings:
    """Serving-engine settings that shape batching (from the manifest's ``server`` block).

    ``enable_prefix_caching``: the engine reuses the KV cache of a prompt prefix it has seen
    (vLLM ``--enable-prefix-caching``); the request log's ``cached_tokens`` say how much.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 32768
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = False


@dataclass(frozen=True)
class GapReport:
    """Sampling gaps of a power log: stretches with no measurement, masked, never interpolated.

    A gap is a spacing between consecutive samples of one GPU longer than
    ``GAP_FACTOR`` (1.5) nominal sampling intervals (the median spacing), i.e. at least one
    sample is missing. A row right after a gap that repeats the last row's power exactly is a
    stale reading, not a measurement, and the gap runs on to the next row. For a TP group the
    gaps of its GPUs are merged. Grid steps strictly inside a gap are invalid
    (``RunTrace.valid``); steps at the samples on either side are measured and valid.

    Attributes
    ----------
    nominal_interval_s : [s] median spacing of the samples (the instrument's cadence).
    intervals_s : ((start, stop), ...) [s since ``RunTrace.start_s``] the samples on either
        side of each gap, in time order.
    step_ranges : ((first, stop), ...) half-open ranges of the invalid grid steps of each gap
        (empty when a short gap holds no grid step).
    """

    nominal_interval_s: float
    intervals_s: tuple[tuple[float, float], ...] = ()
    step_ranges: tuple[tuple[int, int], ...] = ()

    @property
    def count(self) -> int:
        return len(self.intervals_s)

    @property
    def total_s(self) -> float:
        """[s] Sum of the gaps' lengths (time between the samples on either side)."""
        return float(sum(b - a for a, b in self.intervals_s))

    @property
    def longest_s(self) -> float:
        """[s] Length of the longest gap (0 without gaps)."""
        return float(max((b - a for a, b in self.intervals_s), default=0.0))

    @property
    def invalid_steps(self) -> int:
        return int(sum(b - a for a, b in self.step_ranges))

    def to_dict(self) -> dict:
        return {"nominal_interval_s": self.nominal_interval_s, "count": self.count,
                "total_s": self.total_s, "longest_s": self.longest_s,
                "invalid_steps": self.invalid_steps,
                "intervals_s": [list(iv) for iv in self.intervals_s]}


@dataclass(frozen=True)
class RunTrace:
    """One measured run, ingested and aligned.

    Attributes
    ----------
    run_id : the manifest's run id.
    source : the run's folder.
    config_id : serving configuration, ``<model>_<GPU>_tp<TP>`` (see :func:`config_id_for`).
    model_name : model as the manifest names it, e.g. ``Qwen/Qwen3-8B``.
    gpu : GPU type, upper case, e.g. ``A100``.
    tp : tensor-parallel degree (GPUs in the deployment).
    start_s : [s, Unix epoch] time of ``power_w[0]``.
    interval_s : [s] grid spacing of ``power_w`` (0.25).
    power_w : float64 (n_steps,) [W] deployment power, the sum over the TP group's GPUs, on the
        regular grid ``start_s + interval_s * k``; finite everywhere, linearly interpolated
        across gaps (for plotting only: see ``valid``).
    requests : the request log.
    engine : the engine metrics log, or None for a run without ``engine.csv`` (such a run can
        be validated against but not fitted on).
    serving : batching and caching settings.
    manifest : the raw manifest, for provenance.
    valid : bool (n_steps,) False on grid steps inside a sampling gap; fitting and scoring use
        only valid steps (None given to the constructor becomes all True).
    gaps : the sampling gaps (:class:`GapReport`).
    """

    run_id: str
    source: Path
    config_id: str
    model_name: str
    gpu: str
    tp: int
    start_s: float
    interval_s: float
    power_w: np.ndarray
    requests: RequestLog
    engine: EngineLog | None
    serving: ServingSettings = field(default_factory=ServingSettings)
    manifest: dict = field(default_factory=dict, repr=False)
    valid: np.ndarray | None = field(default=None, repr=False)
    gaps: GapReport = field(default_factory=lambda: GapReport(nominal_interval_s=float("nan")))

    def __post_init__(self):
        if self.valid is None:
            object.__setattr__(self, "valid", np.ones(self.power_w.shape[0], bool))

    @property
    def n_steps(self) -> int:
        return int(self.power_w.shape[0])

    @property
    def time_s(self) -> np.ndarray:
        """[s, Unix epoch] time of each grid point."""
        return self.start_s + self.interval_s * np.arange(self.n_steps)

    @property
    def duration_s(self) -> float:
        return self.n_steps * self.interval_s


def config_id_for(model_name: str, gpu: str, tp: int) -> str:
    """Serving-configuration id, e.g. ``('Qwen/Qwen3-8B', 'a100', 1) -> 'qwen3-8b_A100_tp1'``."""
    base = model_name.rstrip("/").split("/")[-1].lower()
    return f"{base}_{gpu.upper()}_tp{int(tp)}"
