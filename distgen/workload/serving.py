"""Step-level model of a continuous-batching LLM server (vLLM-style scheduler), compiled.

The engine runs iterations back to back while it has work. An iteration schedules one token for
every decoding request plus up to ``budget_tokens - n_decoding`` prompt tokens (chunked
prefill) and takes ``step_base_s + prefill_s_per_token * prompt_tokens + decode_s_per_seq *
n_decoding + context_s_per_token * context_tokens`` seconds, where ``context_tokens`` is the
KV cache the decoding requests attend to (their prompt plus the tokens generated so far).
Requests wait in a FIFO queue while ``max_num_seqs`` are running. With prefix caching, a
request's cached prompt tokens need no prefill compute (at least one token is always
computed), yet count in its context.

Within a 0.25 s step the model is event-driven, not iteration-driven: it advances from event
to event (an arrival, the end of the prompt backlog, a request finishing), so a step costs O(1)
plus O(log n) per request event whatever the iteration rate. Arrivals are booked at their
time inside the step. In continuous batching every decoding request advances one token per
iteration, so a request that starts decoding at cumulative iteration count V0 finishes at
V0 + n_out - 1 (its first token comes with the prefill): per deployment we keep the cumulative
iteration count and a min-heap of those finishing counts. Prompt tokens are whole numbers, so
a chunked prefill never leaves a fraction of a token behind.

Each step reports its work (:class:`StepWork`): the busy time spent in iterations that carry
prompt tokens (prefill) and in decode-only iterations, the mean decode batch, the tokens
processed and the context read. The power model turns that work into watts.

State lives in a :class:`ServingState` of flat arrays (one row per deployment) so that a kernel
can carry it from one time chunk to the next; the step function works on one deployment's row
and its scalar :class:`QueueScalars` passed in and returned, so compiled loops keep the state
in registers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numba as nb
import numpy as np

from distgen.core.jit import cached_njit

#: Per-step workload outputs, columns of the ``features`` array of :func:`replay_workload`.
(F_RUNNING, F_PREFILL_TOKENS, F_DECODE_TOKENS, F_ITERATIONS, F_WAITING, F_PREFILL_BUSY_S,
 F_DECODE_BUSY_S, F_DECODE_BATCH, F_CONTEXT_TOKENS, F_ATTENTION_TOKENS) = range(10)
N_FEATURES = 10


@dataclass(frozen=True)
class ServingParams:
    """Batching and iteration-time parameters of one serving configuration.

    Attributes
    ----------
    step_base_s : [s] fixed time per engine iteration.
    prefill_s_per_token : [s/token] extra iteration time per prompt token computed.
    decode_s_per_seq : [s/sequence] extra iteration time per decoding request.
    budget_tokens : [tokens] max tokens per iteration (``max_num_batched_tokens``).
    max_num_seqs : max requests running at once; the rest wait in a FIFO queue.
    context_s_per_token : [s/token] extra iteration time per context token the decoding
        requests attend to (KV-cache reads).
    prefill_attention_s_per_token : [s/token] extra time per (prompt token x earlier token it
        attends to): the quadratic attention cost of long prompts.
    """

    step_base_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    budget_tokens: int = 8192
    max_num_seqs: int = 256
    context_s_per_token: float = 0.0
    prefill_attention_s_per_token: float = 0.0

    def rates(self) -> "ServingRates":
        return ServingRates(float(self.step_base_s), float(self.prefill_s_per_token),
                            float(self.decode_s_per_seq), float(self.context_s_per_token),
                            float(self.prefill_attention_s_per_token),
                            float(self.budget_tokens), int(self.max_num_seqs))

    def to_dict(self) -> dict:
        return {"step_base_s": self.step_base_s, "prefill_s_per_token": self.prefill_s_per_token,
                "decode_s_per_seq": self.decode_s_per_seq,
                "context_s_per_token": self.context_s_per_token,
                "prefill_attention_s_per_token": self.prefill_attention_s_per_token,
                "budget_tokens": self.budget_tokens, "max_num_seqs": self.max_num_seqs}

    @classmethod
    def from_dict(cls, d: dict) -> "ServingParams":
        return cls(float(d["step_base_s"]), float(d["prefill_s_per_token"]),
                   float(d["decode_s_per_seq"]), int(d["budget_tokens"]), int(d["max_num_seqs"]),
                   float(d.get("context_s_per_token", 0.0)),
                   float(d.get("prefill_attention_s_per_token", 0.0)))


class ServingRates(NamedTuple):
    """Iteration-time parameters as the compiled step reads them (see :class:`ServingParams`)."""

    base_s: float
    prefill_s: float
    decode_s: float
    context_s: float
    attention_s: float
    budget: float
    max_seqs: int


class ServingState(NamedTuple):
    """Per-deployment serving state: flat arrays, one row per deployment, updated in place.

    The decode set is a min-heap of finishing iteration counts (``fin``) with, for each
    request, its context offset (``ctx``: prompt tokens minus the iteration count at which it
    started decoding, so its context at cumulative iteration I is ``ctx + I``). ``pre_*`` is the
    FIFO of admitted requests still in prefill (tokens left to compute, prompt length, output
    length); ``wait_*`` the FIFO queue of arrived requests with their arrival times [s, run
    time] (ring buffers).
    """

    iterations: np.ndarray      # float64 (D,) cumulative iterations
    fin: np.ndarray             # float64 (D, seq_capacity) finishing iteration counts (heap)
    ctx: np.ndarray             # float64 (D, seq_capacity) context offsets, parallel to fin
    heap_n: np.ndarray          # int32 (D,)
    ctx_base: np.ndarray        # float64 (D,) sum of ctx over the decode set
    pre_left: np.ndarray        # int32 (D, seq_capacity) prompt tokens left to compute
    pre_prompt: np.ndarray      # int32 (D, seq_capacity) prompt tokens (context)
    pre_out: np.ndarray         # int32 (D, seq_capacity) output tokens
    pre_head: np.ndarray        # int32 (D,)
    pre_n: np.ndarray           # int32 (D,)
    pre_total: np.ndarray       # int64 (D,) sum of pre_left
    pre_attn: np.ndarray        # float64 (D,) sum over prompt tokens left of their position
    wait_t: np.ndarray          # float64 (D, queue_capacity) [s] arrival time
    wait_prompt: np.ndarray     # int32 (D, queue_capacity)
    wait_cached: np.ndarray     # int32 (D, queue_capacity) prompt tokens in the prefix cache
    wait_out: np.ndarray        # int32 (D, queue_capacity)
    wait_head: np.ndarray       # int32 (D,)
    wait_n: np.ndarray          # int32 (D,)
    dropped: np.ndarray         # int64 (D,) requests refused because the queue was full

    @classmethod
    def empty(cls, n_deployments: int, seq_capacity: int, queue_capacity: int) -> "ServingState":
        d, s, q = n_deployments, seq_capacity, queue_capacity
        i32 = np.int32
        return cls(np.zeros(d), np.zeros((d, s)), np.zeros((d, s)), np.zeros(d, i32),
                   np.zeros(d), np.zeros((d, s), i32), np.zeros((d, s), i32),
                   np.zeros((d, s), i32), np.zeros(d, i32), np.zeros(d, i32),
                   np.zeros(d, np.int64), np.zeros(d), np.zeros((d, q)), np.zeros((d, q), i32),
                   np.zeros((d, q), i32), np.zeros((d, q), i32), np.zeros(d, i32),
                   np.zeros(d, i32), np.zeros(d, np.int64))


class QueueScalars(NamedTuple):
    """One deployment's scalar serving state (carried in registers by the kernels)."""

    iterations: float
    heap_n: int
    ctx_base: float
    pre_head: int
    pre_n: int
    pre_total: int
    pre_attn: float
    wait_head: int
    wait_n: int


