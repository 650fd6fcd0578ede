"""Physical consistency of a power model, from the model alone (no measured data).

Four checks, each run on synthetic traffic through the same kernel that generates fleets:

(a) **Isolated requests**: a 400-token / 8-token request alone on an idle deployment costs, above
    idle, at most its busy time x (TDP x TP - idle) plus half a step of that power (the sensor
    spreads a step's energy over its neighbours), and between 0.5 and 2 x what the model's
    energy account (activity powers x time) says.
(b) **Mean power follows the account** on a panel of traffic unlike the training runs
    (:data:`PANEL`: short outputs, long prompts, long outputs, chat; Poisson and 1-s bursts):
    generated mean power within +-10 % of the account applied to the serving model's work
    (activity powers x time, held under the board's power limit: the saturating successor of a
    linear account).
(c) **Monotone and bounded**: mean power does not fall as the request rate rises (the model's
    own token distribution, 0.1 req/s to 4 x the training maximum) and stays between idle and
    the sustained power limit: TDP x TP, or the highest minute-long mean the training runs held
    where that is higher (a fitted quantity: 439 W on a 400 W A100 in the shared runs).
(d) **The serving model drains** bursts of prompts up to 9,000 tokens and conserves tokens.

:func:`consistency_panel` returns the numbers and a pass flag per check; ``distgen validate``
prints the panel and writes it under ``"consistency"`` in its JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from distgen.engine.deployments import (DeploymentBatch, PackedModels, ReplayArrivals,
                                        SyntheticArrivals, gamma_gap_quantiles, replay_power)
from distgen.model.artifact import PowerModel
from distgen.model.power import activity_shares, level_w, limited_level_w
from distgen.workload.serving import (F_DECODE_BUSY_S, F_DECODE_TOKENS, F_PREFILL_BUSY_S,
                                      F_PREFILL_TOKENS, F_RUNNING, F_WAITING, replay_workload)

#: (label, prompt tokens, output tokens, requests/s) of check (b).
PANEL = (("400/8", 400, 8, 2.0), ("400/8", 400, 8, 8.0), ("4000/8", 4000, 8, 0.5),
         ("4000/8", 4000, 8, 2.0), ("50/1000", 50, 1000, 0.25), ("300/200", 300, 200, 0.5),
         ("300/200", 300, 200, 2.0))
ACCOUNT_TOLERANCE = 0.10
PANEL_SECONDS = 600.0
PANEL_DEPLOYMENTS = 8
#: Monotonicity allows this relative dip between consecutive rates (sampling noise).
MONOTONE_SLACK = 0.01
SEED = 20261203


@dataclass(frozen=True)
class PanelPoint:
    """One traffic of check (b): generated and account mean power [W]."""

    traffic: str
    arrivals: str
    rate_rps: float
    generated_w: float
    account_w: float
    ratio: float
    ok: bool


def _arrivals(rate_rps: float, duration_s: float, bursts: bool, rng) -> np.ndarray:
    """Poisson arrival times [s], or the same counts released at whole seconds (1-s bursts)."""
    n = rng.poisson(rate_rps * duration_s)
    t = np.sort(rng.uniform(0.0, duration_s, n))
    return np.floor(t) if bursts else t


def _generate(model: PowerModel, arrivals: list[np.ndarray], n_in, n_out, n_steps: int,
              seed: int) -> np.ndarray:
    """Mean power [W] per deployment of a batch, each serving its own arrival times."""
    offsets = np.r_[0, np.cumsum([a.size for a in arrivals])].astype(np.int64)
    t = np.concatenate(arrivals)
    k = t.size
    rep = ReplayArrivals(offsets, t, np.full(k, n_in, np.int32), np.zeros(k, np.int32),
                         np.full(k, n_out, np.int32))
    n_dep = len(arrivals)
    batch = DeploymentBatch(PackedModels.pack([model]), np.zeros(n_dep), np.arange(n_dep) * 8,
                            np.arange(n_dep), seed,
                            queue_capacity=max(16, int(np.diff(offsets).max()) + 1))
    out = np.zeros((n_dep, n_steps), np.int64)
    batch.advance(0, n_steps, out, replay=rep)
    return out.mean(axis=1) / 1000.0


def _account_w(model: PowerModel, arrivals: list[np.ndarray], n_in, n_out,
               n_steps: int) -> float:
    """The energy account's mean power [W]: the level of the serving model's work."""
    levels = []
    for a in arrivals:
        f = replay_workload(a, np.full(a.size, n_in), np.full(a.size, n_out), model.serving,
                            n_steps, model.interval_s)
        levels.append(_limited(model, level_w(activity_shares(f, model.serving,
                                                               model.interval_s),
                                               model.power)).mean())
    return float(np.mean(levels))


def _limited(model: PowerModel, level: np.ndarray) -> np.ndarray:
    return limited_level_w(level, model.power.limit_w, model.power.limit_budget_j,
                           model.interval_s)


def isolated_request(model: PowerModel, n_in: int = 400, n_out: int = 8,
                     spacing_s: float = 10.0, n_requests: int = 40) -> dict:
    """Check (a): requests far apart on one deployment, so each meets an idle server."""
    t = spacing_s * (np.arange(n_requests) + 0.5)
    n_steps = int(round(spacing_s * n_requests / model.interval_s))
    p = np.mean([replay_power(model, t, np.full(n_requests, n_in), np.full(n_requests, n_out),
                              n_steps, seed=s) for s in range(4)], axis=0)
    f = replay_workload(t, np.full(n_requests, n_in), np.full(n_requests, n_out), model.serving,
                        n_steps, model.interval_s)
    busy_s = float((f[:, F_PREFILL_BUSY_S] + f[:, F_DECODE_BUSY_S]).sum()) / n_requests
    generated_j = float((p - model.idle_w).sum()) * model.interval_s / n_requests
    account_j = float((level_w(activity_shares(f, model.serving, model.interval_s),
                               model.power) - model.idle_w).sum()) * model.interval_s / n_requests
    headroom_w = model.tdp_w - model.idle_w
    bound_j = busy_s * headroom_w + 0.5 * model.interval_s * headroom_w
    ratio = generated_j / account_j if account_j > 0 else float("inf")
    return {"prompt_tokens": n_in, "output_tokens": n_out, "busy_s": busy_s,
            "energy_above_idle_j": generated_j, "bound_j": bound_j, "account_j": account_j,
            "ratio_to_account": ratio,
            "ok": bool(generated_j <= bound_j and 0.5 <= ratio <= 2.0)}


def account_panel(model: PowerModel, *, duration_s: float = PANEL_SECONDS,
                  n_deployments: int = PANEL_DEPLOYMENTS) -> list[PanelPoint]:
    """Check (b) on :data:`PANEL`, Poisson and 1-s bursts."""
    rng = np.random.default_rng(SEED)
    n_steps = int(round(duration_s / model.interval_s))
    out = []
    for label, n_in, n_out, rate in PANEL:
        for bursts in (False, True):
            arr = [_arrivals(rate, duration_s, bursts, rng) for _ in range(n_deployments)]
            gen = float(_generate(model, arr, n_in, n_out, n_steps, SEED).mean())
            acc = _account_w(model, arr, n_in, n_out, n_steps)
            ratio = gen / acc
            out.append(PanelPoint(label, "1-s bursts" if bursts else "Poisson", rate, gen, acc,
                                  ratio, bool(abs(ratio - 1.0) <= ACCOUNT_TOLERANCE)))
    return out


def rate_sweep(model: PowerModel, *, duration_s: float = 300.0, n_deployments: int = 4) -> dict:
    """Check (c): Poisson traffic with the model's own token distribution, from 0.1 req/s to
    4 x the training runs' highest request rate."""
    n_steps = int(round(duration_s / model.interval_s))
    rates = np.geomspace(0.1, max(4.0 * _training_max_rate(model), 0.2), 7)
    means = []
    for rate in rates:
        batch = DeploymentBatch(PackedModels.pack([model]), np.zeros(n_deployments),
                                np.arange(n_deployments) * 8, np.arange(n_deployments), SEED)
        syn = SyntheticArrivals(np.full(n_deployments, rate),
                                np.ones((n_deployments, 2), np.float32), 0, n_steps + 1,
                                gamma_gap_quantiles(1.0))
        out = np.zeros((n_deployments, n_steps), np.int64)
        batch.advance(0, n_steps, out, synthetic=syn)
        means.append(float(out.mean()) / 1000.0)
    means = np.array(means)
    monotone = bool(np.all(np.diff(means) >= -MONOTONE_SLACK * means[:-1]))
    # over the run the limiter admits the sustained limit plus its burst budget; 0.5 % for the
    # spread's sampling noise
    ceiling = model.power.limit_w + model.power.limit_budget_j / duration_s
    bounded = bool(means.min() >= 0.98 * model.idle_w and means.max() <= 1.005 * ceiling)
    return {"rates_rps": rates.tolist(), "mean_w": means.tolist(), "idle_w": model.idle_w,
            "tdp_w": model.tdp_w, "limit_w": model.power.limit_w, "monotone": monotone,
            "bounded": bounded,
            "ok": monotone and bounded}


