"""Power capping and demand response as a fluid backlog of deferred work.

This is a post-hoc approximation applied to a generated trace, not a re-run of the serving
model. Work that would draw power above the cap is *deferred*, not deleted: its energy is put
in a first-in-first-out backlog and served later, whenever the entity draws less than its
ceiling. So the served trace keeps the run's energy (apart from what is still deferred at the
end, which is reported), never exceeds the uncapped trace's peak, and the delay of each
deferred joule is measured.

Model (per entity, steps t = 1..n of length dt)
----------------------------------------------
Let p_t [W] be the uncapped power and k_t [W] the ceiling: the cap where one applies, else the
catch-up limit (by default the entity's own uncapped peak, so draining the backlog never makes
a new peak). The backlog B [J] follows the Lindley recursion

    B_0 = 0,   B_t = max(0, B_{t-1} + (p_t - k_t) dt),

solved in closed form as B_t = S_t - min(0, min_{s<=t} S_s) with S_t = sum_{s<=t} (p_s - k_s) dt.
The served power is s_t = p_t + (B_{t-1} - B_t) / dt: equal to k_t while a backlog remains or
the demand is above the ceiling, p_t plus the rest of the backlog otherwise. Energy deferred in
step t (``(p_t - k_t) dt`` when positive) arrives in the backlog at step t and leaves, FIFO, at
the step in which the cumulative served-back energy first reaches it; the delay is the number
of steps between the two times dt.

What it leaves out: the serving model's slow-down under a cap is not linear in power (a capped
GPU runs at lower clocks and better energy per token, so the same work may need less energy);
latency-dependent user behaviour (abandoned or retried requests) is ignored; the non-GPU share
of a server is treated as deferrable like GPU power when a server or rack is capped as a whole;
and queueing limits (requests dropped when a queue is full) are not applied to the backlog.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CappedTrace", "fluid_cap", "fifo_delays"]


@dataclass(frozen=True)
class CappedTrace:
    """Result of :func:`fluid_cap`; arrays have the input's leading shape (per entity).

    Attributes
    ----------
    served_w : [W] (..., n_t) power after capping.
    backlog_j : [J] (..., n_t) deferred energy waiting at the end of each step.
    ceiling_w : [W] (..., n_t) the ceiling applied in each step (cap or catch-up limit).
    interval_s : [s] step length.
    energy_before_j, energy_after_j : [J] (...) energy of the uncapped and the served trace.
    deferred_j : [J] (...) energy deferred in total (power above the ceiling times dt).
    served_back_j : [J] (...) deferred energy served again before the end.
    still_deferred_j : [J] (...) backlog at the end of the series (deferred_j - served_back_j).
    peak_before_w, peak_after_w : [W] (...) peaks of the uncapped and the served trace.
    capped_steps : (...) steps that end with deferred work waiting (the cap held back part
        of the demand or of the backlog).
    mean_delay_s : [s] (...) energy-weighted mean delay of the deferred energy that was served
        back (NaN when nothing was).
    max_delay_s : [s] (...) largest such delay (NaN when nothing was served back).
    """

    served_w: np.ndarray
    backlog_j: np.ndarray
    ceiling_w: np.ndarray
    interval_s: float
    energy_before_j: np.ndarray
    energy_after_j: np.ndarray
    deferred_j: np.ndarray
    served_back_j: np.ndarray
    still_deferred_j: np.ndarray
    peak_before_w: np.ndarray
    peak_after_w: np.ndarray
    capped_steps: np.ndarray
    mean_delay_s: np.ndarray
    max_delay_s: np.ndarray


def fifo_delays(arrived_j, departed_j, interval_s: float) -> tuple[float, float, float]:
    """Delays of a FIFO fluid queue from its per-step arrivals and departures.

    Parameters
    ----------
    arrived_j : [J] (n,) energy entering the backlog in each step (>= 0).
    departed_j : [J] (n,) energy leaving it in each step (>= 0, never more than has arrived).
    interval_s : [s] step length.

    Returns
    -------
    (mean_delay_s, max_delay_s, served_j): energy-weighted mean and largest delay [s] of the
    energy that departed, and that energy [J]. The quantum at cumulative position x arrives in
    the first step where cumulative arrivals reach x and departs in the first step where
    cumulative departures do; the delay is the difference in steps times ``interval_s``. The
    delay is piecewise constant in x between the cumulative sums, so the weighting is exact.
    """
    a = np.cumsum(np.asarray(arrived_j, dtype=np.float64))
    d = np.cumsum(np.asarray(departed_j, dtype=np.float64))
    served = float(min(d[-1], a[-1])) if d.size else 0.0
    if served <= 0:
        return float("nan"), float("nan"), 0.0
    breaks = np.concatenate([a[a < served], d[d < served], [served]])
    breaks = np.unique(breaks[breaks > 0])
    lo = np.concatenate([[0.0], breaks[:-1]])
    width = breaks - lo
    keep = width > 0
    x = breaks[keep]
    width = width[keep]
    # the step holding quantum x (in (lo, x]) is the first with a cumulative sum >= x
    steps = (np.searchsorted(d, x, side="left") - np.searchsorted(a, x, side="left"))
    delay = np.maximum(steps, 0) * float(interval_s)
    return float((delay * width).sum() / width.sum()), float(delay.max()), served


def fluid_cap(power_w, cap_w, interval_s: float, *, catch_up_w=None) -> CappedTrace:
    """Cap a power series, deferring the energy above the cap to later steps (FIFO).

    Parameters
    ----------
    power_w : [W] (..., n_t) uncapped power, time on the last axis (one row per entity).
    cap_w : [W] the cap, broadcastable to ``power_w`` (a scalar, one value per entity, or a
        time-varying cap); ``inf`` where no cap applies.
    interval_s : [s] step length.
    catch_up_w : [W] the highest power at which deferred work is served back, broadcastable to
        ``power_w``; by default each entity's own uncapped peak, so no peak rises.

    Returns
    -------
    CappedTrace (see the module docstring for the model).
    """
    p = np.asarray(power_w, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] == 0 or not np.all(np.isfinite(p)):
        raise ValueError("power_w must be a finite series with time on its last axis")
    dt = float(interval_s)
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    cap = np.broadcast_to(np.asarray(cap_w, dtype=np.float64), p.shape)
    if np.any(np.isnan(cap)) or np.any(cap < 0):
        raise ValueError("cap_w must be >= 0 (inf for no cap)")
    peak_before = p.max(axis=-1)
    if catch_up_w is None:
        catch_up = peak_before[..., None]
    else:
        catch_up = np.asarray(catch_up_w, dtype=np.float64)
        if np.any(~np.isfinite(catch_up)) or np.any(catch_up < 0):
            raise ValueError("catch_up_w must be finite and >= 0")
    ceiling = np.minimum(cap, np.broadcast_to(catch_up, p.shape))
    x = (p - ceiling) * dt
    s = np.cumsum(x, axis=-1)
    backlog = s - np.minimum(np.minimum.accumulate(s, axis=-1), 0.0)
    prev = np.concatenate([np.zeros(p.shape[:-1] + (1,)), backlog[..., :-1]], axis=-1)
    at_ceiling = (backlog > 0) | (p > ceiling)
    served = np.where(at_ceiling, ceiling, np.minimum(p + prev / dt, np.maximum(ceiling, p)))
    arrived = np.maximum(x, 0.0)
    departed = np.maximum(served - p, 0.0) * dt
    deferred = arrived.sum(axis=-1)
    served_back = departed.sum(axis=-1)
    mean_delay = np.full(p.shape[:-1], np.nan)
    max_delay = np.full(p.shape[:-1], np.nan)
    flat_a = arrived.reshape(-1, p.shape[-1])
    flat_d = departed.reshape(-1, p.shape[-1])
    md, xd = mean_delay.reshape(-1), max_delay.reshape(-1)
    for i in np.flatnonzero(flat_d.sum(axis=1) > 0):
        md[i], xd[i], _ = fifo_delays(flat_a[i], flat_d[i], dt)
    return CappedTrace(
        served_w=served, backlog_j=backlog, ceiling_w=ceiling, interval_s=dt,
        energy_before_j=p.sum(axis=-1) * dt, energy_after_j=served.sum(axis=-1) * dt,
        deferred_j=deferred, served_back_j=served_back,
        still_deferred_j=backlog[..., -1], peak_before_w=peak_before,
        peak_after_w=served.max(axis=-1),
        capped_steps=(backlog > 0).sum(axis=-1),
        mean_delay_s=md.reshape(p.shape[:-1]), max_delay_s=xd.reshape(p.shape[:-1]))
