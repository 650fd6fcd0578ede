"""The compiled fleet kernel: arrivals -> serving model -> level -> state spread, per deployment.

One pass over (deployment, step) does everything a deployment needs in a 0.25 s step: the
requests arriving in the step (booked at their time inside it), the serving model's work
(distgen.workload.serving), the expected power of that work (distgen.model.power: idle plus each
activity's power times its share of the step, through the sensor kernel, held under the board's
power limit), and the spread around
it (the state's residual quantiles through a latent AR(1) normal). Deployments are independent
given their inputs, which is what lets the fleet be cut anywhere and the same loop run as one
GPU thread per deployment.

Random numbers are keyed by the deployment's stable key and the global step (the latent
innovation: counter ``k``); a request's draws by its deployment's request key and the arrival's
index (gap before arrival j: ``3 j``, its input / output tokens: ``3 j + 1``, ``3 j + 2``).
Nothing depends on chunk length or on which other deployments share the call. No fused
multiply-add and no math-library transcendental is used (``portable_log_nb``), so a GPU build
of the same loop gives the same bits.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from distgen.core.jit import cached_njit
from distgen.core.rng import normal_nb, portable_log_nb, uniform01_nb
from distgen.engine.records import (ENV_CONTEXT_PER_SEQ, ENV_DECODE_BATCH, ENV_PREFILL_TOKENS,
                                    ENV_RUNNING, MODE_SYNTHETIC, S_ARRIVED, S_BUSY_S,
                                    S_DECODE_TOKENS, S_OUTSIDE_ENVELOPE, S_PREFILL_TOKENS,
                                    S_RUNNING_SUM)
from distgen.workload.serving import (ServingRates, enqueue, load_scalars, serve_step,
                                      store_scalars)


@nb.njit(inline="always")
def _quantile_tokens(q, m, u):
    """Token count from a fine quantile table (linear interpolation), at least 1."""
    n = q.shape[1]
    pos = u * (n - 1)
    i = min(int(pos), n - 2)
    return max(int(q[m, i] + (pos - i) * (q[m, i + 1] - q[m, i]) + 0.5), 1)


@nb.njit(inline="always")
def _gap(gamma_q, u):
    """Inter-arrival gap in operational time (mean 1): exponential, or gamma via its quantiles."""
    n = gamma_q.shape[0]
    if n == 0:
        return -portable_log_nb(u)
    pos = u * (n - 1)
    i = min(int(pos), n - 2)
    return gamma_q[i] + (pos - i) * (gamma_q[i + 1] - gamma_q[i])


@nb.njit(inline="always")
def _bin(edges, x):
    b = 0
    while b < edges.shape[0] and x >= edges[b]:
        b += 1
    return b


@nb.njit(inline="always")
def _rates(models, m):
    s = models.serving
    return ServingRates(s[m, 0], s[m, 1], s[m, 2], s[m, 3], s[m, 4], s[m, 5], int(s[m, 6]))


@cached_njit("distgen.workload.serving", "distgen.core.rng", "distgen.engine.records")
def fleet_kernel(chunk, deps, models, syn, rep, state, out):
    """Advance every deployment by ``chunk.n_steps`` steps from global step ``chunk.step0``.

    Records (distgen.engine.records): ``chunk`` (Chunk), ``deps`` (Deployments), ``models``
    (ModelTables), ``syn`` (SyntheticInputs) or ``rep`` (ReplayInputs) by ``chunk.mode``,
    ``state`` (CarriedState, updated in place) and ``out`` (Outputs).

    Adds each deployment's power, rounded to integer milliwatts, into
    ``out.target_mw[deps.target[d], j]`` (int64, typically its server) and, when
    ``out.deployment_mw`` has rows, stores it there (int32). Integer sums are exact, so every
    later reduction gives the same bits however the fleet is cut and in whatever order parts
    are added. The loop keeps one deployment's state in locals for the whole chunk.
    ``out.stats`` and dropped requests count requests arriving at, and steps from,
    ``chunk.count_from_step`` on.
    """
    dt = chunk.interval_s
    synthetic = chunk.mode == MODE_SYNTHETIC
    sv = state.serving
    n_z = models.residual_of_z.shape[2]
    n_pre_bins = models.prefill_edges.shape[0] + 1
    want_dep = out.deployment_mw.shape[0] > 0
    for d in range(deps.state_key.shape[0]):
        m = deps.model[d]
        rates = _rates(models, m)
        idle = models.idle_w[m]
        d_it, d_seq = models.d_w[m, 0], models.d_w[m, 1]
        d_ctx, d_pre = models.d_w[m, 2], models.d_w[m, 3]
        h1, h2 = models.sensor[m, 0], models.sensor[m, 1]
        h0 = 1.0 - h1 - h2
        lo, hi = models.clamp_w[m, 0], models.clamp_w[m, 1]
        cap, budget = models.power_limit[m, 0], models.power_limit[m, 1]
        over = state.over_limit_j[d]
        skey, rkey = deps.state_key[d], deps.request_key[d]
        q = load_scalars(sv, d)
        s_prev = state.state[d]
        zl = state.latent_z[d]
        a1, b1 = state.shares_prev[d, 0, 0], state.shares_prev[d, 0, 1]
        c1, e1 = state.shares_prev[d, 0, 2], state.shares_prev[d, 0, 3]
        a2, b2 = state.shares_prev[d, 1, 0], state.shares_prev[d, 1, 1]
        c2, e2 = state.shares_prev[d, 1, 2], state.shares_prev[d, 1, 3]
        op, next_arr = state.op_time[d], state.next_arrival[d]
        arrived, ptr = state.n_arrived[d], state.replay_ptr[d]
        rep_end = rep.offsets[d + 1]
        dropped = 0
        n_new = 0
        n_outside = 0
        sum_running = 0.0
        sum_prefill = 0.0
        sum_decode = 0.0
        sum_busy = 0.0
        if synthetic and next_arr < 0.0:
            next_arr = _gap(syn.gamma_q, uniform01_nb(rkey, np.uint64(0)))  # before arrival 0
        # rate column of step k: max(k - step_offset, 0) // steps_per_interval - rate_k0,
        # advanced at interval boundaries rather than divided out every step
        spi = syn.steps_per_interval
        col = max(chunk.step0 - syn.step_offset, 0) // spi - syn.rate_k0
        next_boundary = syn.step_offset + (col + syn.rate_k0 + 1) * spi
        for j in range(chunk.n_steps):
            k = chunk.step0 + j
            t0 = k * dt
            counted = k >= chunk.count_from_step
            # ---- arrivals of this step, at their time inside it
            if synthetic:
                if k >= next_boundary:
                    col += 1
                    next_boundary += spi
                rate = syn.base_rps[d] * syn.rate_mult[d, col]
                op_end = op + rate * dt
                while op_end >= next_arr:
                    if syn.input_tokens > 0:
                        n_in = syn.input_tokens
                    else:
                        n_in = _quantile_tokens(models.tok_in, m,
                                                uniform01_nb(rkey, np.uint64(3 * arrived + 1)))
                    if syn.output_tokens > 0:
                        n_out = syn.output_tokens
                    else:
                        n_out = _quantile_tokens(models.tok_out, m,
                                                 uniform01_nb(rkey, np.uint64(3 * arrived + 2)))
                    n_cached = int(syn.cached_share * n_in)
                    q, lost = enqueue(sv, d, q, t0 + (next_arr - op) / rate, n_in, n_cached,
                                      n_out)
                    arrived += 1
                    if counted:
                        dropped += lost
                        n_new += 1
                    next_arr += _gap(syn.gamma_q, uniform01_nb(rkey, np.uint64(3 * arrived)))
                op = op_end
            else:
                end_s = t0 + dt
                while ptr < rep_end and rep.arrival_s[ptr] < end_s:
                    q, lost = enqueue(sv, d, q, rep.arrival_s[ptr], rep.input_tokens[ptr],
                                      rep.cached_tokens[ptr], rep.output_tokens[ptr])
                    ptr += 1
                    if counted:
                        dropped += lost
                        n_new += 1
            # ---- the serving model's work in this step
            q, w = serve_step(sv, d, q, rates, t0, dt)
            a0 = rates.base_s * w.iterations / dt
            b0 = rates.decode_s * w.decode_tokens / dt
            c0 = rates.context_s * w.context_tokens / dt
            e0 = (rates.prefill_s * w.prefill_tokens + rates.attention_s * w.attention_tokens) / dt
            # ---- the level, through the sensor kernel, and the state of the step
            sa = h0 * a0 + h1 * a1 + h2 * a2
            sb = h0 * b0 + h1 * b1 + h2 * b2
            sc = h0 * c0 + h1 * c1 + h2 * c2
            se = h0 * e0 + h1 * e1 + h2 * e2
            level = idle + d_it * sa + d_seq * sb + d_ctx * sc + d_pre * se
            # the board's power limiter: bursts above the limit are allowed until the energy
            # above it reaches the budget; it recovers while the level is below the limit
            excess = (level - cap) * dt
            if excess > 0.0:
                allowed = max(budget - over, 0.0)
                if excess > allowed:
                    excess = allowed
                    level = cap + allowed / dt
                over += excess
            else:
                over = max(over + excess, 0.0)
            busy = sa + sb + sc + se
            pre_share = se / busy if busy > 1e-12 else 0.0
            s = _bin(models.busy_edges, busy) * n_pre_bins + _bin(models.prefill_edges, pre_share)
            eps = normal_nb(skey, np.uint64(k))
            if s == s_prev:
                zl = models.phi[m, s] * zl + models.innovation[m, s] * eps
            else:
                zl = eps
                s_prev = s
            # residual = R_s(Phi(z)) from the state's table on the latent grid
            pos = min(max((zl - models.z_min) * models.z_inv_step, 0.0), n_z - 1.000001)
            i = int(pos)
            r0 = models.residual_of_z[m, s, i]
            p = level + r0 + (pos - i) * (models.residual_of_z[m, s, i + 1] - r0)
            p = min(max(p, lo), hi)
            mw = np.int64(p * 1000.0 + 0.5)  # p >= 0: round to the nearest milliwatt
            out.target_mw[deps.target[d], j] += mw
            if want_dep:
                out.deployment_mw[d, j] = mw
            a2, b2, c2, e2 = a1, b1, c1, e1
            a1, b1, c1, e1 = a0, b0, c0, e0
            if counted:
                running = q.heap_n + q.pre_n
                sum_running += running
                sum_prefill += w.prefill_tokens
                sum_decode += w.decode_tokens
                sum_busy += w.prefill_busy_s + w.decode_busy_s
                env = models.envelope_max
                per_seq = w.context_tokens / w.decode_tokens if w.decode_tokens > 0.0 else 0.0
                if (running > env[m, ENV_RUNNING] or w.decode_batch > env[m, ENV_DECODE_BATCH]
                        or w.prefill_tokens > env[m, ENV_PREFILL_TOKENS]
                        or per_seq > env[m, ENV_CONTEXT_PER_SEQ]):
                    n_outside += 1

        store_scalars(sv, d, q)
        sv.dropped[d] += dropped
        state.state[d] = s_prev
        state.latent_z[d] = zl
        state.over_limit_j[d] = over
        state.shares_prev[d, 0, 0], state.shares_prev[d, 0, 1] = a1, b1
        state.shares_prev[d, 0, 2], state.shares_prev[d, 0, 3] = c1, e1
        state.shares_prev[d, 1, 0], state.shares_prev[d, 1, 1] = a2, b2
        state.shares_prev[d, 1, 2], state.shares_prev[d, 1, 3] = c2, e2
        state.op_time[d], state.next_arrival[d] = op, next_arr
        state.n_arrived[d], state.replay_ptr[d] = arrived, ptr
        out.stats[d, S_ARRIVED] += n_new
        out.stats[d, S_RUNNING_SUM] += sum_running
        out.stats[d, S_PREFILL_TOKENS] += sum_prefill
        out.stats[d, S_DECODE_TOKENS] += sum_decode
        out.stats[d, S_BUSY_S] += sum_busy
        out.stats[d, S_OUTSIDE_ENVELOPE] += n_outside