def _training_max_rate(model: PowerModel) -> float:
    """[req/s] the largest request rate the training runs reached (their provenance), else the
    envelope's running requests over an isolated request's service time."""
    rates = [r.get("n_requests", 0) / max(r.get("n_samples", 1) * model.interval_s, 1e-9)
             for r in model.provenance.get("runs", [])]
    return max(rates) if rates else 1.0


def drains(model: PowerModel, *, max_prompt_tokens: int = 9000) -> dict:
    """Check (d): a burst of long prompts (up to ``max_prompt_tokens``) drains to zero running
    and waiting, prompt tokens are computed exactly once and decode tokens are conserved."""
    rng = np.random.default_rng(SEED + 2)
    n = 200
    t = np.sort(rng.uniform(0.0, 20.0, n))
    n_in = rng.integers(1, max_prompt_tokens + 1, n)
    n_out = rng.integers(1, 400, n)
    f = replay_workload(t, n_in, n_out, model.serving, 40000, model.interval_s)
    drained = bool(f[-1, F_RUNNING] == 0 and f[-1, F_WAITING] == 0)
    prefill_ok = bool(f[:, F_PREFILL_TOKENS].sum() == n_in.sum())
    decode_err = float(abs(f[:, F_DECODE_TOKENS].sum() - (n_out - 1).sum()))
    return {"requests": n, "max_prompt_tokens": int(n_in.max()), "drained": drained,
            "prompt_tokens_conserved": prefill_ok, "decode_token_error": decode_err,
            "ok": bool(drained and prefill_ok
                       and decode_err < 1e-6 * max(1, int((n_out - 1).sum())))}


def consistency_panel(model: PowerModel) -> dict:
    """All four checks for one model (about a second per configuration)."""
    panel = account_panel(model)
    return {"isolated_request": isolated_request(model),
            "account_panel": [asdict(p) for p in panel],
            "account_ok": all(p.ok for p in panel),
            "rate_sweep": rate_sweep(model),
            "drains": drains(model)}


def passed(result: dict) -> bool:
    """True when every check of :func:`consistency_panel` passed."""
    return bool(result["isolated_request"]["ok"] and result["account_ok"]
                and result["rate_sweep"]["ok"] and result["drains"]["ok"])
