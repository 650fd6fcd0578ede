"""Held-out fidelity of the power model and of three baselines (MODEL.md section 4).

Each held-out run is regenerated from its request log alone (arrival times and token counts;
never its power), with 5 seeds, and compared with the measured trace on the held-out window.
Per configuration and seed: energy error pooled over the held-out runs; KS and P95/P99 errors
over the pooled held-out samples; ACF R^2 (lags 1..50) and NRMSE averaged over runs. The
reported figure is the median over seeds.

Which data are held out:
- runs the given model was not trained on ("unseen runs") are scored whole with that model;
- otherwise the fitting procedure is re-run on a split of the data ("refit" protocol):
  leave-one-run-out when the configuration has several runs, else fit on the first 70% of the
  run and score the remaining 30% ("time split 70/30"). Splits are by run or by contiguous time,
  never by interleaved samples.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from distgen.analysis import metrics
from distgen.engine.deployments import replay_power
from distgen.ingest.trace import RunTrace
from distgen.model.artifact import ModelLibrary, PowerModel
from distgen.model.envelope import share_outside
from distgen.model.fit import fit_power_model, phase_lut_series
from distgen.model.serving_fit import run_workload

N_SEEDS = 5
TIME_SPLIT_TRAIN_FRACTION = 0.7
MAX_LAG = 50
SPLIT_LOO = "leave-one-run-out"
SPLIT_TIME = "time split 70/30"
SPLIT_UNSEEN = "unseen runs"

Window = tuple[RunTrace, int, int]


@dataclass(frozen=True)
class Fold:
    train: list[Window]   # empty when an existing model is scored as is
    test: list[Window]


def plan_folds(runs: list[RunTrace], model: PowerModel | None) -> tuple[str, list[Fold]]:
    """Choose the split for one configuration's runs (see module docstring)."""
    trained_on = set()
    if model is not None:
        trained_on = {r["run_id"] for r in model.provenance.get("runs", [])}
    if model is not None and not trained_on & {r.run_id for r in runs}:
        return SPLIT_UNSEEN, [Fold([], [(r, 0, r.n_steps) for r in runs])]
    if len(runs) >= 2:
        return SPLIT_LOO, [Fold([(o, 0, o.n_steps) for o in runs if o is not r], [(r, 0, r.n_steps)])
                           for r in runs]
    run = runs[0]
    cut = int(round(TIME_SPLIT_TRAIN_FRACTION * run.n_steps))
    return SPLIT_TIME, [Fold([(run, 0, cut)], [(run, cut, run.n_steps)])]


def score_windows(measured: list[np.ndarray], generated: list[np.ndarray]) -> dict:
    """Scores of one seed over a configuration's held-out windows."""
    y_all, g_all = np.concatenate(measured), np.concatenate(generated)
    acf = [metrics.acf_r2(y, g, MAX_LAG) for y, g in zip(measured, generated)]
    acf = [a for a in acf if np.isfinite(a)]
    return {
        "energy_err_pct": metrics.pooled_energy_error_pct(measured, generated),
        "ks": metrics.ks_statistic(y_all, g_all),
        "acf_r2": float(np.mean(acf)) if acf else float("nan"),
        "nrmse": float(np.mean([metrics.nrmse(y, g) for y, g in zip(measured, generated)])),
        "p95_err_pct": metrics.percentile_error_pct(y_all, g_all, 95),
        "p99_err_pct": metrics.percentile_error_pct(y_all, g_all, 99),
    }


def regenerate(model: PowerModel, run: RunTrace, seed: int) -> np.ndarray:
    """Generated power [W] for a whole measured run, from its request log only (arrival
    times, prompt, cached and output tokens), on the model's fitted clock offset."""
    req = run.requests
    return replay_power(model, req.arrival_s - run.start_s + model.arrival_offset_s,
                        req.input_tokens, req.output_tokens, run.n_steps, seed,
                        cached_tokens=getattr(req, "cached_tokens", None))


def _baseline_series(model: PowerModel, run: RunTrace) -> dict[str, np.ndarray]:
    n = run.n_steps
    work = run_workload(run, model.serving, model.arrival_offset_s)
    return {"tdp": np.full(n, model.tdp_w), "mean": np.full(n, model.baselines["mean_w"]),
            "lut": phase_lut_series(model.baselines["lut_w"], work)}


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def validate_configuration(runs: list[RunTrace], model: PowerModel | None, *,
                           seeds: int = N_SEEDS, fit_seed: int = 0,
                           collect: list | None = None) -> dict:
    """Held-out scores of the model and the baselines for one configuration's runs.

    ``collect``, when a list, receives ``(config_id, run_id, measured_w, generated_w_seed0,
    interval_s)`` per held-out window (for ``distgen validate --report``)."""
    split, folds = plan_folds(runs, model)
    measured, per_seed = [], [[] for _ in range(seeds)]
    base = defaultdict(list)
    halves = []
    run_ids, outside = [], {}
    for fold in folds:
        fold_model = fit_power_model(fold.train, seed=fit_seed) if fold.train else model
        for run, a, b in fold.test:
            # steps inside sampling gaps are missing data: left out of measured and generated
            valid = np.asarray(getattr(run, "valid", np.ones(run.n_steps, bool)), bool)[a:b]
            y = run.power_w[a:b][valid]
            measured.append(y)
            run_ids.append(run.run_id)
            outside[run.run_id] = share_outside(fold_model, run)
            for s in range(seeds):
                per_seed[s].append(regenerate(fold_model, run, s)[a:b][valid])
            if collect is not None:
                collect.append((run.config_id, run.run_id, y, per_seed[0][-1], run.interval_s))
            for name, series in _baseline_series(fold_model, run).items():
                base[name].append(series[a:b][valid])
            h = y.size // 2
            if h > MAX_LAG + 2:
                halves.append(metrics.acf_r2(y[:h], y[h:2 * h], MAX_LAG))
    ours = metrics.summarise_seeds([score_windows(measured, g) for g in per_seed])
    result = {"runs": len(runs), "split": split,
              "held_out_samples": int(sum(y.size for y in measured)), **_clean(ours),
              "baselines": {name: _clean(score_windows(measured, series))
                            for name, series in base.items()},
              "diagnostics": {
                  "measured_acf_r2_between_halves": float(np.mean(halves)) if halves else None,
                  "energy_err_pct_per_run": {
                      rid: float(np.median([metrics.energy_error_pct(measured[i], g[i])
                                            for g in per_seed]))
                      for i, rid in enumerate(run_ids)},
                  "outside_envelope_share_per_run": outside}}
    return result


def validate(runs: list[RunTrace], library: ModelLibrary | None, *, seeds: int = N_SEEDS,
             collect: list | None = None) -> dict:
    """Validate every configuration found in ``runs`` (see :func:`validate_configuration`).

    Configurations the library has no model for are reported with ``"status": "no model"``.
    """
    by_config: dict[str, list[RunTrace]] = defaultdict(list)
    for run in runs:
        by_config[run.config_id].append(run)
    out = {}
    for config_id in sorted(by_config):
        group = sorted(by_config[config_id], key=lambda r: r.run_id)
        model = library.models.get(config_id) if library is not None else None
        if model is None:
            out[config_id] = {"runs": len(group), "status": "no model",
                              "message": f"no fitted model for {config_id} in the library"}
            continue
        out[config_id] = validate_configuration(group, model, seeds=seeds, collect=collect)
    return out
