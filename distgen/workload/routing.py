"""Replayed request traces: mapping a trace onto the run, routing it, cutting it per shard.

* :func:`expand_trace` maps trace time onto the run timeline (ReplayConfig: time_scale,
  start_offset_s, loop, rate_scale).
* :func:`route_requests` picks a deployment (position in the site's deployment order) for every
  request of the site stream: ``random``, ``round_robin`` or ``least_loaded``.
* :func:`requests_for_deployments` gathers the requests of one shard's deployments as CSR.

Routing is done once for the whole site (it is a site-level decision; least_loaded even couples
all deployments), and every shard takes its own rows, so the result does not depend on how the
fleet is cut. Random choices are counter-based (:mod:`distgen.core.rng`):

* random routing: ``uniform01(entity_key(seed, KIND_ROUTING, 0), i)`` for request i (its index in
  the arrays passed), deployment ``floor(u * n_deployments)``.
* trace expansion: ``uniform01(entity_key(seed, KIND_ROUTING, (r << 32) | j, STREAM_REPLAY), i)``
  for repeat r of the loop, copy j (j = 0: the keep / extra-copy draw, j >= 1: jitter of copy
  j) and i the request's position in the time-sorted trace; a request's fate therefore does not
  depend on ``duration_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from distgen.config.schema import ROUTINGS
from distgen.core.rng import KIND_ROUTING, STREAM_REPLAY, entity_key, uniform01



# ---------------------------------------------------------------------------------------------
# routing


@nb.njit(cache=True)
def _least_loaded(order, arrival, n_in, n_out, a, b, n):
    """Min-heap of deployments by (backlog finish time, index); only the root ever changes."""
    finish = np.zeros(n)
    heap = np.arange(n)  # all finish times 0: index order is a valid heap
    out = np.empty(order.shape[0], np.int64)
    for r in order:
        d = heap[0]
        out[r] = d
        finish[d] = max(finish[d], arrival[r]) + n_in[r] * a[d] + n_out[r] * b[d]
        pos = 0
        while True:
            c = 2 * pos + 1
            if c >= n:
                break
            c2 = c + 1
            if c2 < n:
                i, j = heap[c2], heap[c]
                if finish[i] < finish[j] or (finish[i] == finish[j] and i < j):
                    c = c2
            i, j = heap[c], heap[pos]
            if finish[i] < finish[j] or (finish[i] == finish[j] and i < j):
                heap[c], heap[pos] = j, i
                pos = c
            else:
                break
    return out


def route_requests(arrival_s, input_tokens, output_tokens, *, n_deployments: int, routing: str,
                   seed: int, service_s_per_token=None) -> np.ndarray:
    """Deployment (0 .. n_deployments - 1, position in site order) of every request.

    Parameters
    ----------
    arrival_s : (R,) [s] arrival times (any order; least_loaded processes them by arrival).
    input_tokens, output_tokens : (R,) token counts.
    n_deployments : number of deployments in the site.
    routing : ``random`` (uniform, independent per request), ``round_robin`` (request i goes to
        ``i mod n``, in the order given) or ``least_loaded``.
    seed : run seed (random routing only).
    service_s_per_token : ``(a, b)`` [s/token], required for least_loaded: a request costs
        ``input_tokens * a + output_tokens * b`` seconds of backlog. ``a`` and ``b`` are scalars or
        per-deployment arrays of shape (n_deployments,).

    least_loaded: requests are taken in arrival order (ties by index); each goes to the
    deployment whose estimated backlog finishes first (ties: lowest index), whose backlog then
    becomes ``finish_d = max(finish_d, arrival) + work_d``. A heap keeps this O(R log N).

    Returns
    -------
    int64 (R,) deployment positions.
    """
    arrival = np.asarray(arrival_s, np.float64)
    n_req = arrival.shape[0]
    if n_deployments < 1:
        raise ValueError(f"n_deployments must be >= 1, got {n_deployments}")
    if routing == "random":
        u = uniform01(entity_key(seed, KIND_ROUTING, 0), np.arange(n_req, dtype=np.uint64))
        return np.minimum((u * n_deployments).astype(np.int64), n_deployments - 1)
    if routing == "round_robin":
        return np.arange(n_req, dtype=np.int64) % n_deployments
    if routing == "least_loaded":
        if service_s_per_token is None:
            raise ValueError("least_loaded routing needs service_s_per_token=(a, b) [s/token]")
        a, b = service_s_per_token
        a = np.broadcast_to(np.asarray(a, np.float64), (n_deployments,)).copy()
        b = np.broadcast_to(np.asarray(b, np.float64), (n_deployments,)).copy()
        if (a < 0).any() or (b < 0).any():
            raise ValueError("service_s_per_token must be >= 0")
        n_in = np.asarray(input_tokens, np.float64)
        n_out = np.asarray(output_tokens, np.float64)
        if n_in.shape != arrival.shape or n_out.shape != arrival.shape:
            raise ValueError("arrival_s, input_tokens and output_tokens need the same length")
        order = np.argsort(arrival, kind="stable").astype(np.int64)
        return _least_loaded(order, arrival, n_in, n_out, a, b, int(n_deployments))
    raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")


# ---------------------------------------------------------------------------------------------
# trace expansion


def _replay_key(seed: int, repeat: int, copy: int):
    return entity_key(seed, KIND_ROUTING, (repeat << 32) | copy, STREAM_REPLAY)


def expand_trace(arrival_s, input_tokens, output_tokens, replay, duration_s: float, seed: int):
    """Map a request trace onto the run timeline ``[0, duration_s)``: see :func:`expand_rows`.

    Returns
    -------
    (arrival_s float64, input_tokens int64, output_tokens int64).
    """
    n_in = np.asarray(input_tokens, np.int64)
    n_out = np.asarray(output_tokens, np.int64)
    if not (np.shape(arrival_s) == n_in.shape == n_out.shape):
        raise ValueError("arrival_s, input_tokens and output_tokens need the same 1-d shape")
    t, row = expand_rows(arrival_s, replay, duration_s, seed)
    return t, n_in[row], n_out[row]


def expand_rows(arrival_s, replay, duration_s: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Map a request trace onto the run timeline ``[0, duration_s)`` (ReplayConfig semantics).

    * time: ``t = (t_trace - t_first) / time_scale + start_offset_s``.
    * loop: repeat r is shifted by ``r * (span + mean_gap)``, with ``span = (t_last - t_first) /
      time_scale`` and ``mean_gap = span / (R - 1)``, for r = 0, 1, ... while it can reach
      ``[0, duration_s)`` (so a regular trace loops seamlessly). Without loop only r = 0. A trace
      of one request, or of zero span, is not repeated.
    * rate_scale s < 1: each request of each repeat is kept when its keyed uniform is < s.
    * rate_scale s >= 1: every request is kept, plus ``floor(s) - 1`` jittered copies and one more
      with probability ``s - floor(s)`` (so s requests on average); copies are shifted by a keyed
      uniform in ``[-mean_gap / 2, +mean_gap / 2)``.
    * only arrivals in ``[0, duration_s)`` are kept; the result is sorted by arrival (stable).

    Returns
    -------
    (arrival_s float64, row int64): each request's arrival time on the run and the trace row it
    copies (so every per-request column of the trace can be gathered).
    """
    t_raw = np.asarray(arrival_s, np.float64)
    if t_raw.ndim != 1:
        raise ValueError("arrival_s must be 1-d")
    empty = (np.zeros(0), np.zeros(0, np.int64))
    n = t_raw.shape[0]
    if n == 0 or duration_s <= 0:
        return empty
    order = np.argsort(t_raw, kind="stable")
    t_raw = t_raw[order]
    t = (t_raw - t_raw[0]) / replay.time_scale
    span = float(t[-1])
    mean_gap = span / (n - 1) if n > 1 else 0.0
    period = span + mean_gap
    offset = float(replay.start_offset_s)
    s = float(replay.rate_scale)
    n_full = int(math.floor(s)) if s >= 1 else 0
    frac = s - n_full if s >= 1 else 0.0
    half = 0.5 * mean_gap if s > 1 else 0.0   # jitter reach of the copies
    idx = np.arange(n, dtype=np.uint64)

    if replay.loop and period > 0:
        n_rep = max(0, int(math.ceil((duration_s + half - offset) / period)))
        # first repeat that can reach t >= 0
        r_first = max(0, int(math.floor((-offset - span - half) / period)))
    else:
        n_rep, r_first = 1, 0

    out_t, out_i = [], []
    for r in range(r_first, n_rep):
        base = t + (offset + r * period)
        if base[0] - half >= duration_s:
            break
        if base[-1] + half < 0:
            continue
        u0 = uniform01(_replay_key(seed, r, 0), idx)
        if s < 1:
            keep = np.flatnonzero(u0 < s)
            out_t.append(base[keep])
            out_i.append(keep)
            continue
        out_t.append(base)
        out_i.append(np.arange(n))
        for j in range(1, n_full + (1 if frac > 0 else 0)):
            sel = np.arange(n) if j < n_full else np.flatnonzero(u0 < frac)
            jit = (uniform01(_replay_key(seed, r, j), idx[sel]) - 0.5) * mean_gap
            out_t.append(base[sel] + jit)
            out_i.append(sel)
    if not out_t:
        return empty
    t_all = np.concatenate(out_t)
    i_all = np.concatenate(out_i)
    inside = (t_all >= 0) & (t_all < duration_s)
    t_all, i_all = t_all[inside], i_all[inside]
    o = np.argsort(t_all, kind="stable")
    return t_all[o], order[i_all[o]].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# per-shard CSR


