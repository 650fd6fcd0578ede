"""Routing of a site request stream, trace expansion and per-shard CSR extraction."""

import numpy as np
import pytest
from scipy import stats

from distgen.config.schema import ReplayConfig
from distgen.workload.routing import (RequestCSR, expand_trace, requests_for_deployments,
                                      route_requests)


def _stream(n=20_000, seed=0):
    g = np.random.default_rng(seed)
    t = np.sort(g.uniform(0, 3600.0, n))
    return t, g.integers(10, 2000, n), g.integers(1, 500, n)


# ---------------------------------------------------------------------------------------------
# routing


def test_random_routing_uniform_and_reproducible():
    t, i, o = _stream(100_000)
    n_dep = 40
    r = route_requests(t, i, o, n_deployments=n_dep, routing="random", seed=3)
    assert r.dtype == np.int64 and r.min() >= 0 and r.max() < n_dep
    counts = np.bincount(r, minlength=n_dep)
    assert stats.chisquare(counts).pvalue > 1e-3
    np.testing.assert_array_equal(r, route_requests(t, i, o, n_deployments=n_dep,
                                                    routing="random", seed=3))
    assert (r != route_requests(t, i, o, n_deployments=n_dep, routing="random", seed=4)).mean() \
        > 0.9
    # a request's choice depends only on (seed, its index): a prefix routes the same
    np.testing.assert_array_equal(
        r[:1000], route_requests(t[:1000], i[:1000], o[:1000], n_deployments=n_dep,
                                 routing="random", seed=3))
    # consecutive requests are independent: P(same deployment) = 1 / n_dep = 0.025,
    # sd sqrt(0.025 * 0.975 / 1e5) = 0.0005
    assert (r[1:] == r[:-1]).mean() == pytest.approx(1 / n_dep, abs=0.003)


def test_round_robin():
    t, i, o = _stream(1003)
    r = route_requests(t, i, o, n_deployments=7, routing="round_robin", seed=0)
    np.testing.assert_array_equal(r, np.arange(1003) % 7)


def _backlog(t, work, route, n):
    """Max over requests of the backlog [s of work] ahead of it on arrival (FIFO service)."""
    worst = 0.0
    for d in range(n):
        finish = 0.0
        for tt, w in zip(t[route == d], work[route == d]):
            worst = max(worst, finish - tt)
            finish = max(finish, tt) + w
    return worst


def test_least_loaded_balances_skewed_workload():
    g = np.random.default_rng(5)
    n_req, n_dep = 4000, 8
    t = np.sort(g.uniform(0, 400.0, n_req))
    # heavy-tailed prompts, and every 8th request is huge: round robin sends all of those to the
    # same deployment
    n_in = g.pareto(1.5, n_req).astype(np.int64) * 200 + 50
    n_in[::n_dep] *= 40
    n_out = g.integers(10, 300, n_req)
    a, b = 1e-4, 2e-3
    work = n_in * a + n_out * b
    ll = route_requests(t, n_in, n_out, n_deployments=n_dep, routing="least_loaded", seed=0,
                        service_s_per_token=(a, b))
    rr = route_requests(t, n_in, n_out, n_deployments=n_dep, routing="round_robin", seed=0)
    assert ll.min() >= 0 and ll.max() < n_dep
    bl_ll, bl_rr = _backlog(t, work, ll, n_dep), _backlog(t, work, rr, n_dep)
    # round robin queues behind the huge requests (hundreds of seconds); least_loaded steers
    # around them (a few seconds). Over seeds 0..9 the ratio is below 0.01; require 0.1
    assert bl_ll < 0.1 * bl_rr
    # total work per deployment is far more even
    w_ll = np.bincount(ll, work, n_dep)
    w_rr = np.bincount(rr, work, n_dep)
    assert w_ll.max() / w_ll.min() < w_rr.max() / w_rr.min()