class StepWork(NamedTuple):
    """The work one deployment did in one step.

    prefill_busy_s : [s] time in iterations that carried prompt tokens.
    decode_busy_s : [s] time in decode-only iterations.
    decode_batch : mean number of decoding requests over ``decode_busy_s`` (0 without decode).
    prefill_tokens : [tokens] prompt tokens computed (whole tokens).
    decode_tokens : [tokens] tokens generated by decoding requests.
    iterations : engine iterations (fractional at the step edges).
    context_tokens : [tokens] KV-cache tokens read by decoding requests, summed over iterations.
    attention_tokens : [tokens] sum over the prompt tokens computed of their position (the
        earlier tokens each attends to).
    """

    prefill_busy_s: float
    decode_busy_s: float
    decode_batch: float
    prefill_tokens: int
    decode_tokens: float
    iterations: float
    context_tokens: float
    attention_tokens: float


@nb.njit(inline="always")
def queue_scalars(iterations, heap_n, ctx_base, pre_head, pre_n, pre_total, pre_attn,
                  wait_head, wait_n):
    """A :class:`QueueScalars` with fixed field types (float64 / int64), so compiled code
    unifies every value it builds."""
    return QueueScalars(np.float64(iterations), np.int64(heap_n), np.float64(ctx_base),
                        np.int64(pre_head), np.int64(pre_n), np.int64(pre_total),
                        np.float64(pre_attn), np.int64(wait_head), np.int64(wait_n))


