"""The compiled fleet kernel: workload -> serving -> state chain -> AR(1) power, per deployment.

One pass over (deployment, step) does everything a deployment needs in a 0.25 s step, so the
cost per deployment-step is a few dozen arithmetic operations and two counter-based random
numbers. Deployments are independent given their inputs, which is what lets the fleet be cut
anywhere and the same loop be mapped to one GPU thread per deployment.

Random numbers are keyed by the deployment's stable key and the global step (state draw:
counter ``4 k``, power noise: ``4 k + 1``); a request's draws by its deployment's request key and
the arrival's index (gap before arrival j: ``3 j``, its input / output tokens: ``3 j + 1``,
``3 j + 2``). Nothing depends on chunk length or on which other deployments share the call.

The lookahead: the transition at step k sees prefill tokens of steps k and k+1, so the serving
model runs one step ahead and carries the pending step's workload between chunks.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from distgen.core.jit import cached_njit
from distgen.core.rng import normal_nb, uniform01_nb
from distgen.engine.records import (MODE_SYNTHETIC, S_ARRIVED, S_DECODE_TOKENS,
                                    S_PREFILL_TOKENS, S_RUNNING_SUM)
from distgen.workload.serving import enqueue, serve_step


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
        return -np.log(u)
    pos = u * (n - 1)
    i = min(int(pos), n - 2)
    return gamma_q[i] + (pos - i) * (gamma_q[i + 1] - gamma_q[i])


@nb.njit(inline="always")
def _cell(running, prefill_window, delta, running_bin, prefill_th, n_prefill_bins):
    r = running_bin[min(int(running), running_bin.shape[0] - 1)]
    p = 0
    while p < prefill_th.shape[0] and prefill_window >= prefill_th[p]:
        p += 1
    d = 1
    if delta > 0:
        d = 2
    elif delta < 0:
        d = 0
    return (r * n_prefill_bins + p) * 3 + d


@nb.njit(inline="always")
def _next_state(table_cum, m, s, cell, k_states, u):
    """Sample the next state from a stay-first cumulative row (see PackedModels.pack).

    Reads scalars rather than taking a row view: a view per step costs an allocation.
    """
    if u <= table_cum[m, s, cell, 0]:
        return s
    i = 1
    while i < k_states - 1 and u > table_cum[m, s, cell, i]:
        i += 1
    return i - 1 if i - 1 < s else i


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
    step0, n_steps, interval_s = chunk.step0, chunk.n_steps, chunk.interval_s
    count_from_step = chunk.count_from_step
    state_key, req_key, dep_model, dep_target = (deps.state_key, deps.request_key, deps.model,
                                                 deps.target)
    table_cum, n_states, power_of_z = models.table_cum, models.n_states, models.power_of_z
    z_min, z_inv_step, phi, innovation = (models.z_min, models.z_inv_step, models.phi,
                                          models.innovation)
    clamp_w, serving, iterations_per_s = models.clamp_w, models.serving, models.iterations_per_s
    tok_in, tok_out, running_bin = models.tok_in, models.tok_out, models.running_bin
    prefill_th, n_prefill_bins = models.prefill_th, models.n_prefill_bins
    base_rps, rate_mult, rate_k0 = syn.base_rps, syn.rate_mult, syn.rate_k0
    steps_per_interval, rate_step_offset, gamma_q = (syn.steps_per_interval, syn.step_offset,
                                                     syn.gamma_q)
    replay_offsets, replay_step, replay_in, replay_out = (rep.offsets, rep.step,
                                                          rep.input_tokens, rep.output_tokens)
    sv = state.serving
    chain_state, latent_z, running_prev, pending = (state.chain_state, state.latent_z,
                                                    state.running_prev, state.pending)
    have_pending, op_time, next_arrival = state.have_pending, state.op_time, state.next_arrival
    n_arrived, replay_ptr = state.n_arrived, state.replay_ptr
    target_mw, deployment_mw, stats = out.target_mw, out.deployment_mw, out.stats
    (sv_iters, sv_heap, sv_heap_n, sv_pre_tokens, sv_pre_out, sv_pre_head, sv_pre_n,
     sv_pre_total, sv_wait_in, sv_wait_out, sv_wait_head, sv_wait_n, sv_dropped) = sv
    n_dep = state_key.shape[0]
    want_dep = deployment_mw.shape[0] > 0
    synthetic = chunk.mode == MODE_SYNTHETIC
    for d in range(n_dep):
        m = dep_model[d]
        base_s, prefill_s, decode_s = serving[m, 0], serving[m, 1], serving[m, 2]
        budget, max_seqs = serving[m, 3], int(serving[m, 4])
        k_states = n_states[m]
        iter_rate = iterations_per_s[m]
        heap, pre_tokens, pre_out = sv_heap[d], sv_pre_tokens[d], sv_pre_out[d]
        wait_in, wait_out = sv_wait_in[d], sv_wait_out[d]
        iters, heap_n, pre_head, pre_n = sv_iters[d], sv_heap_n[d], sv_pre_head[d], sv_pre_n[d]
        pre_total, wait_head, wait_n = sv_pre_total[d], sv_wait_head[d], sv_wait_n[d]
        dropped = 0
        skey, rkey = state_key[d], req_key[d]
        op, next_arr, arrived, ptr = op_time[d], next_arrival[d], n_arrived[d], replay_ptr[d]
        rep_end = replay_offsets[d + 1]
        lo, hi = clamp_w[m, 0], clamp_w[m, 1]
        n_new = 0
        sum_running = 0.0
        sum_prefill = 0.0
        sum_decode = 0.0

        if synthetic and not have_pending[d]:
            next_arr = _gap(gamma_q, uniform01_nb(rkey, np.uint64(0)))  # gap before arrival 0
        s = chain_state[d]
        zl = latent_z[d]
        n_z = power_of_z.shape[2]
        cur_running, cur_prefill, cur_decode = pending[d, 0], pending[d, 1], pending[d, 2]
        prev_running = running_prev[d]
        j = 0 if have_pending[d] else -1
        # rate column of step k: max(k - rate_step_offset, 0) // steps_per_interval - rate_k0,
        # advanced at interval boundaries rather than divided out every step
        k_next = step0 + j + 1
        col = max(k_next - rate_step_offset, 0) // steps_per_interval - rate_k0
        next_boundary = rate_step_offset + (col + rate_k0 + 1) * steps_per_interval
        while j < n_steps:
            # the workload of step k + 1 (k = step0 + j); on a deployment's first call the
            # step-0 workload is computed first (j = -1) and becomes the current step
            k_next = step0 + j + 1
            if synthetic:
                if k_next >= next_boundary:
                    col += 1
                    next_boundary += steps_per_interval
                op += base_rps[d] * rate_mult[d, col] * interval_s
                while op >= next_arr:
                    u_in = uniform01_nb(rkey, np.uint64(3 * arrived + 1))
                    u_out = uniform01_nb(rkey, np.uint64(3 * arrived + 2))
                    wait_n, lost = enqueue(wait_in, wait_out, wait_head, wait_n,
                                           _quantile_tokens(tok_in, m, u_in),
                                           _quantile_tokens(tok_out, m, u_out))
                    arrived += 1
                    if k_next >= count_from_step:
                        dropped += lost
                        n_new += 1
                    next_arr += _gap(gamma_q, uniform01_nb(rkey, np.uint64(3 * arrived)))
            else:
                while ptr < rep_end and replay_step[ptr] <= k_next:
                    wait_n, lost = enqueue(wait_in, wait_out, wait_head, wait_n,
                                           replay_in[ptr], replay_out[ptr])
                    ptr += 1
                    if k_next >= count_from_step:
                        dropped += lost
                        n_new += 1
            (iters, heap_n, pre_head, pre_n, pre_total, wait_head, wait_n, nxt_prefill,
             nxt_decode, _it) = serve_step(heap, pre_tokens, pre_out, wait_in, wait_out, iters,
                                           heap_n, pre_head, pre_n, pre_total, wait_head,
                                           wait_n, base_s, prefill_s, decode_s, budget,
                                           max_seqs, interval_s, iter_rate)
            nxt_running = float(heap_n + pre_n)
            if j < 0:
                cur_running, cur_prefill, cur_decode = nxt_running, nxt_prefill, nxt_decode
                prev_running = cur_running
                s = 0
                zl = 0.0
                j = 0
                continue
            k = step0 + j
            cell = _cell(cur_running, cur_prefill + nxt_prefill, cur_running - prev_running,
                         running_bin, prefill_th, n_prefill_bins)
            nxt = _next_state(table_cum, m, s, cell, k_states,
                              uniform01_nb(skey, np.uint64(4 * k)))
            eps = normal_nb(skey, np.uint64(4 * k + 1))
            if nxt == s:
                zl = phi[m, s] * zl + innovation[m, s] * eps
            else:
                zl = eps
                s = nxt
            # power = Q_s(Phi(z)) from the state's table on the latent grid
            pos = min(max((zl - z_min) * z_inv_step, 0.0), n_z - 1.000001)
            i = int(pos)
            p = power_of_z[m, s, i] + (pos - i) * (power_of_z[m, s, i + 1] - power_of_z[m, s, i])
            p = min(max(p, lo), hi)
            mw = np.int64(p * 1000.0 + 0.5)  # p >= 0: round to the nearest milliwatt
            target_mw[dep_target[d], j] += mw
            if want_dep:
                deployment_mw[d, j] = mw
            if k >= count_from_step:
                sum_running += cur_running
                sum_prefill += cur_prefill
                sum_decode += cur_decode
            prev_running = cur_running
            cur_running, cur_prefill, cur_decode = nxt_running, nxt_prefill, nxt_decode
            j += 1

        sv_iters[d], sv_heap_n[d], sv_pre_head[d], sv_pre_n[d] = iters, heap_n, pre_head, pre_n
        sv_pre_total[d], sv_wait_head[d], sv_wait_n[d] = pre_total, wait_head, wait_n
        sv_dropped[d] += dropped
        op_time[d], next_arrival[d], n_arrived[d], replay_ptr[d] = op, next_arr, arrived, ptr
        chain_state[d] = s
        latent_z[d] = zl
        pending[d, 0], pending[d, 1], pending[d, 2] = cur_running, cur_prefill, cur_decode
        running_prev[d] = prev_running
        have_pending[d] = True
        stats[d, S_ARRIVED] += n_new
        stats[d, S_RUNNING_SUM] += sum_running
        stats[d, S_PREFILL_TOKENS] += sum_prefill
        stats[d, S_DECODE_TOKENS] += sum_decode