def test_least_loaded_matches_reference_and_ties():
    g = np.random.default_rng(2)
    n_req, n_dep = 600, 5
    t = g.uniform(0, 60.0, n_req)  # unsorted on purpose
    n_in, n_out = g.integers(1, 1000, n_req), g.integers(1, 200, n_req)
    a = np.array([1e-4, 2e-4, 1e-4, 5e-5, 3e-4])
    b = np.array([0.01, 0.02, 0.01, 0.005, 0.03])
    got = route_requests(t, n_in, n_out, n_deployments=n_dep, routing="least_loaded", seed=0,
                         service_s_per_token=(a, b))
    # O(R N) reference of the documented rule
    finish = np.zeros(n_dep)
    want = np.empty(n_req, np.int64)
    for r in np.argsort(t, kind="stable"):
        d = int(np.argmin(finish))  # argmin: first (lowest index) of equal minima
        want[r] = d
        finish[d] = max(finish[d], t[r]) + n_in[r] * a[d] + n_out[r] * b[d]
    np.testing.assert_array_equal(got, want)
    # faster deployments (index 3) serve more requests than slow ones (index 4)
    counts = np.bincount(got, minlength=n_dep)
    assert counts[3] > counts[4]
    # ties: simultaneous requests at t = 0 fill deployments 0, 1, 2, ... in order
    z = np.zeros(5)
    r0 = route_requests(z, np.ones(5), np.ones(5), n_deployments=5, routing="least_loaded",
                        seed=0, service_s_per_token=(1.0, 1.0))
    np.testing.assert_array_equal(r0, np.arange(5))


def test_routing_errors():
    t, i, o = _stream(10)
    with pytest.raises(ValueError):
        route_requests(t, i, o, n_deployments=3, routing="least_loaded", seed=0)
    with pytest.raises(ValueError):
        route_requests(t, i, o, n_deployments=3, routing="sticky", seed=0)
    with pytest.raises(ValueError):
        route_requests(t, i, o, n_deployments=0, routing="random", seed=0)


# ---------------------------------------------------------------------------------------------
# trace expansion


def _regular(n=100, gap=2.0, t0=1000.0):
    t = t0 + gap * np.arange(n)
    return t, np.arange(n) + 1, np.arange(n) + 1000


def test_expand_time_scale_offset_no_loop():
    t, i, o = _regular()
    rp = ReplayConfig(time_scale=2.0, start_offset_s=10.0, loop=False)
    at, ai, ao = expand_trace(t, i, o, rp, 1000.0, seed=0)
    # (t - 1000) / 2 + 10 = 10 + k for k = 0..99
    np.testing.assert_allclose(at, 10.0 + np.arange(100))
    np.testing.assert_array_equal(ai, i)
    np.testing.assert_array_equal(ao, o)
    # the duration cuts: [0, 50) keeps 10..49 -> 40 requests
    at, ai, _ = expand_trace(t, i, o, rp, 50.0, seed=0)
    assert at.size == 40 and at.max() < 50.0
    # a negative offset drops the start: -20.5 + k >= 0 for k >= 21 -> 79 requests
    at, _, _ = expand_trace(t, i, o, ReplayConfig(time_scale=2.0, start_offset_s=-20.5,
                                                  loop=False), 1000.0, seed=0)
    assert at.size == 79 and at.min() == pytest.approx(0.5)


def test_expand_loop_is_seamless_for_regular_trace():
    t, i, o = _regular(n=100, gap=2.0)
    # span 198 s, mean gap 2 s -> period 200 s: a perfect 2 s grid. From offset 5 s over
    # [0, 1000 s): arrivals 5, 7, ..., 999 -> (999 - 5) / 2 + 1 = 498 requests
    rp = ReplayConfig(loop=True, start_offset_s=5.0)
    at, ai, ao = expand_trace(t, i, o, rp, 1000.0, seed=0)
    assert at.size == 498
    np.testing.assert_allclose(at, 5.0 + 2.0 * np.arange(498))
    np.testing.assert_array_equal(ai, i[np.arange(498) % 100])
    np.testing.assert_array_equal(ao, o[np.arange(498) % 100])
    # unsorted input gives the same result (the trace is sorted by time first)
    p = np.random.default_rng(0).permutation(100)
    bt, bi, _ = expand_trace(t[p], i[p], o[p], rp, 1000.0, seed=0)
    np.testing.assert_array_equal(bt, at)
    np.testing.assert_array_equal(bi, ai)
    # a negative offset with loop: the first repeat is cut, later ones fill to the end:
    # arrivals -150 + 2k in [0, 1000) -> k = 75..574 -> 500 requests
    at, _, _ = expand_trace(t, i, o, ReplayConfig(loop=True, start_offset_s=-150.0), 1000.0, 0)
    assert at.size == 500 and at[0] == pytest.approx(0.0)