@nb.njit(inline="always")
def load_scalars(sv, d):
    """Deployment ``d``'s :class:`QueueScalars` from the state arrays."""
    return queue_scalars(sv.iterations[d], sv.heap_n[d], sv.ctx_base[d], sv.pre_head[d],
                         sv.pre_n[d], sv.pre_total[d], sv.pre_attn[d], sv.wait_head[d],
                         sv.wait_n[d])


@nb.njit(inline="always")
def store_scalars(sv, d, q):
    """Write deployment ``d``'s :class:`QueueScalars` back into the state arrays."""
    sv.iterations[d], sv.heap_n[d], sv.ctx_base[d] = q.iterations, q.heap_n, q.ctx_base
    sv.pre_head[d], sv.pre_n[d], sv.pre_total[d] = q.pre_head, q.pre_n, q.pre_total
    sv.pre_attn[d], sv.wait_head[d], sv.wait_n[d] = q.pre_attn, q.wait_head, q.wait_n


@nb.njit(inline="always")
def _positions(first, count):
    """Sum of the positions ``first .. first + count - 1`` (each token attends to the earlier
    tokens of its prompt)."""
    return count * (first + 0.5 * (count - 1))


@nb.njit(inline="always")
def _heap_push(fin, ctx, d, n, value, offset):
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if fin[d, parent] <= value:
            break
        fin[d, i] = fin[d, parent]
        ctx[d, i] = ctx[d, parent]
        i = parent
    fin[d, i] = value
    ctx[d, i] = offset
    return n + 1


@nb.njit(inline="always")
def _heap_pop(fin, ctx, d, n):
    n -= 1
    last, last_ctx = fin[d, n], ctx[d, n]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and fin[d, child + 1] < fin[d, child]:
            child += 1
        if fin[d, child] >= last:
            break
        fin[d, i] = fin[d, child]
        ctx[d, i] = ctx[d, child]
        i = child
    if n > 0:
        fin[d, i] = last
        ctx[d, i] = last_ctx
    return n


@nb.njit(inline="always")
def enqueue(sv, d, q, arrival_s, prompt_tokens, cached_tokens, output_tokens):
    """Put an arriving request in deployment ``d``'s waiting queue; returns (q, dropped 0/1)."""
    cap = sv.wait_t.shape[1]
    if q.wait_n >= cap:
        return q, 1
    slot = q.wait_head + q.wait_n
    if slot >= cap:
        slot -= cap
    sv.wait_t[d, slot] = arrival_s
    sv.wait_prompt[d, slot] = prompt_tokens
    sv.wait_cached[d, slot] = cached_tokens
    sv.wait_out[d, slot] = output_tokens
    return queue_scalars(q.iterations, q.heap_n, q.ctx_base, q.pre_head, q.pre_n, q.pre_total,
                         q.pre_attn, q.wait_head, q.wait_n + 1), 0


