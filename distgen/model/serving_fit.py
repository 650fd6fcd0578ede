"""Fit the serving model's iteration-time parameters from the engine's own metrics.

Between two engine scrapes of a busy server, the elapsed time is the sum of the iterations'
durations: dt = step_base_s * d_iterations + prefill_s_per_token * d_prompt_tokens +
decode_s_per_seq * d_generated_tokens (each decode token is one sequence in one iteration).
That gives the three parameters by non-negative least squares. The counters are coarse (4 Hz)
and the three columns nearly collinear, so the result is then scaled by one factor chosen so
that the replayed request log reproduces the engine's measured running-request count.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from distgen.ingest.trace import RunTrace
from distgen.workload.serving import F_RUNNING, ServingParams, replay_workload

SCALE_CANDIDATES = np.linspace(0.8, 1.25, 19)


def _busy_intervals(run: RunTrace, start_s: float, stop_s: float):
    e = run.engine
    inside = (e.time_s >= start_s) & (e.time_s <= stop_s)
    t = e.time_s[inside]
    rows = np.c_[np.diff(e.iterations_total[inside]), np.diff(e.prompt_tokens_total[inside]),
                 np.diff(e.generation_tokens_total[inside])]
    running = e.running[inside]
    busy = (running[1:] > 0) & (running[:-1] > 0) & (rows[:, 0] > 0)
    return rows[busy], np.diff(t)[busy]


def measured_running(run: RunTrace) -> np.ndarray:
    """The engine's running-request gauge on the run's power grid (linear interpolation)."""
    return np.interp(run.time_s, run.engine.time_s, run.engine.running)


def run_workload(run: RunTrace, params: ServingParams) -> np.ndarray:
    """Replay a run's request log through the serving model on the run's power grid."""
    return replay_workload(run.requests.arrival_s - run.start_s, run.requests.input_tokens,
                           run.requests.output_tokens, params, run.n_steps, run.interval_s)


def fit_serving(windows: list[tuple[RunTrace, int, int]]) -> tuple[ServingParams, dict]:
    """Fit serving parameters on the training windows (run, start_step, stop_step).

    Returns the parameters and a report (regression sample count, calibration scale, the
    replayed-vs-measured running-request error).
    """
    rows, dts = [], []
    for run, a, b in windows:
        r, d = _busy_intervals(run, run.start_s + a * run.interval_s,
                               run.start_s + b * run.interval_s)
        rows.append(r)
        dts.append(d)
    x = np.concatenate(rows) if rows else np.zeros((0, 3))
    y = np.concatenate(dts) if dts else np.zeros(0)
    if x.shape[0] < 10:
        raise ValueError(f"only {x.shape[0]} busy engine intervals to fit the serving model")
    coef, _ = nnls(x, y)
    # a zero iteration cost would make iterations free; keep a floor of 1 ms
    coef[0] = max(coef[0], 1e-3)
    settings = windows[0][0].serving
    best = None
    for scale in SCALE_CANDIDATES:
        params = ServingParams(coef[0] * scale, coef[1] * scale, coef[2] * scale,
                               settings.max_num_batched_tokens, settings.max_num_seqs)
        err, n = 0.0, 0
        for run, a, b in windows:
            sim = run_workload(run, params)[a:b, F_RUNNING]
            err += float(((sim - measured_running(run)[a:b]) ** 2).sum())
            n += b - a
        if best is None or err < best[0]:
            best = (err, scale, params, n)
    err, scale, params, n = best
    mean_measured = float(np.mean(np.concatenate(
        [measured_running(r)[a:b] for r, a, b in windows])))
    report = {"busy_intervals": int(x.shape[0]), "calibration_scale": float(scale),
              "running_rmse": float(np.sqrt(err / max(n, 1))),
              "mean_running_measured": mean_measured}
    return params, report