def test_expand_thinning_counts():
    t, i, o = _regular(n=10_000, gap=0.1)
    rp = ReplayConfig(loop=True, rate_scale=0.3)
    # period 1000 s, duration 5000 s: 5 repeats x 10000 = 50000 candidates, each kept with p 0.3:
    # expected 15000, sd sqrt(50000 x 0.3 x 0.7) = 102; allow 5 sd
    at, ai, _ = expand_trace(t, i, o, rp, 5000.0, seed=1)
    assert at.size == pytest.approx(15_000, abs=510)
    assert np.all(np.diff(at) >= 0) and at.min() >= 0 and at.max() < 5000.0
    # deterministic, and a request's fate does not depend on the duration
    bt, _, _ = expand_trace(t, i, o, rp, 2500.0, seed=1)
    np.testing.assert_array_equal(bt, at[at < 2500.0])
    ct, _, _ = expand_trace(t, i, o, rp, 5000.0, seed=2)
    assert not np.array_equal(ct, at)


def test_expand_replication_counts_and_jitter():
    t, i, o = _regular(n=10_000, gap=0.1)
    # rate_scale 2.5, no loop, duration past the end (plus the jitter reach): every request
    # once, one copy always, a second copy with p 0.5 -> expected 25000, the random part is
    # Binomial(10000, 0.5): sd 50; allow 5 sd. The copies are jittered by at most +-0.05 s
    # (half the mean gap); keep the duration away from the trace edges so nothing is cut
    # except copies of request 0 jittered below 0 (about 0.75 of them on average)
    rp = ReplayConfig(loop=False, rate_scale=2.5, start_offset_s=1.0)
    at, ai, ao = expand_trace(t, i, o, rp, 2000.0, seed=4)
    assert at.size == pytest.approx(25_000, abs=250)
    per_request = np.bincount(ai - 1, minlength=10_000)
    assert per_request.min() >= 2 and per_request.max() <= 3
    assert (per_request == 3).mean() == pytest.approx(0.5, abs=0.025)
    # tokens travel with their request
    np.testing.assert_array_equal(ao, ai + 999)
    # originals sit on the grid 1.0 + 0.1 k, copies within +-0.05 of it
    k = ai - 1
    dev = at - (1.0 + 0.1 * k)
    assert np.abs(dev).max() <= 0.05 + 1e-9
    assert (np.abs(dev) < 1e-9).sum() == 10_000  # the originals (copies hit 0 w.p. ~0)
    assert np.all(np.diff(at) >= 0)
    # integer scale: exactly 3 per request
    at3, _, _ = expand_trace(t, i, o, ReplayConfig(loop=False, rate_scale=3.0,
                                                   start_offset_s=1.0), 2000.0, seed=4)
    assert at3.size == 30_000


def test_expand_edge_cases():
    rp = ReplayConfig(loop=True)
    at, ai, ao = expand_trace(np.array([5.0]), np.array([3]), np.array([4]), rp, 100.0, 0)
    np.testing.assert_array_equal(at, [0.0])  # a single request is not repeated
    at, _, _ = expand_trace(np.zeros(0), np.zeros(0), np.zeros(0), rp, 100.0, 0)
    assert at.size == 0
    at, _, _ = expand_trace(*_regular(), ReplayConfig(start_offset_s=500.0), 100.0, 0)
    assert at.size == 0


