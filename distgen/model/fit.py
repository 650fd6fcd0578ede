"""Fit a :class:`PowerModel` for one serving configuration from measured runs.

Training data are windows ``(run, start_step, stop_step)`` of measured runs, so the validation
protocol can fit on a time split of a single run. Features for the transition model come from
replaying each run's request log through the fitted serving model, exactly as at generation
time, so systematic serving-model errors are learnt through rather than hidden.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from scipy.optimize import nnls

import distgen
from distgen.errors import InputError
from distgen.ingest.trace import RunTrace
from distgen.model.artifact import GPU_TDP_W, PowerModel, TokenQuantiles
from distgen.model.serving_fit import fit_serving, measured_running, run_workload
from distgen.model.states import ar1_phi, latent_scores, select_mixture, state_quantiles
from distgen.model.transitions import (FeatureGrid, TransitionData, calibrate,
                                       fit_transitions)
from distgen.workload.serving import (F_DECODE_TOKENS, F_ITERATIONS, F_PREFILL_TOKENS,
                                      F_RUNNING)

K_CANDIDATES = range(2, 11)
CLAMP_MARGIN = 0.05
CV_BLOCKS_PER_WINDOW = 4
#: Unlogged activity (engine busy while the request log has nothing in flight, e.g. the
#: benchmark client's warm-up request) is masked with this margin [steps] on each side.
UNEXPLAINED_MARGIN_STEPS = 4
#: Longer disagreements than this [steps] between replayed and measured occupancy are masked.
MAX_DISAGREEMENT_STEPS = 8

Window = tuple[RunTrace, int, int]


def consistent_steps(sim_running: np.ndarray, meas_running: np.ndarray) -> np.ndarray:
    """Steps where the replayed request log explains the engine's measured occupancy.

    False near engine activity that no logged request explains, and inside long stretches
    where replay and measurement disagree on busy vs idle; short edge offsets are kept.
    """
    sim_busy = sim_running > 0
    meas_busy = meas_running > 0
    unexplained = meas_busy & ~sim_busy
    width = 2 * UNEXPLAINED_MARGIN_STEPS + 1
    near_unexplained = np.convolve(unexplained.astype(float), np.ones(width), "same") > 0
    keep = ~near_unexplained
    disagree = sim_busy != meas_busy
    edges = np.flatnonzero(np.diff(np.r_[0, disagree.astype(np.int8), 0]))
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a >= MAX_DISAGREEMENT_STEPS:
            keep[a:b] = False
    return keep


def _transition_data(windows: list[Window], workloads, masks, states_per_window, grid):
    prev, nxt, cell, fold = [], [], [], []
    for (run, a, b), w, m, s in zip(windows, workloads, masks, states_per_window):
        cells = grid.cells(w[:, F_RUNNING], w[:, F_PREFILL_TOKENS])[a:b]
        ok = m[a:b]
        pair = ok[1:] & ok[:-1]
        block = np.minimum((np.arange(1, b - a) * CV_BLOCKS_PER_WINDOW) // (b - a),
                           CV_BLOCKS_PER_WINDOW - 1)
        prev.append(s[:-1][pair])
        nxt.append(s[1:][pair])
        cell.append(cells[1:][pair])
        fold.append(block[pair])
    cat = np.concatenate
    return TransitionData(cat(prev), cat(nxt), cat(cell)), cat(fold)


def energy_account(power_w, workload, interval_s: float) -> dict:
    """Idle floor + energy per iteration, per decode token and per prefill token (NNLS).

    A sanity prior for every configuration: P = idle + e_it * it/s + e_dec * dec/s +
    e_pre * pre/s, all coefficients non-negative.
    """
    x = np.c_[np.ones(len(power_w)), workload[:, F_ITERATIONS] / interval_s,
              workload[:, F_DECODE_TOKENS] / interval_s,
              workload[:, F_PREFILL_TOKENS] / interval_s]
    coef, _ = nnls(x, power_w)
    resid = power_w - x @ coef
    r2 = 1.0 - float(resid.var() / power_w.var()) if power_w.var() > 0 else float("nan")
    return {"idle_w": float(coef[0]), "j_per_iteration": float(coef[1]),
            "j_per_decode_token": float(coef[2]), "j_per_prefill_token": float(coef[3]),
            "r2": r2}


def workload_phases(workload) -> dict[str, np.ndarray]:
    """Boolean masks of idle / prefill / decode steps from the serving model's workload."""
    running = workload[:, F_RUNNING]
    prefill = workload[:, F_PREFILL_TOKENS] > 0
    return {"idle": running == 0, "prefill": (running > 0) & prefill,
            "decode": (running > 0) & ~prefill}