@nb.njit(inline="always")
def serve_step(sv, d, q, rates, step_start_s, interval_s):
    """Advance deployment ``d`` by one step ``[step_start_s, step_start_s + interval_s)``.

    ``sv`` is the :class:`ServingState` (row ``d`` is updated), ``q`` the deployment's
    :class:`QueueScalars`, ``rates`` its :class:`ServingRates`. Waiting requests are admitted
    from their arrival time on. Returns ``(q, StepWork)``.
    """
    base_s, prefill_s, decode_s, context_s, attention_s, budget, max_seqs = rates
    iters, heap_n, ctx_base, pre_head, pre_n, pre_total, pre_attn, wait_head, wait_n = q
    seq_cap = sv.fin.shape[1]
    wait_cap = sv.wait_t.shape[1]
    fin, ctx = sv.fin, sv.ctx
    t = 0.0
    busy_pre = 0.0
    busy_dec = 0.0
    batch_time = 0.0
    ctx_read = 0.0
    dec_tokens = 0.0
    its_total = 0.0
    pre_tokens = 0
    attn_done = 0.0
    while True:
        # admit arrived requests while there is a free sequence slot
        while (wait_n > 0 and pre_n + heap_n < max_seqs
               and sv.wait_t[d, wait_head] <= step_start_s + t):
            slot = pre_head + pre_n
            if slot >= seq_cap:
                slot -= seq_cap
            prompt = sv.wait_prompt[d, wait_head]
            need = max(prompt - sv.wait_cached[d, wait_head], 1)
            sv.pre_left[d, slot] = need
            sv.pre_prompt[d, slot] = prompt
            sv.pre_out[d, slot] = sv.wait_out[d, wait_head]
            pre_total += need
            pre_attn += _positions(prompt - need, need)
            pre_n += 1
            wait_head += 1
            if wait_head == wait_cap:
                wait_head = 0
            wait_n -= 1
        if t >= interval_s:
            break
        # the segment ends at the next admissible arrival or at the end of the step
        seg_end = interval_s
        if wait_n > 0 and pre_n + heap_n < max_seqs:
            seg_end = min(max(sv.wait_t[d, wait_head] - step_start_s, t), interval_s)
        avail = seg_end - t
        ctx_now = ctx_base + heap_n * iters   # context tokens the decode set reads per iteration
        per_it = base_s + decode_s * heap_n + context_s * ctx_now
        if pre_n > 0:
            room = max(budget - heap_n, 1.0)
            it_need = math.ceil(pre_total / room)
            time_need = it_need * per_it + prefill_s * pre_total + attention_s * pre_attn
            if time_need <= avail:
                done = pre_total
                its = float(it_need)
                used = time_need
            else:
                frac = avail / time_need
                done = np.int64(math.floor(pre_total * frac))
                its = it_need * frac
                used = avail
            busy_pre += used
            its_total += its
            dec_tokens += heap_n * its
            ctx_read += its * ctx_now + 0.5 * heap_n * its * its
            pre_tokens += done
            iters_end = iters + its
            # decoding requests that finish within these iterations stop producing tokens
            while heap_n > 0 and fin[d, 0] <= iters_end:
                dec_tokens -= iters_end - max(fin[d, 0], iters)
                ctx_base -= ctx[d, 0]
                heap_n = _heap_pop(fin, ctx, d, heap_n)
            # prompts completed by these iterations start decoding (first token with prefill)
            left = done
            pre_total -= done
            block_attn = 0.0
            while pre_n > 0 and sv.pre_left[d, pre_head] <= left:
                need = sv.pre_left[d, pre_head]
                left -= need
                block_attn += _positions(sv.pre_prompt[d, pre_head] - need, need)
                out = sv.pre_out[d, pre_head]
                if out > 1:
                    offset = sv.pre_prompt[d, pre_head] - iters_end
                    heap_n = _heap_push(fin, ctx, d, heap_n, iters_end + (out - 1), offset)
                    ctx_base += offset
                pre_head += 1
                if pre_head == seq_cap:
                    pre_head = 0
                pre_n -= 1
            if pre_n > 0 and left > 0:
                block_attn += _positions(sv.pre_prompt[d, pre_head] - sv.pre_left[d, pre_head],
                                         left)
                sv.pre_left[d, pre_head] -= left
            attn_done += block_attn
            pre_attn = 0.0 if pre_n == 0 else pre_attn - block_attn  # 0: no float residue
            iters = iters_end
            t += used
        elif heap_n > 0:
            # decode to the end of the segment at the current batch; requests finishing on
            # the way stop producing tokens at their finishing count (the batch's speed-up
            # after a finish is second order and not modelled), and when the last one
            # finishes the engine idles from then on
            its = avail / per_it
            iters_end = iters + its
            n0 = heap_n
            last = iters
            n_gone = 0
            sum_fin = 0.0
            while heap_n > 0 and fin[d, 0] <= iters_end:
                last = fin[d, 0]
                n_gone += 1
                sum_fin += last
                ctx_base -= ctx[d, 0]
                heap_n = _heap_pop(fin, ctx, d, heap_n)
            if heap_n == 0:
                iters_end = last
                its = last - iters
                used = its * per_it
            else:
                used = avail
            gone = n_gone * iters_end - sum_fin  # tokens not produced after finishing
            busy_dec += used
            batch_time += n0 * used
            its_total += its
            dec_tokens += n0 * its - gone
            ctx_read += its * ctx_now + 0.5 * n0 * its * its
            iters += its
            t += used
        else:
            t = seg_end  # idle until the next arrival or the end of the step
    if heap_n == 0:
        ctx_base = 0.0  # drop float residue of the running sums
    batch = batch_time / busy_dec if busy_dec > 0.0 else 0.0
    return (queue_scalars(iters, heap_n, ctx_base, pre_head, pre_n, pre_total, pre_attn,
                          wait_head, wait_n),
            StepWork(busy_pre, busy_dec, batch, np.int64(pre_tokens), dec_tokens, its_total,
                     ctx_read, attn_done))


