"""Step-level model of a continuous-batching LLM server (vLLM-style scheduler), compiled.

Each 0.25 s step the engine runs a number of iterations. An iteration schedules one token for
every decoding request plus up to ``budget_tokens - n_decoding`` prefill tokens (chunked
prefill), and takes ``step_base_s + prefill_s_per_token * prefill_tokens + decode_s_per_seq *
n_decoding`` seconds. Requests queue when ``max_num_seqs`` are running. In continuous batching
every decoding request advances one token per iteration, so a request that starts decoding at
cumulative iteration count V0 finishes at V0 + n_out - 1 (its first token comes with the prefill):
per deployment we keep the cumulative iteration count and a min-heap of those finishing counts.
The cost per deployment-step is O(1) plus O(log n) per request event.

State lives in a :class:`ServingState` of flat arrays (one row per deployment) so that a kernel
can carry it from one time chunk to the next. The step function works on one deployment's
buffers and scalar state passed in and returned, so compiled loops keep the state in registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numba as nb
import numpy as np

from distgen.core.jit import cached_njit

#: Per-step workload outputs, columns of the ``features`` array the step functions fill.
F_RUNNING, F_PREFILL_TOKENS, F_DECODE_TOKENS, F_ITERATIONS, F_WAITING = range(5)
N_FEATURES = 5


@dataclass(frozen=True)
class ServingParams:
    """Batching and iteration-time parameters of one serving configuration.

    Attributes
    ----------
    step_base_s : [s] fixed time per engine iteration.
    prefill_s_per_token : [s/token] extra iteration time per prefill token.
    decode_s_per_seq : [s/sequence] extra iteration time per decoding request.
    budget_tokens : [tokens] max tokens per iteration (``max_num_batched_tokens``).
    max_num_seqs : max requests running at once; the rest wait in a FIFO queue.
    """

    step_base_s: float
    prefill_s_per_token: float
    decode_s_per_seq: float
    budget_tokens: int = 8192
    max_num_seqs: int = 256

    def iterations_per_s(self, max_batch: int | None = None) -> np.ndarray:
        """[1/s] engine iterations per second with n = 0 .. max_batch decoding requests."""
        n = np.arange((self.max_num_seqs if max_batch is None else max_batch) + 1)
        return 1.0 / (self.step_base_s + self.decode_s_per_seq * n)

    def as_array(self) -> np.ndarray:
        return np.array([self.step_base_s, self.prefill_s_per_token, self.decode_s_per_seq,
                          self.budget_tokens, self.max_num_seqs], np.float64)

    def to_dict(self) -> dict:
        return {"step_base_s": self.step_base_s, "prefill_s_per_token": self.prefill_s_per_token,
                "decode_s_per_seq": self.decode_s_per_seq, "budget_tokens": self.budget_tokens,
                "max_num_seqs": self.max_num_seqs}

    @classmethod
    def from_dict(cls, d: dict) -> "ServingParams":
        return cls(float(d["step_base_s"]), float(d["prefill_s_per_token"]),
                   float(d["decode_s_per_seq"]), int(d["budget_tokens"]), int(d["max_num_seqs"]))


class ServingState(NamedTuple):
    """Per-deployment serving state: flat arrays, one row per deployment, updated in place.

    ``heap`` holds finishing iteration counts of decoding requests; ``pre_*`` is the FIFO of
    admitted requests still in prefill; ``wait_*`` the FIFO queue (ring buffers).
    """

    iterations: np.ndarray      # float64 (D,) cumulative iterations
    heap: np.ndarray            # float64 (D, seq_capacity)
    heap_n: np.ndarray          # int32 (D,)
    pre_tokens: np.ndarray      # float64 (D, seq_capacity) prefill tokens left
    pre_out: np.ndarray         # int32 (D, seq_capacity) output tokens
    pre_head: np.ndarray        # int32 (D,)
    pre_n: np.ndarray           # int32 (D,)
    pre_total: np.ndarray       # float64 (D,) sum of prefill tokens left
    wait_in: np.ndarray         # int32 (D, queue_capacity)
    wait_out: np.ndarray        # int32 (D, queue_capacity)
    wait_head: np.ndarray       # int32 (D,)
    wait_n: np.ndarray          # int32 (D,)
    dropped: np.ndarray         # int64 (D,) requests refused because the queue was full

    @classmethod
    def empty(cls, n_deployments: int, seq_capacity: int, queue_capacity: int) -> "ServingState":
        d = n_deployments
        return cls(np.zeros(d), np.zeros((d, seq_capacity)), np.zeros(d, np.int32),
                   np.zeros((d, seq_capacity)), np.zeros((d, seq_capacity), np.int32),
                   np.zeros(d, np.int32), np.zeros(d, np.int32), np.zeros(d),
                   np.zeros((d, queue_capacity), np.int32), np.zeros((d, queue_capacity), np.int32),
                   np.zeros(d, np.int32), np.zeros(d, np.int32), np.zeros(d, np.int64))


@nb.njit(inline="always")
def _heap_push(heap, n, value):
    i = n
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= value:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = value
    return n + 1


@nb.njit(inline="always")
def _heap_pop(heap, n):
    n -= 1
    last = heap[n]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[i] = heap[child]
        i = child
    if n > 0:
        heap[i] = last
    return n


@nb.njit(inline="always")
def enqueue(wait_in, wait_out, wait_head, wait_n, input_tokens, output_tokens):
    """Put an arriving request in the waiting ring buffer; returns (wait_n, dropped 0/1)."""
    cap = wait_in.shape[0]
    if wait_n >= cap:
        return wait_n, 1
    slot = wait_head + wait_n
    if slot >= cap:
        slot -= cap
    wait_in[slot] = input_tokens
    wait_out[slot] = output_tokens
    return wait_n + 1, 0


@nb.njit(inline="always")
def serve_step(heap, pre_tokens, pre_out, wait_in, wait_out,
               iters, heap_n, pre_head, pre_n, pre_total, wait_head, wait_n,
               base_s, prefill_s, decode_s, budget, max_seqs, interval_s, iterations_per_s):
    """Advance one deployment by one step of ``interval_s``.

    The buffers are the deployment's rows (decode heap, prefill FIFO, waiting FIFO); the
    scalars its carried state. ``iterations_per_s[n]`` is ``1 / (base_s + decode_s * n)``, the
    iteration rate with n decoding requests (a table, so the hot path multiplies instead of
    dividing). Returns the updated scalars and the step's workload:
    ``(iters, heap_n, pre_head, pre_n, pre_total, wait_head, wait_n, prefill_tokens,
    decode_tokens, iterations)``; running requests = heap_n + pre_n, waiting = wait_n.
    """
    seq_cap = heap.shape[0]
    wait_cap = wait_in.shape[0]
    # admit from the queue while there is a free sequence slot
    while wait_n > 0 and pre_n + heap_n < max_seqs:
        slot = pre_head + pre_n
        if slot >= seq_cap:
            slot -= seq_cap
        pre_tokens[slot] = wait_in[wait_head]
        pre_out[slot] = wait_out[wait_head]
        pre_total += wait_in[wait_head]
        pre_n += 1
        wait_head += 1
        if wait_head == wait_cap:
            wait_head = 0
        wait_n -= 1

    n_dec = heap_n
    time_used = 0.0
    it_prefill = 0.0
    prefill_done = 0.0
    start = iters
    if pre_n > 0:
        backlog = pre_total
        room = max(budget - n_dec, 1.0)
        it_prefill = max(1.0, np.ceil(backlog / room))
        t_prefill = it_prefill * (base_s + decode_s * n_dec) + prefill_s * backlog
        if t_prefill <= interval_s:
            prefill_done = backlog
            time_used = t_prefill
        else:
            frac = interval_s / t_prefill
            prefill_done = backlog * frac
            it_prefill *= frac
            time_used = interval_s
        # requests whose prompt is fully processed start decoding after the prefill iterations
        left = prefill_done
        start = iters + it_prefill
        while pre_n > 0:
            need = pre_tokens[pre_head]
            if need > left:
                pre_tokens[pre_head] = need - left
                break
            left -= need
            heap_n = _heap_push(heap, heap_n, start + max(pre_out[pre_head] - 1, 0))
            pre_head += 1
            if pre_head == seq_cap:
                pre_head = 0
            pre_n -= 1
        pre_total = 0.0 if pre_n == 0 else max(backlog - prefill_done, 0.0)
    it_decode = 0.0
    if heap_n > 0:
        it_decode = (interval_s - time_used) * iterations_per_s[heap_n]
    decode_tokens = n_dec * it_prefill + heap_n * it_decode
    step_start = iters
    iters = start + it_decode
    # finished requests leave; they stopped producing tokens at their finishing count
    last_finish = step_start
    while heap_n > 0 and heap[0] <= iters:
        finish = max(heap[0], step_start)
        decode_tokens -= iters - finish
        last_finish = max(last_finish, finish)
        heap_n = _heap_pop(heap, heap_n)
    if heap_n == 0 and pre_n == 0:
        iters = max(last_finish, start)  # the engine idles once the last request is done
    return (iters, heap_n, pre_head, pre_n, pre_total, wait_head, wait_n, prefill_done,
            max(decode_tokens, 0.0), iters - step_start)


@cached_njit()
def _replay_kernel(state, params, iterations_per_s, interval_s, step_of_arrival, input_tokens,
                   output_tokens, n_steps, features):
    """One deployment (row 0 of ``state``), requests sorted by arrival step."""
    (iters_a, heap, heap_n_a, pre_tokens, pre_out, pre_head_a, pre_n_a, pre_total_a,
     wait_in, wait_out, wait_head_a, wait_n_a, dropped_a) = state
    iters, heap_n, pre_head, pre_n = iters_a[0], heap_n_a[0], pre_head_a[0], pre_n_a[0]
    pre_total, wait_head, wait_n, dropped = pre_total_a[0], wait_head_a[0], wait_n_a[0], 0
    j = 0
    n_req = step_of_arrival.shape[0]
    for k in range(n_steps):
        while j < n_req and step_of_arrival[j] <= k:
            wait_n, lost = enqueue(wait_in[0], wait_out[0], wait_head, wait_n,
                                   input_tokens[j], output_tokens[j])
            dropped += lost
            j += 1
        (iters, heap_n, pre_head, pre_n, pre_total, wait_head, wait_n, prefill, decode,
         iterations) = serve_step(heap[0], pre_tokens[0], pre_out[0], wait_in[0], wait_out[0],
                                  iters, heap_n, pre_head, pre_n, pre_total, wait_head, wait_n,
                                  params[0], params[1], params[2], params[3], int(params[4]),
                                  interval_s, iterations_per_s)
        features[k, F_RUNNING] = heap_n + pre_n
        features[k, F_PREFILL_TOKENS] = prefill
        features[k, F_DECODE_TOKENS] = decode
        features[k, F_ITERATIONS] = iterations
        features[k, F_WAITING] = wait_n
    iters_a[0], heap_n_a[0], pre_head_a[0], pre_n_a[0] = iters, heap_n, pre_head, pre_n
    pre_total_a[0], wait_head_a[0], wait_n_a[0] = pre_total, wait_head, wait_n
    dropped_a[0] += dropped


def replay_workload(arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray,
                    params: ServingParams, n_steps: int, interval_s: float = 0.25,
                    queue_capacity: int = 65536) -> np.ndarray:
    """Workload of one deployment serving a given request stream.

    Parameters
    ----------
    arrival_s : [s] arrival times relative to the first step's start.
    input_tokens, output_tokens : [tokens] per request.
    params : serving parameters.
    n_steps : number of steps of ``interval_s`` to simulate.

    Returns
    -------
    float64 (n_steps, N_FEATURES): running, prefill tokens, decode tokens, iterations, waiting.
    """
    order = np.argsort(arrival_s, kind="stable")
    step = np.floor(np.asarray(arrival_s, np.float64)[order] / interval_s).astype(np.int64)
    step = np.maximum(step, 0)
    st = ServingState.empty(1, max(int(params.max_num_seqs), 1), queue_capacity)
    features = np.zeros((n_steps, N_FEATURES))
    _replay_kernel(st, params.as_array(), params.iterations_per_s(), float(interval_s),
                   step,
                   np.asarray(input_tokens, np.int32)[order],
                   np.asarray(output_tokens, np.int32)[order], int(n_steps), features)
    return features