def test_expand_real_trace_fixture():
    """The committed Azure trace excerpt (tests/data/workloads/PROVENANCE.md), read here with
    the csv module: a missing or changed fixture is a failure, not a skip."""
    import csv
    from pathlib import Path
    path = (Path(__file__).parent / "data" / "workloads"
            / "AzureLLMInferenceTrace_code_prefix38982.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1074
    keys = {k.lower(): k for k in rows[0]}
    assert {"timestamp", "contexttokens", "generatedtokens"} <= set(keys), sorted(keys)
    import datetime as dt

    def ts(s):
        try:
            return float(s)
        except ValueError:
            return dt.datetime.fromisoformat(s.strip()[:26]).timestamp()

    t = np.array([ts(r[keys["timestamp"]]) for r in rows])
    n_in = np.array([int(r[keys["contexttokens"]]) for r in rows])
    n_out = np.array([int(r[keys["generatedtokens"]]) for r in rows])
    span = t.max() - t.min()
    # loop twice over: about 2 x the trace's requests (minus the partial last repeat)
    dur = 2.0 * span * len(t) / (len(t) - 1)
    at, ai, ao = expand_trace(t, n_in, n_out, ReplayConfig(loop=True), dur, seed=0)
    assert abs(at.size - 2 * len(t)) <= 1
    assert np.all(np.diff(at) >= 0)
    # the first repeat is the whole trace, in time order
    np.testing.assert_array_equal(ai[: len(t)], n_in[np.argsort(t, kind="stable")])
    np.testing.assert_array_equal(at[: len(t)], np.sort(t) - t.min())


# ---------------------------------------------------------------------------------------------
# per-shard CSR


def test_requests_for_deployments_csr():
    g = np.random.default_rng(8)
    n_req, n_dep = 5000, 12
    t = g.uniform(0, 100.0, n_req)  # unsorted
    t[:50] = t[50:100]  # ties in arrival time
    n_in, n_out = g.integers(1, 100, n_req), g.integers(1, 100, n_req)
    routes = route_requests(t, n_in, n_out, n_deployments=n_dep, routing="random", seed=1)
    pos = np.array([1, 4, 5, 11])
    csr = requests_for_deployments(routes, t, n_in, n_out, pos)
    assert isinstance(csr, RequestCSR)
    assert csr.n_deployments == 4 and csr.offsets.dtype == np.int64
    assert csr.offsets[0] == 0 and csr.n_requests == np.isin(routes, pos).sum()
    for d, p in enumerate(pos):
        want = np.flatnonzero(routes == p)
        want = want[np.lexsort((want, t[want]))]  # by arrival, ties by request index
        s = slice(csr.offsets[d], csr.offsets[d + 1])
        np.testing.assert_array_equal(csr.request_index[s], want)
        np.testing.assert_array_equal(csr.arrival_s[s], t[want])
        np.testing.assert_array_equal(csr.input_tokens[s], n_in[want])
        np.testing.assert_array_equal(csr.output_tokens[s], n_out[want])
        at, _, _ = csr.row(d)
        assert np.all(np.diff(at) >= 0)
    # a deployment without requests has an empty row
    empty = requests_for_deployments(np.zeros(n_req, np.int64), t, n_in, n_out, np.array([3]))
    assert empty.n_requests == 0 and empty.offsets.tolist() == [0, 0]
    with pytest.raises(ValueError):
        requests_for_deployments(routes, t, n_in, n_out, np.array([4, 1]))


def test_shard_csrs_concatenate_to_full():
    t, n_in, n_out = _stream(8000, seed=3)
    n_dep = 10
    for routing in ("random", "round_robin", "least_loaded"):
        routes = route_requests(t, n_in, n_out, n_deployments=n_dep, routing=routing, seed=9,
                                service_s_per_token=(1e-4, 1e-2))
        full = requests_for_deployments(routes, t, n_in, n_out, np.arange(n_dep))
        a = requests_for_deployments(routes, t, n_in, n_out, np.arange(0, 4))
        b = requests_for_deployments(routes, t, n_in, n_out, np.arange(4, 7))
        c = requests_for_deployments(routes, t, n_in, n_out, np.arange(7, n_dep))
        cat = RequestCSR.concatenate([a, b, c])
        for f in ("offsets", "arrival_s", "input_tokens", "output_tokens", "request_index"):
            np.testing.assert_array_equal(getattr(cat, f), getattr(full, f))
        assert full.n_requests == t.size
