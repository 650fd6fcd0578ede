"""Site request-rate processes: diurnal shape, site-wide bursts and correlated modulation.

A deployment's request rate is ``base_rps x m(d, k)`` with the multiplier, constant over the
modulation interval ``k`` (length ``ModulationConfig.interval_s``)::

    m(d, k) = diurnal(hour at the middle of interval k) x burst(k) x modulation(d, k)

every factor with mean 1. All three are pure functions of (config, seed, stable ids, k):

* **diurnal** (:class:`~distgen.config.schema.DiurnalConfig`): ``1 + A cos(2 pi (h - peak) / 24)``
  with ``A = (1 - r) / (1 + r)``, ``r = trough_ratio`` (so min / max = r and the daily mean is 1).
* **bursts** (:class:`~distgen.config.schema.BurstConfig`, ``kind = "mmpp"``): one two-state
  (calm / burst) chain for the site, stepped once per interval. Leaving a state within one
  interval has probability ``p = 1 - exp(-interval_s / mean_sojourn_s)`` (the chance that an
  exponential sojourn ends within the interval). Interval 0 draws from the chain's stationary
  law ``P(burst) = pi_b = p_cb / (p_cb + p_bc)``; afterwards the chain switches when the uniform of
  interval k is below the leaving probability of its state. Uniforms: key (seed, KIND_SITE,
  uid 1, STREAM_RATE), counter k. The factor is ``high_factor`` in a burst and 1 when calm,
  divided by its stationary mean ``1 + (high_factor - 1) pi_b``. ``pi_b`` tends to
  ``mean_burst_s / (mean_burst_s + mean_calm_s)`` when ``interval_s`` is small against both
  sojourn means.
* **modulation** (:class:`~distgen.config.schema.ModulationConfig`): unit-variance AR(1) processes
  ``x_0 = e_0``, ``x_k = phi x_{k-1} + sqrt(1 - phi^2) e_k`` with ``phi = exp(-interval_s /
  correlation_time_s)``, innovations ``e_k = normal(key, k)``: one for the site (KIND_SITE, uid 0),
  one per row (KIND_ROW, row id), rack (KIND_RACK, rack uid) and deployment (KIND_DEPLOYMENT,
  deployment uid), all with stream STREAM_RATE. The log-multiplier ``g = sqrt(rho_site) x_site
  + sqrt(rho_row) x_row + sqrt(rho_rack) x_rack + sqrt(1 - rho_site - rho_row - rho_rack) x_dep``
  is standard normal; ``modulation = exp(sigma g - sigma^2 / 2)`` with ``sigma^2 = ln(1 + cv^2)``
  has mean 1 and CV ``cv``. Two deployments' ``g`` correlate by the variance share of the
  processes they have in common.

Generation runs in time chunks, so the processes stream: :func:`rate_state_init` gives the state
before interval 0 and :func:`rate_multipliers` returns the multipliers of intervals
``k0 .. k0 + n - 1`` with the state after them. Any chunking gives bit-identical results, and a
deployment's row does not depend on which other deployments are in the slice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from distgen.core.rng import (KIND_DEPLOYMENT, KIND_RACK, KIND_ROW, KIND_SITE, STREAM_RATE,
                                entity_key, normal, uniform01)

#: uid of the site modulation process and of the site burst chain (both KIND_SITE).
SITE_MODULATION_UID = 0
SITE_BURST_UID = 1
_SKIP_BLOCK = 4096  # intervals per block when skipping ahead


def diurnal_factor(hour_of_day, peak_hour: float, trough_ratio: float):
    """Diurnal rate shape at ``hour_of_day`` [h] (any real; taken modulo 24), vectorised.

    ``1 + A cos(2 pi (h - peak_hour) / 24)`` with ``A = (1 - trough_ratio) / (1 + trough_ratio)``:
    maximum ``1 + A`` at ``peak_hour``, minimum ``1 - A`` twelve hours later, min / max =
    ``trough_ratio``, mean 1 over 24 h.
    """
    if not 0.0 <= trough_ratio <= 1.0:
        raise ValueError(f"trough_ratio must be in [0, 1], got {trough_ratio}")
    amp = (1.0 - trough_ratio) / (1.0 + trough_ratio)
    h = np.asarray(hour_of_day, np.float64)
    return 1.0 + amp * np.cos(2.0 * np.pi * (h - peak_hour) / 24.0)


def ar1_phi(interval_s: float, correlation_time_s: float) -> float:
    """AR(1) coefficient of a process with time constant ``correlation_time_s`` sampled every
    ``interval_s`` (0 for a zero time constant: white noise)."""
    if correlation_time_s <= 0.0:
        return 0.0
    return float(np.exp(-interval_s / correlation_time_s))


def burst_switch_probabilities(bursts, interval_s: float) -> tuple[float, float]:
    """(P(calm -> burst), P(burst -> calm)) per interval: ``1 - exp(-interval_s / mean)``."""
    p_cb = 1.0 - np.exp(-interval_s / bursts.mean_calm_s)
    p_bc = 1.0 - np.exp(-interval_s / bursts.mean_burst_s)
    return float(p_cb), float(p_bc)


def burst_stationary_fraction(bursts, interval_s: float) -> float:
    """Stationary probability of the burst state of the discrete chain."""
    p_cb, p_bc = burst_switch_probabilities(bursts, interval_s)
    return p_cb / (p_cb + p_bc)


@dataclass(frozen=True)
class RateState:
    """Carried state of the rate processes of one fleet slice after interval ``k_next - 1``.

    ``x_site`` (1,), ``x_row`` (rows of the slice,), ``x_rack`` (racks of the slice,), ``x_dep``
    (deployments of the slice,): AR(1) values (None before interval 0, or when the component is
    unused). ``burst``: 1 in a burst, 0 calm, -1 before interval 0 or without bursts.
    """

    k_next: int
    n_deployments: int
    x_site: np.ndarray | None = None
    x_row: np.ndarray | None = None
    x_rack: np.ndarray | None = None
    x_dep: np.ndarray | None = None
    burst: int = -1



def rate_state_init(fleet) -> RateState:
    """State before interval 0 for the deployments of ``fleet`` (a topology.FleetSlice).

    The traffic configuration is validated once, by :func:`distgen.config.validate`.
    """
    return RateState(k_next=0, n_deployments=fleet.n_deployments)


def _ar1_block(keys: np.ndarray, x_prev: np.ndarray | None, k0: int, n: int,
               phi: float) -> np.ndarray:
    """AR(1) values (len(keys), n) of intervals k0..k0+n-1, continuing from ``x_prev``.

    ``x_prev`` is None exactly when k0 == 0 (stationary start x_0 = e_0).
    """
    from scipy.signal import lfilter  # imported here: scipy.signal takes ~0.8 s to import

    e = normal(keys[:, None], np.arange(k0, k0 + n, dtype=np.uint64)[None, :])
    e = np.ascontiguousarray(e, np.float64)
    scale = np.sqrt(1.0 - phi * phi)
    if x_prev is None:
        x0 = e[:, :1].copy()
        if n == 1:
            return x0
        rest = lfilter([scale], [1.0, -phi], e[:, 1:], axis=1, zi=phi * x0)[0]
        return np.concatenate([x0, rest], axis=1)
    return lfilter([scale], [1.0, -phi], e, axis=1, zi=(phi * x_prev)[:, None])[0]


def _burst_block(traffic, seed: int, burst: int, k0: int, n: int) -> tuple[np.ndarray, int]:
    """Burst factor (n,) of intervals k0..k0+n-1 and the chain state after them."""
    b = traffic.bursts
    dt = traffic.modulation.interval_s
    p_cb, p_bc = burst_switch_probabilities(b, dt)
    pi_b = p_cb / (p_cb + p_bc)
    key = entity_key(seed, KIND_SITE, SITE_BURST_UID, STREAM_RATE)
    u = uniform01(key, np.arange(k0, k0 + n, dtype=np.uint64))
    state = np.empty(n, np.int8)
    s = burst
    for i in range(n):
        if s < 0:
            s = 1 if u[i] < pi_b else 0
        elif s == 1:
            s = 0 if u[i] < p_bc else 1
        else:
            s = 1 if u[i] < p_cb else 0
        state[i] = s
    level = np.where(state == 1, b.high_factor, 1.0)
    return level / (1.0 + (b.high_factor - 1.0) * pi_b), s


def _step(traffic, fleet, seed: int, state: RateState, n: int, start_hour: float,
          want: bool) -> tuple[np.ndarray | None, RateState]:
    """Advance the state by n intervals from state.k_next; multipliers if ``want``."""
    mod = traffic.modulation
    k0 = state.k_next
    n_dep = fleet.n_deployments
    mult = np.ones((n_dep, n), np.float64) if want else None
    new = {"k_next": k0 + n}

    if mod.cv > 0:
        phi = ar1_phi(mod.interval_s, mod.correlation_time_s)
        g = np.zeros((n_dep, n), np.float64)
        parts = [("x_site", mod.rho_site, KIND_SITE,
                  np.array([SITE_MODULATION_UID], np.int64), np.zeros(n_dep, np.int64)),
                 ("x_row", mod.rho_row, KIND_ROW, fleet.row_uid,
                  np.asarray(fleet.deployment_row, np.int64) - int(fleet.row_uid[0])),
                 ("x_rack", mod.rho_rack, KIND_RACK, fleet.rack_uid,
                  np.asarray(fleet.deployment_rack_uid, np.int64) - fleet.rack_start)]
        rho_dep = max(0.0, 1.0 - mod.rho_site - mod.rho_row - mod.rho_rack)
        for name, rho, kind, uids, index in parts:
            if rho <= 0:
                continue
            x = _ar1_block(entity_key(seed, kind, uids, STREAM_RATE), getattr(state, name),
                           k0, n, phi)
            new[name] = x[:, -1].copy()
            if want:
                g += np.sqrt(rho) * x[index]
        if rho_dep > 0:
            x = _ar1_block(entity_key(seed, KIND_DEPLOYMENT, fleet.deployment_uid, STREAM_RATE),
                           state.x_dep, k0, n, phi)
            new["x_dep"] = x[:, -1].copy()
            if want:
                g += np.sqrt(rho_dep) * x
        if want:
            sigma2 = np.log1p(mod.cv * mod.cv)
            mult *= np.exp(np.sqrt(sigma2) * g - 0.5 * sigma2)

    if traffic.bursts.kind == "mmpp":
        factor, new["burst"] = _burst_block(traffic, seed, state.burst, k0, n)
        if want:
            mult *= factor[None, :]

    if want:
        d = traffic.diurnal
        hours = start_hour + (np.arange(k0, k0 + n, dtype=np.float64) + 0.5) * (
            mod.interval_s / 3600.0)
        mult *= diurnal_factor(np.mod(hours, 24.0), d.peak_hour, d.trough_ratio)[None, :]
    return mult, replace(state, **new)


def rate_multipliers(traffic, fleet, seed: int, state: RateState, k0: int, n: int,
                     start_hour: float) -> tuple[np.ndarray, RateState]:
    """Rate multipliers of the deployments of ``fleet`` for intervals ``k0 .. k0 + n - 1``.

    Parameters
    ----------
    traffic : TrafficConfig (diurnal, modulation, bursts are used).
    fleet : topology.FleetSlice; rows of the result follow ``fleet.deployment_uid``.
    seed : run seed.
    state : from :func:`rate_state_init` or a previous call. Normally ``state.k_next == k0``;
        otherwise the processes are restarted (``k0 < k_next``) and/or advanced to ``k0``, which
        gives the same numbers, only slower.
    k0, n : first modulation interval (of ``interval_s`` each, interval 0 starts the run) and
        how many.
    start_hour : [h] hour of day at the start of the run; interval k uses the diurnal factor at
        ``start_hour + (k + 0.5) interval_s / 3600``.

    Returns
    -------
    (mult, state) : float32 (n_deployments, n) multipliers, and the state after interval
    ``k0 + n - 1``.
    """
    if k0 < 0 or n < 0:
        raise ValueError(f"need k0 >= 0 and n >= 0, got k0={k0}, n={n}")
    if state.n_deployments != fleet.n_deployments:
        raise ValueError("state belongs to a different fleet slice")
    if k0 < state.k_next:
        state = rate_state_init(fleet)
    while state.k_next < k0:
        _, state = _step(traffic, fleet, seed, state, min(_SKIP_BLOCK, k0 - state.k_next),
                         start_hour, want=False)
    if n == 0:
        return np.ones((fleet.n_deployments, 0), np.float32), state
    mult, state = _step(traffic, fleet, seed, state, n, start_hour, want=True)
    return mult.astype(np.float32), state
