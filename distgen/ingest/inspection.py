"""What distgen sees in a measured run before any fitting (``distgen inspect``).

:func:`inspect_run` turns a :class:`~distgen.ingest.trace.RunTrace` into a
:class:`RunInspection` (plain values); :func:`inspect_paths` reads run folders and keeps going
past unreadable ones; :func:`format_inspections` is the text the CLI prints, and
:meth:`RunInspection.to_dict` the JSON.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from distgen.errors import DistgenError
from distgen.ingest.requests import find_request_log
from distgen.ingest.runs import DEFAULT_MAX_GAP_S, discover_runs, read_run
from distgen.ingest.trace import GapReport, RunTrace

#: [s] A run whose first request arrives at least this long after the power log starts has an
#: idle lead-in, and its idle level is the median power there.
LEAD_IN_MIN_S = 5.0
#: [s] Left out at the end of the lead-in (a client's test request may come just before).
LEAD_IN_MARGIN_S = 1.0
#: Quantile of power taken as the idle level of a run without a lead-in.
IDLE_QUANTILE = 0.05
#: A step is busy when its power is above this multiple of the idle level.
BUSY_FACTOR = 1.25

#: ``envelope_share(model, run) -> float``: share of the run's valid steps whose work lies
#: outside the model's operating envelope (``distgen.model.envelope.share_outside``).
EnvelopeShare = Callable[[Any, RunTrace], float]


@dataclass(frozen=True)
class RunInspection:
    """One run as distgen reads it.

    Attributes
    ----------
    source : the run folder.
    run_id, config_id, model_name, gpu, tp : the serving configuration.
    serving : the manifest's serving settings (batching, chunked prefill, prefix caching).
    start_utc : first grid step, ISO 8601 UTC.
    duration_s : [s] length of the power grid.
    n_steps : grid steps (``interval_s`` apart).
    interval_s : [s] grid step.
    sampling_interval_s : [s] median spacing of the power samples.
    gaps : sampling gaps (masked steps).
    idle_w : [W] idle level of the deployment (all its GPUs).
    idle_source : ``"lead-in"`` (median over the idle lead-in) or ``"p5"`` (5th percentile).
    busy_share : share of valid steps above ``BUSY_FACTOR`` x idle.
    mean_w, peak_w : [W] over valid steps.
    request_log : file name of the request log.
    requests : requests in the log; ``requests_in_window`` of them arrive inside the grid.
    input_tokens, output_tokens, cached_tokens : [tokens] sums over the log.
    cache_hit_share : cached / prompt tokens (None without prompt tokens).
    has_ttft : the log records time to first token.
    engine_log : ``engine.csv`` is present.
    model : config id of the bundled (or given) model that covers this configuration, or None.
    outside_envelope_share : share of valid steps whose work lies outside that model's
        operating envelope (None without a model).
    """

    source: str
    run_id: str
    config_id: str
    model_name: str
    gpu: str
    tp: int
    serving: dict
    start_utc: str
    duration_s: float
    n_steps: int
    interval_s: float
    sampling_interval_s: float
    gaps: GapReport
    idle_w: float
    idle_source: str
    busy_share: float
    mean_w: float
    peak_w: float
    request_log: str
    requests: int
    requests_in_window: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_hit_share: float | None
    has_ttft: bool
    engine_log: bool
    model: str | None
    outside_envelope_share: float | None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gaps"] = self.gaps.to_dict()
        return {"status": "ok", **d}


@dataclass(frozen=True)
class Unreadable:
    """A path that could not be read: the one-line message of its error."""

    source: str
    error: str

    def to_dict(self) -> dict:
        return {"status": "error", "source": self.source, "error": self.error}


def idle_level_w(run: RunTrace) -> tuple[float, str]:
    """[W] Idle level of a run, and how it was found.

    The median power over the idle lead-in (valid steps up to ``LEAD_IN_MARGIN_S`` before the
    first request) when the first request arrives ``LEAD_IN_MIN_S`` or more after the log
    starts; else the ``IDLE_QUANTILE`` quantile of the valid steps.
    """
    lead_in_s = float(run.requests.arrival_s[0]) - run.start_s if len(run.requests) else 0.0
    if lead_in_s >= LEAD_IN_MIN_S:
        before = (run.time_s < run.start_s + lead_in_s - LEAD_IN_MARGIN_S) & run.valid
        if before.any():
            return float(np.median(run.power_w[before])), "lead-in"
    return float(np.quantile(run.power_w[run.valid], IDLE_QUANTILE)), "p5"


def inspect_run(run: RunTrace, *, model: Any = None,
                envelope_share: EnvelopeShare | None = None) -> RunInspection:
    """Describe one run (see :class:`RunInspection`).

    Parameters
    ----------
    run : the ingested run.
    model : the power model of the run's configuration, or None when none covers it.
    envelope_share : computes ``outside_envelope_share`` for ``model``; None leaves it None.
    """
    power = run.power_w[run.valid]
    idle_w, idle_source = idle_level_w(run)
    req = run.requests
    end_s = run.start_s + run.interval_s * (run.n_steps - 1)
    inputs = int(req.input_tokens.sum())
    cached = int(req.cached_tokens.sum())
    outside = None
    if model is not None and envelope_share is not None:
        outside = float(envelope_share(model, run))
    return RunInspection(
        source=str(run.source), run_id=run.run_id, config_id=run.config_id,
        model_name=run.model_name, gpu=run.gpu, tp=run.tp, serving=asdict(run.serving),
        start_utc=datetime.fromtimestamp(run.start_s, timezone.utc).isoformat(
            timespec="milliseconds"),
        duration_s=run.duration_s, n_steps=run.n_steps, interval_s=run.interval_s,
        sampling_interval_s=run.gaps.nominal_interval_s, gaps=run.gaps,
        idle_w=idle_w, idle_source=idle_source,
        busy_share=float(np.mean(power > BUSY_FACTOR * idle_w)),
        mean_w=float(power.mean()), peak_w=float(power.max()),
        request_log=find_request_log(Path(run.source)).name, requests=len(req),
        requests_in_window=int(np.count_nonzero((req.arrival_s >= run.start_s)
                                                & (req.arrival_s <= end_s))),
        input_tokens=inputs, output_tokens=int(req.output_tokens.sum()), cached_tokens=cached,
        cache_hit_share=cached / inputs if inputs else None,
        has_ttft=req.ttft_s is not None, engine_log=run.engine is not None,
        model=None if model is None else run.config_id, outside_envelope_share=outside)


def inspect_paths(paths: list[str | os.PathLike], *, max_gap_s: float = DEFAULT_MAX_GAP_S,
                  models: Mapping[str, Any] | None = None,
                  envelope_share: EnvelopeShare | None = None
                  ) -> list[RunInspection | Unreadable]:
    """Inspect every run under ``paths``; what cannot be read becomes an :class:`Unreadable`.

    Parameters
    ----------
    paths : run folders or folders of runs (:func:`~distgen.ingest.runs.discover_runs`).
    max_gap_s : [s] passed to :func:`~distgen.ingest.runs.read_run`.
    models : power models by config id (``ModelLibrary.models``), or None.
    envelope_share : see :func:`inspect_run`.

    Returns
    -------
    One entry per run folder (sorted per path) or per path that holds none; only
    :class:`~distgen.errors.DistgenError` is caught (anything else is a bug).
    """
    out: list[RunInspection | Unreadable] = []
    for path in paths:
        try:
            run_dirs = discover_runs(path)
        except DistgenError as exc:
            out.append(Unreadable(str(path), str(exc)))
            continue
        for run_dir in run_dirs:
            try:
                run = read_run(run_dir, max_gap_s=max_gap_s)
                model = None if models is None else models.get(run.config_id)
                out.append(inspect_run(run, model=model, envelope_share=envelope_share))
            except DistgenError as exc:
                out.append(Unreadable(str(run_dir), str(exc)))
    return out


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def format_inspection(r: RunInspection, *, models_known: bool = True) -> str:
    """The text block of one run; ``models_known=False``: no model library was read."""
    s = r.serving
    g = r.gaps
    lines = [f"run {r.run_id}  ({r.source})",
             f"  configuration  {r.config_id}: {r.model_name} on {r.tp} x {r.gpu}; "
             f"max_num_seqs {s['max_num_seqs']}, max_num_batched_tokens "
             f"{s['max_num_batched_tokens']}, max_model_len {s['max_model_len']}, chunked "
             f"prefill {_on(s['enable_chunked_prefill'])}, prefix caching "
             f"{_on(s['enable_prefix_caching'])}",
             f"  power          {r.duration_s:.2f} s from {r.start_utc}, {r.n_steps} steps of "
             f"{r.interval_s:g} s; sampled every {r.sampling_interval_s:.3f} s"]
    if g.count:
        spans = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in g.intervals_s[:5])
        more = f" and {g.count - 5} more" if g.count > 5 else ""
        steps = f"{g.invalid_steps} step{'' if g.invalid_steps == 1 else 's'}"
        lines.append(f"  gaps           {g.count} ({g.total_s:.2f} s in all, longest "
                     f"{g.longest_s:.2f} s; {steps} masked): {spans}{more}")
    else:
        lines.append("  gaps           none")
    how = ("median of the idle lead-in" if r.idle_source == "lead-in"
           else f"{IDLE_QUANTILE:.0%} quantile of power")
    lines += [f"  idle           {r.idle_w:.1f} W ({how})",
              f"  load           busy {r.busy_share:.1%} of steps (above {BUSY_FACTOR:g} x idle); "
              f"mean {r.mean_w:.1f} W, peak {r.peak_w:.1f} W",
              f"  requests       {r.requests:,} in {r.request_log} ({r.requests_in_window:,} "
              f"inside the power window); {r.input_tokens:,} prompt and {r.output_tokens:,} "
              f"output tokens; TTFT {'recorded' if r.has_ttft else 'not recorded'}"]
    share = "-" if r.cache_hit_share is None else f"{r.cache_hit_share:.1%}"
    lines.append(f"  prefix cache   {r.cached_tokens:,} prompt tokens cached ({share} of "
                 f"prompt tokens)")
    lines.append("  engine log     " + ("engine.csv" if r.engine_log else
                                        "none (power and request logs only)"))
    if not models_known:
        lines.append("  model          unknown (no model library read)")
    elif r.model is None:
        lines.append("  model          none in the library for this configuration")
    elif r.outside_envelope_share is None:
        lines.append(f"  model          {r.model}")
    else:
        lines.append(f"  model          {r.model}; {r.outside_envelope_share:.1%} of valid steps "
                     f"outside its operating envelope")
    return "\n".join(lines)


def format_inspections(items: list[RunInspection | Unreadable], *,
                       models_known: bool = True) -> str:
    """Every run's block; an unreadable one as ``error: <message>`` (the message names the
    file)."""
    blocks = [format_inspection(r, models_known=models_known) if isinstance(r, RunInspection)
              else f"error: {r.error}" for r in items]
    return "\n\n".join(blocks)


def format_gap_lines(runs: list[RunTrace]) -> str:
    """One line per run with sampling gaps (count, total, longest), for ``fit`` and
    ``validate``; empty when no run has a gap."""
    lines = [f"  {r.run_id}: {r.gaps.count} gap{'s' if r.gaps.count > 1 else ''}, "
             f"{r.gaps.total_s:.2f} s in all, longest {r.gaps.longest_s:.2f} s "
             f"({r.gaps.invalid_steps} step{'' if r.gaps.invalid_steps == 1 else 's'} masked)"
             for r in runs if r.gaps.count]
    if not lines:
        return ""
    return "\n".join(["sampling gaps (masked: not fitted on, not scored):"] + lines)
