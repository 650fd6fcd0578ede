"""Power that follows the work: the expected level of a step and the spread around it.

**Level.** While a GPU runs an engine iteration its power rises above the idle floor by an
amount that depends on what the iteration does. The serving model splits each step's busy time
into four activities (:func:`activity_shares`): the fixed part of every iteration (reading the
weights, kernel launches), the per-sequence part of decoding, reading the KV cache of the
decoding requests (context), and computing prompt tokens (prefill, including the attention of
long prompts). Each activity draws its own power above idle, ``d_w`` [W] (:class:`WorkPower`),
so the expected power of a step is

    level = idle_w + sum_a d_w[a] * share[a],        share[a] = time in activity a / step

A step that is busy 12 % of the time costs 12 % of a busy step's excess energy; a step can never
draw more than ``idle_w + max(d_w)`` however much work is queued, so the level saturates at a
fitted ceiling instead of growing with tokens; and energy per token follows from the same time
model that sets throughput (J per prefill token = ``d_w[prefill] * prefill_s_per_token``).

**Sensor.** The GPU's power reading at a sample reflects the recent past, not only the current
step: a short causal kernel ``(1 - h1 - h2, h1, h2)`` over the current and two previous steps'
shares (it sums to one, so energy is unchanged) is fitted with the activity powers. It is how the
reading ramps down after work and up before it.

**Spread.** Around the level, power follows the empirical residual distribution of a *state*:
the state of a step is the cell of its (sensor-weighted) busy fraction and prefill share
(:data:`BUSY_EDGES`, :data:`PREFILL_EDGES`), so an idle step, a step that is briefly busy and a
saturated prefill step each have their own spread. Residual quantiles are centred (mean zero),
so the spread never moves the energy; a latent standard normal with per-state AR(1)
coefficient ``phi`` carries the time structure while the state holds (Gaussian copula).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distgen.workload.serving import (F_ATTENTION_TOKENS, F_CONTEXT_TOKENS, F_DECODE_TOKENS,
                                      F_ITERATIONS, F_PREFILL_TOKENS, ServingParams)

#: Activities of a busy GPU, columns of :func:`activity_shares` and entries of ``d_w``.
ACTIVITIES = ("iteration", "decode_seq", "context", "prefill")
A_ITERATION, A_DECODE_SEQ, A_CONTEXT, A_PREFILL = range(4)
#: State cells: edges of the busy fraction and of the prefill share of the step (both after the
#: sensor kernel).
BUSY_EDGES = (0.02, 0.3, 0.7, 0.97)
PREFILL_EDGES = (0.05, 0.4)
N_BUSY_BINS = len(BUSY_EDGES) + 1
N_PREFILL_BINS = len(PREFILL_EDGES) + 1
N_STATES = N_BUSY_BINS * N_PREFILL_BINS
#: Probabilities at which each state's residual quantiles are stored.
QUANTILE_POINTS = 65
#: A board held at its power limit reads up to this much above it in ``power.draw``.
LIMIT_READING_MARGIN = 1.02
#: [s] the window over which the sustained power of the training runs is measured.
SUSTAINED_WINDOW_S = 60.0


def sustained_limit_w(power: list[np.ndarray], tdp_w: float, interval_s: float) -> float:
    """[W] the sustained power a deployment's reading can hold: its boards' limit (TDP x TP,
    plus :data:`LIMIT_READING_MARGIN`), or the highest :data:`SUSTAINED_WINDOW_S` mean the
    training runs held, whichever is higher (the shared cache-off agentic run holds 439 W for
    a minute on a 400 W A100: the reading is not capped at TDP)."""
    w = int(round(SUSTAINED_WINDOW_S / interval_s))
    held = [float(np.convolve(p, np.ones(w) / w, "valid").max()) for p in power if p.size >= w]
    return max([LIMIT_READING_MARGIN * tdp_w] + held)


@dataclass(frozen=True)
class WorkPower:
    """Power drawn by each activity of a busy GPU, and the sensor kernel.

    Attributes
    ----------
    idle_w : [W] deployment power with no work (all TP GPUs).
    d_w : (4,) [W] power above idle while the GPU does each of :data:`ACTIVITIES`.
    sensor : (h1, h2) weights of the previous and the one-before-previous step in a reading.
    limit_w : [W] the sustained power limit (:func:`sustained_limit_w`).
    limit_budget_j : [J] energy above ``limit_w`` a burst may use before the limiter holds the
        level at the limit (:func:`limit_bucket_j`; the largest the training runs used).
    """

    idle_w: float
    d_w: tuple[float, float, float, float]
    sensor: tuple[float, float]
    limit_w: float = float("inf")
    limit_budget_j: float = 0.0

    @property
    def ceiling_w(self) -> float:
        """[W] the highest level a step can have: the GPU busy all step at its most
        power-hungry activity."""
        return self.idle_w + max(self.d_w)

    def energy_account(self, serving: ServingParams) -> dict:
        """Energy per unit of work [J] implied by the activity powers and the time model."""
        d = self.d_w
        return {"idle_w": self.idle_w,
                "j_per_iteration": d[A_ITERATION] * serving.step_base_s,
                "j_per_decode_token": d[A_DECODE_SEQ] * serving.decode_s_per_seq,
                "j_per_context_token": d[A_CONTEXT] * serving.context_s_per_token,
                "j_per_prefill_token": d[A_PREFILL] * serving.prefill_s_per_token,
                "j_per_attention_token": d[A_PREFILL] * serving.prefill_attention_s_per_token,
                "ceiling_w": self.ceiling_w}


def activity_shares(features: np.ndarray, serving: ServingParams,
                    interval_s: float) -> np.ndarray:
    """(n, 4) fraction of each step spent in each activity, from the serving model's work.

    ``features`` are :func:`~distgen.workload.serving.replay_workload` columns. The shares of
    a step sum to its busy fraction (at most 1).
    """
    f = np.asarray(features, np.float64)
    return np.c_[serving.step_base_s * f[:, F_ITERATIONS],
                 serving.decode_s_per_seq * f[:, F_DECODE_TOKENS],
                 serving.context_s_per_token * f[:, F_CONTEXT_TOKENS],
                 serving.prefill_s_per_token * f[:, F_PREFILL_TOKENS]
                 + serving.prefill_attention_s_per_token * f[:, F_ATTENTION_TOKENS]] / interval_s


def sensor_filter(x: np.ndarray, sensor: tuple[float, float]) -> np.ndarray:
    """Causal sensor kernel along the first axis: ``(1 - h1 - h2) x_t + h1 x_(t-1) + h2
    x_(t-2)`` with zeros before the start (an idle GPU)."""
    h1, h2 = sensor
    x = np.asarray(x, np.float64)
    out = (1.0 - h1 - h2) * x
    out[1:] += h1 * x[:-1]
    out[2:] += h2 * x[:-2]
    return out


def level_w(shares: np.ndarray, power: WorkPower) -> np.ndarray:
    """[W] expected power of each step from its activity shares (before the sensor kernel)."""
    return power.idle_w + sensor_filter(shares, power.sensor) @ np.asarray(power.d_w)


def limited_level_w(level: np.ndarray, limit_w: float, budget_j: float,
                    interval_s: float) -> np.ndarray:
    """The level held under the power limit, step by step as the kernel does it: energy above
    ``limit_w`` is allowed until ``budget_j`` is used, the bucket drains while below."""
    out = np.array(level, np.float64)
    over = 0.0
    for i, v in enumerate(out):
        excess = (v - limit_w) * interval_s
        if excess > 0.0:
            allowed = max(budget_j - over, 0.0)
            if excess > allowed:
                excess = allowed
                out[i] = limit_w + allowed / interval_s
            over += excess
        else:
            over = max(over + excess, 0.0)
    return out


def limit_bucket_j(power_w: np.ndarray, limit_w: float, interval_s: float) -> np.ndarray:
    """[J] the power limiter's bucket along a series: energy above ``limit_w`` accumulates,
    and drains at the rate the power is below it (the kernel's rule, without clipping)."""
    over = np.zeros(len(power_w))
    level = 0.0
    for i, p in enumerate(np.asarray(power_w, np.float64)):
        level = max(level + (p - limit_w) * interval_s, 0.0)
        over[i] = level
    return over


def state_of(shares_seen: np.ndarray) -> np.ndarray:
    """State (0 .. N_STATES - 1) of each step from its sensor-filtered activity shares."""
    busy = shares_seen.sum(axis=1)
    prefill = np.divide(shares_seen[:, A_PREFILL], busy, out=np.zeros_like(busy),
                        where=busy > 1e-12)
    b = np.searchsorted(np.asarray(BUSY_EDGES), busy, "right")
    p = np.searchsorted(np.asarray(PREFILL_EDGES), prefill, "right")
    return b * N_PREFILL_BINS + p


@dataclass(frozen=True)
class Spread:
    """Residual distribution and persistence per state.

    Attributes
    ----------
    quantiles_w : (N_STATES, QUANTILE_POINTS) [W] residual quantiles at ``linspace(0, 1, n)``,
        each state's mean zero.
    phi : (N_STATES,) latent AR(1) coefficient while the state holds.
    n_samples : (N_STATES,) training steps of each state (0: borrowed from ``source``).
    source : (N_STATES,) the state whose samples a state's distribution comes from.
    offset_w : (N_STATES,) [W] mean residual added to the level in each state (zeros: the
        level alone sets the energy).
    """

    quantiles_w: np.ndarray
    phi: np.ndarray
    n_samples: np.ndarray
    source: np.ndarray
    offset_w: np.ndarray
