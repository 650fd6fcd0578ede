"""Fit a :class:`PowerModel` for one serving configuration from measured runs.

Training data are windows ``(run, start_step, stop_step)`` of measured runs, so the validation
protocol can fit on a time split of a single run. The work of every step comes from replaying
each run's request log through the fitted serving model, exactly as at generation time, so
systematic serving-model errors are learnt through rather than hidden. Steps inside sampling
gaps (``run.valid`` False) and steps where the engine was busy with work the request log does
not explain are left out of every fit.

1. Serving model (:mod:`distgen.model.serving_fit`).
2. Idle floor: the median power of steps with no work around them.
3. Level: activity powers by non-negative least squares on the activity shares, for each
   candidate clock offset and sensor kernel; the pair with the smallest residual is kept.
   The per-sequence decode power is constrained to at least the iteration power (more work per
   weight read never draws less), and a weak prior pulls the context-read power towards the
   iteration power where the data do not identify it.
4. Spread: centred residual quantiles and AR(1) coefficients per state.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from scipy.optimize import lsq_linear
from scipy.special import ndtri

import distgen
from distgen.errors import InputError
from distgen.ingest.trace import RunTrace
from distgen.model.artifact import GPU_TDP_W, PowerModel, TokenQuantiles
from distgen.model.envelope import OperatingEnvelope
from distgen.model.power import (N_STATES, limit_bucket_j, sustained_limit_w,
                                 QUANTILE_POINTS, Spread, WorkPower, activity_shares,
                                 level_w, sensor_filter, state_of)
from distgen.model.serving_fit import fit_serving, measured_running, run_workload
from distgen.workload.serving import F_PREFILL_TOKENS, F_RUNNING

CLAMP_MARGIN = 0.05
#: Candidate clock offsets [s] between the request log and the power reading.
OFFSETS_S = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
#: Candidate sensor kernels (h1, h2).
SENSORS = ((0.0, 0.0), (0.2, 0.0), (0.3, 0.05), (0.4, 0.1), (0.5, 0.15), (0.6, 0.2))
#: Weight of the priors "decode and context work draw the iteration power", in steps of
#: full-busy data (a tenth of one): they decide only where the data say nothing.
PRIOR_STEPS = 0.1
#: Each training window counts as this many steps in the level fit.
RUN_WEIGHT_STEPS = 400.0
#: No activity draws more than this times the nameplate power above idle (boards exceed TDP
#: in short prefill bursts: 520 W on a 400 W A100 in the shared runs).
MAX_POWER_OVER_TDP = 1.5
#: A state needs this many training steps for its own residual distribution.
MIN_STATE_SAMPLES = 30
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


def _usable(run: RunTrace, work: np.ndarray) -> np.ndarray:
    """Steps that may be fitted on: inside the power log (no gap) and explained by the log."""
    keep = np.ones(run.n_steps, bool)
    valid = getattr(run, "valid", None)
    if valid is not None:
        keep &= np.asarray(valid, bool)
    if run.engine is not None:
        keep &= consistent_steps(work[:, F_RUNNING], measured_running(run))
    return keep


def quiet_idle_w(power_w: np.ndarray, shares: np.ndarray, keep: np.ndarray) -> float | None:
    """[W] median power of steps with no work in them, the step before, two before and after."""
    busy = shares.sum(axis=1) > 0
    near = busy.copy()
    near[1:] |= busy[:-1]
    near[2:] |= busy[:-2]
    near[:-1] |= busy[1:]
    quiet = keep & ~near
    return float(np.median(power_w[quiet])) if quiet.sum() >= 5 else None


def lead_in_idle_w(run: RunTrace, a: int, b: int) -> float | None:
    """[W] median power of the window's steps that end at least a second before the first
    request arrives (a run's idle lead-in), when there are three or more."""
    lead = int(np.floor((run.requests.arrival_s[0] - run.start_s - 1.0) / run.interval_s))
    stop = min(b, lead)
    return float(np.median(run.power_w[a:stop])) if stop - a >= 3 else None


def fit_level(shares: list[np.ndarray], power: list[np.ndarray], keep: list[np.ndarray],
              idle_w: float, sensor: tuple[float, float],
              max_d_w: float = np.inf) -> tuple[WorkPower, float]:
    """Activity powers by bounded least squares (0 <= d <= ``max_d_w``) for one sensor kernel;
    returns the power model and the RMS residual [W] over the kept steps.

    Every window weighs the same whatever its length (a long run of one traffic type must not
    decide the power of the others), and weak priors tie the decode-sequence and context
    powers to the iteration power where the data do not identify them.
    """
    rows, ys, weights = [], [], []
    for s, p, k in zip(shares, power, keep):
        n = int(k.sum())
        if n == 0:
            continue
        rows.append(sensor_filter(s, sensor)[k])
        ys.append(p[k] - idle_w)
        weights.append(np.full(n, np.sqrt(RUN_WEIGHT_STEPS / n)))
    x, y, w = np.concatenate(rows), np.concatenate(ys), np.concatenate(weights)
    a = np.sqrt(PRIOR_STEPS)
    prior = np.array([[-a, a, 0.0, 0.0], [-a, 0.0, a, 0.0]])
    coef = lsq_linear(np.r_[x * w[:, None], prior], np.r_[y * w, 0.0, 0.0],
                      bounds=(0.0, max_d_w)).x
    rms = float(np.sqrt(np.mean((x @ coef - y) ** 2)))
    return WorkPower(float(idle_w), tuple(float(v) for v in coef), sensor), rms


def _latent_scores(residual: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Each residual's normal score within its state: Phi^-1((rank + 0.5) / n_state)."""
    z = np.zeros(residual.shape[0])
    for s in np.unique(states):
        idx = np.flatnonzero(states == s)
        ranks = np.argsort(np.argsort(residual[idx], kind="stable"), kind="stable")
        z[idx] = ndtri((ranks + 0.5) / idx.size)
    return z


def fit_spread(residual: list[np.ndarray], states: list[np.ndarray],
               keep: list[np.ndarray]) -> Spread:
    """Centred residual quantiles and latent AR(1) coefficients per state.

    ``residual``, ``states`` and ``keep`` hold one array per training window (consecutive
    steps), so persistence is measured within windows only. A state with fewer than
    :data:`MIN_STATE_SAMPLES` steps borrows the distribution of the nearest state with enough
    (same prefill cell first, then the closest busy cell).
    """
    from distgen.model.power import N_PREFILL_BINS

    all_r = np.concatenate([r[k] for r, k in zip(residual, keep)])
    all_s = np.concatenate([s[k] for s, k in zip(states, keep)])
    p = np.linspace(0.0, 1.0, QUANTILE_POINTS)
    counts = np.bincount(all_s, minlength=N_STATES)
    own = np.flatnonzero(counts >= MIN_STATE_SAMPLES)
    if own.size == 0:
        own = np.array([int(np.argmax(counts))])
    source = np.empty(N_STATES, np.int64)
    for s in range(N_STATES):
        b, f = divmod(s, N_PREFILL_BINS)
        cost = [abs(o // N_PREFILL_BINS - b) + 10 * abs(o % N_PREFILL_BINS - f) for o in own]
        source[s] = s if s in own else own[int(np.argmin(cost))]
    quantiles = np.zeros((N_STATES, QUANTILE_POINTS))
    phi = np.zeros(N_STATES)
    # latent scores back on each window's steps (NaN where not kept)
    z_all = _latent_scores(all_r, all_s)
    z_parts, pos = [], 0
    for k in keep:
        zp = np.full(k.shape[0], np.nan)
        zp[k] = z_all[pos:pos + int(k.sum())]
        pos += int(k.sum())
        z_parts.append(zp)
    for s in own:
        x = all_r[all_s == s]
        q = np.quantile(x, p)
        quantiles[s] = q - x.mean()
        num = den = 0.0
        for zp, st, k in zip(z_parts, states, keep):
            same = k[1:] & k[:-1] & (st[1:] == s) & (st[:-1] == s)
            num += float(np.sum(zp[1:][same] * zp[:-1][same]))
            den += float(np.sum(zp[:-1][same] ** 2))
        phi[s] = np.clip(num / den, 0.0, 0.99) if den > 0 else 0.0
    # centred: the level alone sets the energy (state mean residuals fitted on one traffic
    # type moved held-out energy on others by up to 8 %; docs/VALIDATION.md)
    return Spread(quantiles[source], phi[source],
                  np.where(np.arange(N_STATES) == source, counts, 0), source,
                  np.zeros(N_STATES))


def workload_phases(workload) -> dict[str, np.ndarray]:
    """Boolean masks of idle / prefill / decode steps from the serving model's workload."""
    running = workload[:, F_RUNNING]
    prefill = workload[:, F_PREFILL_TOKENS] > 0
    return {"idle": (running == 0) & ~prefill, "prefill": prefill,
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
    seed : recorded for provenance (the fit itself is deterministic).
    """
    if not windows:
        raise ValueError("no training data")
    config_ids = {run.config_id for run, _, _ in windows}
    if len(config_ids) != 1:
        raise ValueError(f"training runs mix configurations: {sorted(config_ids)}")
    for run, a, b in windows:
        if not 0 <= a < b <= run.n_steps:
            raise ValueError(f"window [{a}, {b}) outside run {run.run_id} ({run.n_steps} steps)")
    first = windows[0][0]
    serving, serving_report = fit_serving(windows)

    def window_arrays(run, a, b, offset_s):
        f = run_workload(run, serving, offset_s)
        return (activity_shares(f, serving, run.interval_s)[a:b], run.power_w[a:b],
                _usable(run, f)[a:b], f[a:b])

    # every window at every candidate offset: (shares, power, keep, work)
    arrays = [[window_arrays(run, a, b, o) for o in OFFSETS_S] for run, a, b in windows]
    shares0 = [w[0][0] for w in arrays]
    keep0 = [w[0][2] for w in arrays]
    power = [w[0][1] for w in arrays]
    idles = [quiet_idle_w(p, s, k) for p, s, k in zip(power, shares0, keep0)]
    idles += [lead_in_idle_w(run, a, b) for run, a, b in windows]
    idles = [v for v in idles if v is not None]
    all_power = np.concatenate([p[k] for p, k in zip(power, keep0)])
    if all_power.size < 40:
        raise InputError(first.source, f"only {all_power.size} usable power samples to fit "
                         f"{first.config_id} (need 40)")
    idle_w = float(np.median(idles)) if idles else float(np.quantile(all_power, 0.02))

    tdp_w = GPU_TDP_W.get(first.gpu.upper(), float(all_power.max()) / first.tp) * first.tp
    max_d_w = MAX_POWER_OVER_TDP * tdp_w - idle_w

    def best_level(choice):
        """Activity powers and sensor kernel for per-window offset indices ``choice``."""
        picked = [arrays[i][c] for i, c in enumerate(choice)]
        best = None
        for sensor in SENSORS:
            fit = fit_level([x[0] for x in picked], [x[1] for x in picked],
                            [x[2] for x in picked], idle_w, sensor, max_d_w)
            if best is None or fit[1] < best[1] - 1e-9:
                best = fit
        return best

    # the clock offset differs between runs (client and power logger clocks): one common offset
    # first, then each window's own, then the level again on the aligned windows
    common = min(range(len(OFFSETS_S)),
                 key=lambda c: best_level([c] * len(windows))[1])
    work_power, _ = best_level([common] * len(windows))
    choice = []
    for i in range(len(windows)):
        def rms_at(c, i=i):
            sh, pw, k, _ = arrays[i][c]
            r = (pw - level_w(sh, work_power))[k]
            return float(np.sqrt(np.mean(r ** 2))) if r.size else np.inf
        choice.append(min(range(len(OFFSETS_S)), key=rms_at))
    work_power, rms = best_level(choice)
    picked = [arrays[i][c] for i, c in enumerate(choice)]
    shares = [x[0] for x in picked]
    keep = [x[2] for x in picked]
    work = [x[3] for x in picked]
    offsets = [OFFSETS_S[c] for c in choice]
    offset = float(np.median(offsets))

    residual = [p - level_w(s, work_power) for p, s in zip(power, shares)]
    states = [state_of(sensor_filter(s, work_power.sensor)) for s in shares]
    spread = fit_spread(residual, states, keep)

    all_power = np.concatenate([p[k] for p, k in zip(power, keep)])
    low, high = float(all_power.min()), float(all_power.max())
    span = high - low
    # the limiter lets bursts use as much energy above the board limit as training runs did
    # (at least half a second at 5 % over it)
    limit_w = sustained_limit_w(power, tdp_w, first.interval_s)
    budget = max([float(limit_bucket_j(p, limit_w, first.interval_s).max(initial=0.0))
                  for p in power] + [0.5 * 0.05 * tdp_w])
    work_power = WorkPower(work_power.idle_w, work_power.d_w, work_power.sensor, limit_w, budget)
    # generated power may go where the level and the spread take it: above the training
    # maximum up to the fitted ceiling, below the training minimum by the idle state's spread
    idle_low = idle_w + float(spread.quantiles_w[0, 0])
    all_work = np.concatenate([w[k] for w, k in zip(work, keep)])
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
                  "n_requests": len(req), "steps_used": int(k.sum()),
                  "engine_log": run.engine is not None}
                 for (run, a, b), req, k in zip(windows, requests, keep)],
        "n_samples": int(all_power.size),
        "fitted_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "distgen_version": distgen.__version__,
        "fit_seed": int(seed),
        "serving_fit": serving_report,
        "busy_share": float(np.concatenate([x.sum(axis=1)[k] for x, k in zip(shares, keep)])
                            .mean()),
        "level_fit": {"rms_w": rms, "idle_source": "quiet steps" if idles else "2nd percentile",
                      "run_offsets_s": offsets, "candidate_offsets_s": list(OFFSETS_S),
                      "candidate_sensors": [list(s) for s in SENSORS]},
        "tdp_source": tdp_source,
    }
    return PowerModel(
        config_id=first.config_id, model_name=first.model_name, gpu=first.gpu, tp=first.tp,
        interval_s=first.interval_s, serving=serving, power=work_power, spread=spread,
        clamp_w=(max(min(low, idle_low) - CLAMP_MARGIN * span, 0.0),
                 max(high, work_power.ceiling_w) + CLAMP_MARGIN * span),
        tokens=tokens, envelope=OperatingEnvelope.of(all_work),
        tdp_w=float(tdp_per_gpu * first.tp), arrival_offset_s=float(offset),
        baselines={"mean_w": float(all_power.mean()),
                   "lut_w": phase_lut(all_power, all_work)},
        provenance=provenance)