def phase_lut(power_w, workload) -> dict:
    """Splitwise-style phase look-up table: constant watts for idle / prefill / decode steps."""
    overall = float(np.mean(power_w))
    return {name: float(np.mean(power_w[m])) if m.any() else overall
            for name, m in workload_phases(workload).items()}


def phase_lut_series(lut: dict, workload) -> np.ndarray:
    """Power [W] per step of the phase look-up-table baseline."""
    out = np.zeros(workload.shape[0])
    for name, m in workload_phases(workload).items():
        out[m] = lut[name]
    return out


def fit_power_model(windows: list[Window], *, seed: int = 0) -> PowerModel:
    """Fit one configuration's model on training windows of its measured runs.

    Parameters
    ----------
    windows : (run, start_step, stop_step) per training run; all runs of one configuration.
    seed : seeds the mixture fit's restarts; the fit is deterministic for a given seed.
    """
    if not windows:
        raise ValueError("no training data")
    config_ids = {run.config_id for run, _, _ in windows}
    if len(config_ids) != 1:
        raise ValueError(f"training runs mix configurations: {sorted(config_ids)}")
    for run, a, b in windows:
        if run.engine is None:
            raise InputError(run.source / "engine.csv",
                             "missing: fitting needs the engine metrics log")
        if not 0 <= a < b <= run.n_steps:
            raise ValueError(f"window [{a}, {b}) outside run {run.run_id} ({run.n_steps} steps)")
    first = windows[0][0]
    rng = np.random.default_rng(seed)

    serving, serving_report = fit_serving(windows)
    workloads = [run_workload(run, serving) for run, _, _ in windows]
    masks = [consistent_steps(w[:, F_RUNNING], measured_running(run))
             for (run, _, _), w in zip(windows, workloads)]

    power = [run.power_w[a:b] for run, a, b in windows]
    all_power = np.concatenate(power)
    mixture, k_scores = select_mixture(all_power, K_CANDIDATES, rng)
    states = [mixture.assign(p) for p in power]
    bounds = np.cumsum([0] + [p.size for p in power])
    all_states = np.concatenate(states)
    quantiles = state_quantiles(all_power, all_states, mixture)
    phi = ar1_phi(latent_scores(all_power, all_states, mixture.k), all_states,
                  np.zeros(mixture.k), segments=list(zip(bounds[:-1], bounds[1:])))

    grid = FeatureGrid()
    data, fold = _transition_data(windows, workloads, masks, states, grid)
    transitions = fit_transitions(data, fold, grid, mixture.mean_w)
    sequences = [(grid.cells(w[:, F_RUNNING], w[:, F_PREFILL_TOKENS])[a:b], s, m[a:b])
                 for (run, a, b), w, s, m in zip(windows, workloads, states, masks)]
    transitions = calibrate(transitions, sequences, seed=seed)

    low, high = float(all_power.min()), float(all_power.max())
    span = high - low
    train_workload = np.concatenate([w[a:b] for (_, a, b), w in zip(windows, workloads)])
    requests = [run.requests.window(run.start_s + a * run.interval_s,
                                    run.start_s + b * run.interval_s) for run, a, b in windows]
    tokens = TokenQuantiles.fit(np.concatenate([r.input_tokens for r in requests]),
                                np.concatenate([r.output_tokens for r in requests]))
    tdp_per_gpu = GPU_TDP_W.get(first.gpu.upper())
    tdp_source = "datasheet"
    if tdp_per_gpu is None:
        tdp_per_gpu, tdp_source = high / first.tp, "observed maximum (GPU not in table)"
    provenance = {
        "runs": [{"run_id": run.run_id, "source": run.source.name if run.source else None,
                  "start_step": int(a), "stop_step": int(b), "n_samples": int(b - a),
                  "n_requests": len(req), "transitions_used": int(m[a:b].sum())}
                 for (run, a, b), req, m in zip(windows, requests, masks)],
        "n_samples": int(all_power.size),
        "fitted_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "distgen_version": distgen.__version__,
        "fit_seed": int(seed),
        "state_selection": {"criterion": "aic", "scores": {str(k): v for k, v in k_scores.items()}},
        "serving_fit": serving_report,
        "tdp_source": tdp_source,
    }
    return PowerModel(
        config_id=first.config_id, model_name=first.model_name, gpu=first.gpu, tp=first.tp,
        interval_s=first.interval_s, states=mixture, state_quantiles_w=quantiles, ar1_phi=phi,
        clamp_w=(max(low - CLAMP_MARGIN * span, 0.0), high + CLAMP_MARGIN * span),
        transitions=transitions, serving=serving, tokens=tokens,
        tdp_w=float(tdp_per_gpu * first.tp),
        baselines={"mean_w": float(all_power.mean()),
                   "lut_w": phase_lut(all_power, train_workload)},
        energy_account=energy_account(all_power, train_workload, first.interval_s),
        provenance=provenance)