@dataclass(frozen=True)
class RequestCSR:
    """Requests of a list of deployments, row by row (CSR).

    Row ``d`` (the d-th deployment asked for) holds entries ``offsets[d]:offsets[d + 1]`` of
    ``arrival_s`` [s] float64, ``input_tokens`` / ``output_tokens`` int64 and ``request_index``
    int64 (index in the site stream), sorted by arrival (ties by request index).
    """

    offsets: np.ndarray
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    request_index: np.ndarray

    @property
    def n_deployments(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_requests(self) -> int:
        return int(self.offsets[-1])

    def row(self, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival_s, input_tokens, output_tokens) of the d-th deployment."""
        s = slice(int(self.offsets[d]), int(self.offsets[d + 1]))
        return self.arrival_s[s], self.input_tokens[s], self.output_tokens[s]

    @classmethod
    def concatenate(cls, parts: list["RequestCSR"]) -> "RequestCSR":
        """Rows of ``parts`` one after the other (e.g. consecutive shards -> the whole site)."""
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += p.n_requests
        return cls(np.concatenate(offsets),
                   *(np.concatenate([getattr(p, f) for p in parts]) if parts else
                     np.zeros(0, np.float64 if f == "arrival_s" else np.int64)
                     for f in ("arrival_s", "input_tokens", "output_tokens", "request_index")))


def requests_for_deployments(routes, arrival_s, input_tokens, output_tokens,
                             deployment_positions) -> RequestCSR:
    """The requests routed to ``deployment_positions`` (ascending positions in site order).

    ``routes`` (R,) is the output of :func:`route_requests` for the site stream.
    """
    routes = np.asarray(routes, np.int64)
    pos = np.asarray(deployment_positions, np.int64)
    if pos.ndim != 1 or (pos.size > 1 and (np.diff(pos) <= 0).any()):
        raise ValueError("deployment_positions must be strictly ascending")
    arrival = np.asarray(arrival_s, np.float64)
    n_in = np.asarray(input_tokens, np.int64)
    n_out = np.asarray(output_tokens, np.int64)
    if not (routes.shape == arrival.shape == n_in.shape == n_out.shape):
        raise ValueError("routes, arrival_s, input_tokens and output_tokens need the same length")
    if pos.size == 0:
        return RequestCSR(np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.int64),
                          np.zeros(0, np.int64), np.zeros(0, np.int64))
    loc = np.searchsorted(pos, routes)
    loc_c = np.minimum(loc, pos.size - 1)
    mine = np.flatnonzero(pos[loc_c] == routes)
    row = loc_c[mine]
    o = np.lexsort((mine, arrival[mine], row))  # by row, then arrival, then request index
    sel = mine[o]
    offsets = np.zeros(pos.size + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=pos.size), out=offsets[1:])
    return RequestCSR(offsets, arrival[sel], n_in[sel], n_out[sel], sel.astype(np.int64))