@cached_njit()
def _replay_kernel(sv, rates, interval_s, arrival_s, prompt_tokens, cached_tokens,
                   output_tokens, n_steps, features):
    """One deployment (row 0 of ``sv``), requests sorted by arrival time [s]."""
    q = load_scalars(sv, 0)
    dropped = 0
    j = 0
    n_req = arrival_s.shape[0]
    for k in range(n_steps):
        end_s = (k + 1) * interval_s
        while j < n_req and arrival_s[j] < end_s:
            q, lost = enqueue(sv, 0, q, arrival_s[j], prompt_tokens[j], cached_tokens[j],
                              output_tokens[j])
            dropped += lost
            j += 1
        q, w = serve_step(sv, 0, q, rates, k * interval_s, interval_s)
        features[k, F_RUNNING] = q.heap_n + q.pre_n
        features[k, F_PREFILL_TOKENS] = w.prefill_tokens
        features[k, F_DECODE_TOKENS] = w.decode_tokens
        features[k, F_ITERATIONS] = w.iterations
        features[k, F_WAITING] = q.wait_n
        features[k, F_PREFILL_BUSY_S] = w.prefill_busy_s
        features[k, F_DECODE_BUSY_S] = w.decode_busy_s
        features[k, F_DECODE_BATCH] = w.decode_batch
        features[k, F_CONTEXT_TOKENS] = w.context_tokens
        features[k, F_ATTENTION_TOKENS] = w.attention_tokens
    store_scalars(sv, 0, q)
    sv.dropped[0] += dropped


def replay_workload(arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
                    params: ServingParams, n_steps: int, interval_s: float = 0.25,
                    cached_tokens: np.ndarray | None = None,
                    queue_capacity: int | None = None) -> np.ndarray:
    """Workload of one deployment serving a given request stream.

    Parameters
    ----------
    arrival_s : [s] arrival times relative to the first step's start (earlier arrivals are
        admitted at the start).
    input_tokens, output_tokens : [tokens] per request.
    params : serving parameters.
    n_steps : number of steps of ``interval_s`` to simulate.
    cached_tokens : [tokens] prompt tokens served from the prefix cache (default none).
    queue_capacity : waiting-queue length (default: room for every request).

    Returns
    -------
    float64 (n_steps, N_FEATURES), columns ``F_*``.
    """
    arrival_s = np.asarray(arrival_s, np.float64)
    n = arrival_s.shape[0]
    order = np.argsort(arrival_s, kind="stable")
    cached = np.zeros(n, np.int32) if cached_tokens is None else \
        np.asarray(cached_tokens, np.int32)[order]
    st = ServingState.empty(1, max(int(params.max_num_seqs), 1), queue_capacity or max(n, 16))
    features = np.zeros((n_steps, N_FEATURES))
    _replay_kernel(st, params.rates(), float(interval_s), arrival_s[order],
                   np.asarray(input_tokens, np.int32)[order], cached,
                   np.asarray(output_tokens, np.int32)[order], int(n_steps), features)
    return features
