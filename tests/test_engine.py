"""Engine tests: fluid serving model, fleet kernel (determinism, chunking, subsets, statistics),
block resampling and hierarchical reduction.

Reference values are computed in each test from the stated parameters (hand-checkable
formulas) or from the measured fixtures in tests/data/measured; statistical tolerances are
justified where they are set.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distgen.engine.deployments import (DeploymentBatch, PackedModels, ReplayArrivals,
                                        SyntheticArrivals, gamma_gap_quantiles, replay_power)
from distgen.engine.records import S_ARRIVED, S_RUNNING_SUM
from distgen.engine.reduce import non_gpu_mw, sum_groups
from distgen.core.grid import MW_PER_W
from distgen.engine.resample import BlockSummer, block_means_w, coarsen_sums
from distgen.model.artifact import ModelLibrary
from distgen.workload.serving import (F_CONTEXT_TOKENS, F_DECODE_BUSY_S, F_DECODE_TOKENS,
                                      F_ITERATIONS, F_PREFILL_BUSY_S, F_PREFILL_TOKENS,
                                      F_RUNNING, F_WAITING, ServingParams, replay_workload)

DT = 0.25
QWEN = "qwen3-8b_A100_tp1"
GEMMA = "gemma-4-26b-a4b-it_A100_tp2"


@pytest.fixture(scope="module")
def library() -> ModelLibrary:
    return ModelLibrary.load()


@pytest.fixture(scope="module")
def qwen(library):
    return library[QWEN]


# =============================================================================================
# serving model (distgen.workload.serving), hand-checkable cases
#
# Parameters chosen so every duration is easy to compute by hand: an iteration costs
# BASE + PREFILL * prompt_tokens + DECODE * n_decoding seconds (no context or attention cost).
# The model is event-driven inside a step: a request starts at its arrival time, and a slot
# freed by a finishing request is taken at once.

BASE, PREFILL, DECODE = 0.01, 1e-4, 2e-3
HAND = ServingParams(BASE, PREFILL, DECODE, budget_tokens=8192, max_num_seqs=256)


def isolated_service_s(n_in: int, n_out: int, p: ServingParams = HAND) -> float:
    """Time from admission to the last token of a request alone on the server: one prefill
    iteration (its prompt fits the token budget) then n_out - 1 decode iterations at batch 1."""
    return (p.step_base_s + p.prefill_s_per_token * n_in
            + (n_out - 1) * (p.step_base_s + p.decode_s_per_seq))


def running_at_step_ends(busy: list[tuple[float, float]], n_steps: int) -> np.ndarray:
    """1 for the steps whose end (k + 1) * DT falls inside one of the ``[start, end)`` spans."""
    ends = (np.arange(n_steps) + 1) * DT
    out = np.zeros(n_steps)
    for a, b in busy:
        out[(ends >= a) & (ends < b)] += 1
    return out


def test_single_request_on_idle_server():
    n_in, n_out = 500, 101
    # T = 0.01 + 0.05 (prefill) + 100 * 0.012 (decode) = 1.26 s: running at the ends of steps
    # 0..4 (0.25 .. 1.25 s), done during step 5
    service = isolated_service_s(n_in, n_out)
    assert service == pytest.approx(1.26)
    f = replay_workload(np.array([0.0]), np.array([n_in]), np.array([n_out]), HAND, 12)
    np.testing.assert_array_equal(f[:, F_RUNNING], [1] * 5 + [0] * 7)
    # the whole prompt is computed in the arrival step, nothing waits
    assert f[0, F_PREFILL_TOKENS] == n_in
    assert f[1:, F_PREFILL_TOKENS].sum() == 0
    assert f[:, F_WAITING].max() == 0
    # busy exactly for the service time: 0.06 s of prefill iterations, then decode
    busy = f[:, F_PREFILL_BUSY_S] + f[:, F_DECODE_BUSY_S]
    assert f[0, F_PREFILL_BUSY_S] == pytest.approx(0.06)
    assert busy.sum() == pytest.approx(service)
    assert busy[5] == pytest.approx(0.01) and busy[6:].sum() == 0
    # tokens are conserved: n_out - 1 decode tokens (the first comes with the prefill)
    assert f[:, F_DECODE_TOKENS].sum() == pytest.approx(n_out - 1, abs=1e-9)


def test_single_request_starts_at_its_arrival_time():
    # arrival at 1.1 s, inside step 4 (1.0 .. 1.25 s): served 1.1 .. 2.36 s, so running at the
    # ends of steps 4..8, and step 4 is busy 0.15 s, step 9 busy 0.11 s
    f = replay_workload(np.array([1.1]), np.array([500]), np.array([101]), HAND, 16)
    np.testing.assert_array_equal(f[:, F_RUNNING], running_at_step_ends([(1.1, 2.36)], 16))
    busy = f[:, F_PREFILL_BUSY_S] + f[:, F_DECODE_BUSY_S]
    assert busy[4] == pytest.approx(0.15) and busy[9] == pytest.approx(0.11)
    assert busy[:4].sum() == 0 and busy[10:].sum() == 0


def test_queue_is_fifo_with_one_slot():
    """max_num_seqs = 1: requests are served one after another in arrival order, each starting
    when the previous one ends (1.26 s, 0.42 s, 2.46 s of service: ends at 1.26, 1.68, 4.14 s).
    Waiting at a step end: 2 until 1.26 s, 1 until 1.68 s."""
    p = ServingParams(BASE, PREFILL, DECODE, 8192, max_num_seqs=1)
    n_in = np.array([500, 500, 500])
    n_out = np.array([101, 31, 201])
    arrival = np.array([0.0, 0.01, 0.02])
    s1, s2, s3 = (isolated_service_s(i, o, p) for i, o in zip(n_in, n_out))
    assert (s1, s2, s3) == pytest.approx((1.26, 0.42, 2.46))
    f = replay_workload(arrival, n_in, n_out, p, 24)
    np.testing.assert_array_equal(f[:, F_RUNNING], running_at_step_ends([(0.0, 4.14)], 24))
    waiting = running_at_step_ends([(0.01, s1), (0.02, s1 + s2)], 24)
    np.testing.assert_array_equal(f[:, F_WAITING], waiting)
    # FIFO: serving the long third request before the second would leave one waiting until
    # 1.26 + 2.46 s instead of 1.68 s
    assert f[5, F_WAITING] == 1 and f[6, F_WAITING] == 0


def test_chunked_prefill_shares_the_token_budget_with_decode():
    """Budget pressure, by hand. Budget 100 tokens per iteration. Four requests (10-token
    prompts, 1000 outputs) arrive at 0 s: one prefill iteration (0.01 + 40 * 1e-4 = 0.014 s),
    then decode at batch 4 (0.018 s per iteration). A 500-token prompt arrives at 0.26 s, in
    step 1: the four decoding requests take 4 tokens of every iteration, leaving 96 for the
    prompt, so it needs ceil(500 / 96) = 6 iterations (5 if decode were left out of the budget),
    taking 6 * 0.018 + 500 * 1e-4 = 0.158 s (0.26 .. 0.418 s). Step 1 then:
      decode-only 0.25 .. 0.26 s: 0.01 / 0.018 iterations at batch 4,
      prefill 0.26 .. 0.418 s: 6 iterations, 4 decode tokens each,
      decode 0.418 .. 0.5 s at batch 5: 0.082 / 0.02 = 4.1 iterations.
    """
    p = ServingParams(BASE, PREFILL, DECODE, budget_tokens=100, max_num_seqs=256)
    arrival = np.array([0, 0, 0, 0, 0.26])
    f = replay_workload(arrival, np.array([10, 10, 10, 10, 500]), np.full(5, 1000), p, 3)
    it_before = 0.01 / 0.018
    assert f[1, F_PREFILL_TOKENS] == 500
    assert f[1, F_PREFILL_BUSY_S] == pytest.approx(0.158)
    assert f[1, F_DECODE_BUSY_S] == pytest.approx(0.01 + 0.082)
    assert f[1, F_ITERATIONS] == pytest.approx(it_before + 6 + 4.1)
    assert f[1, F_DECODE_TOKENS] == pytest.approx(4 * it_before + 4 * 6 + 5 * 4.1)
    assert f[1, F_RUNNING] == 5


def test_prefix_cached_tokens_need_no_prefill_but_count_as_context():
    """A 1000-token prompt with 900 tokens in the prefix cache: 100 tokens are computed (one
    iteration of 0.01 + 100 * 1e-4 = 0.02 s instead of 0.11 s); decoding then reads a context
    of 1000 tokens plus those generated: with one decode iteration of the request in the step,
    context read = 1000 (after its first token, generated with the prefill)."""
    p = ServingParams(BASE, PREFILL, DECODE, 8192, 256, context_s_per_token=1e-7)
    f = replay_workload(np.array([0.0]), np.array([1000]), np.array([2]), p, 2,
                        cached_tokens=np.array([900]))
    assert f[0, F_PREFILL_TOKENS] == 100
    assert f[0, F_PREFILL_BUSY_S] == pytest.approx(0.02)
    assert f[0, F_DECODE_TOKENS] == pytest.approx(1.0)
    assert f[0, F_CONTEXT_TOKENS] == pytest.approx(1000.5)  # the integral over the iteration
    # a fully cached prompt still computes its last token
    g = replay_workload(np.array([0.0]), np.array([1000]), np.array([2]), p, 2,
                        cached_tokens=np.array([1000]))
    assert g[0, F_PREFILL_TOKENS] == 1


def test_long_prompts_drain_and_conserve_tokens():
    """Prompts up to 9,000 tokens (over the 8192-token budget, so two iterations each),
    bursty arrivals: every request drains, prompt tokens are whole numbers summing exactly to
    the prompts, and decode tokens to sum(n_out - 1) (float accumulation: 1e-6)."""
    rng = np.random.default_rng(7)
    t = np.sort(rng.uniform(0, 30, 120))
    n_in = rng.integers(1, 9001, t.size)
    n_out = rng.integers(1, 300, t.size)
    f = replay_workload(t, n_in, n_out, HAND, 4000)
    assert f[-1, F_RUNNING] == 0 and f[-1, F_WAITING] == 0
    assert np.all(f[:, F_PREFILL_TOKENS] == np.round(f[:, F_PREFILL_TOKENS]))
    assert f[:, F_PREFILL_TOKENS].sum() == n_in.sum()
    assert f[:, F_DECODE_TOKENS].sum() == pytest.approx((n_out - 1).sum(), abs=1e-6)
    busy = f[:, F_PREFILL_BUSY_S] + f[:, F_DECODE_BUSY_S]
    assert busy.max() <= DT + 1e-12


def test_burst_above_max_num_seqs_queues_and_drains():
    p = ServingParams(BASE, PREFILL, DECODE, 8192, max_num_seqs=4)
    n = 10
    f = replay_workload(np.zeros(n), np.full(n, 300), np.full(n, 40), p, 80)
    assert f[0, F_RUNNING] == 4 and f[0, F_WAITING] == n - 4
    assert f[:, F_RUNNING].max() <= 4
    assert np.all(np.diff(f[:, F_WAITING]) <= 0)      # nothing new arrives: the queue only drains
    assert f[-1, F_RUNNING] == 0 and f[-1, F_WAITING] == 0
    assert f[:, F_PREFILL_TOKENS].sum() == n * 300  # every prompt is prefilled exactly once


def test_littles_law_low_load():
    """Mean running at step ends = arrival rate x time in system (Little's law).

    Fixed request size: n_in = 200, n_out = 200 with BASE = 0.01, PREFILL = DECODE = 1e-4 gives
    an isolated service of 0.01 + 0.02 + 199 * 0.0101 = 2.0399 s; requests start at their
    arrival time, so L = lambda * T. At lambda = 0.4 req/s (~0.8 requests in flight) overlaps
    stretch iterations by DECODE / BASE = 1% per extra request and by 0.02 s per prefill of a
    newcomer: a few % at most. The realised arrival count removes the Poisson count noise, and
    the sampling of 80,000 step ends leaves about 1% noise: 4% is ample.
    """
    p = ServingParams(0.01, 1e-4, 1e-4, 8192, 256)
    rng = np.random.default_rng(11)
    duration = 20000.0
    t = np.cumsum(rng.exponential(1 / 0.4, 10000))
    t = t[t < duration - 50]
    service = isolated_service_s(200, 200, p)
    assert service == pytest.approx(2.0399)
    f = replay_workload(t, np.full(t.size, 200), np.full(t.size, 200), p, int(duration / DT))
    lam = t.size / duration
    assert f[:, F_RUNNING].mean() == pytest.approx(lam * service, rel=0.04)


# =============================================================================================
# fleet kernel: determinism, chunking invariance, deployment-subset invariance


def _synthetic_inputs(n_dep, n_steps, spi, seed=0, base=2.0):
    rng = np.random.default_rng(seed)
    base_rps = base * rng.uniform(0.5, 1.5, n_dep)
    n_int = n_steps // spi + 2
    mult = rng.uniform(0.2, 2.0, (n_dep, n_int)).astype(np.float32)
    return base_rps, mult


def _syn_chunk(base_rps, mult, spi, step0, n, offset=0, gamma_q=None, rows=None):
    lo = max(step0 - offset, 0) // spi
    hi = max(step0 + n - offset, 0) // spi
    m = mult if rows is None else mult[rows]
    b = base_rps if rows is None else base_rps[rows]
    return SyntheticArrivals(b, np.ascontiguousarray(m[:, lo:hi + 1]), lo, spi,
                             gamma_gap_quantiles(1.0) if gamma_q is None else gamma_q, offset)


def _replay_csr(n_dep, n_steps, seed=0, rate=2.0):
    """Per-deployment Poisson request streams as CSR (arrival times, tokens, some cached)."""
    rng = np.random.default_rng(seed)
    times, n_in, cached, n_out, offsets = [], [], [], [], [0]
    for _ in range(n_dep):
        t = np.cumsum(rng.exponential(1 / rate, int(rate * n_steps * DT * 1.5) + 20))
        t = t[t < n_steps * DT]
        times.append(t)
        prompt = rng.integers(20, 3000, t.size)
        n_in.append(prompt.astype(np.int32))
        cached.append((prompt * rng.choice([0.0, 0.9], t.size)).astype(np.int32))
        n_out.append(rng.integers(1, 600, t.size).astype(np.int32))
        offsets.append(offsets[-1] + t.size)
    cat = np.concatenate
    return ReplayArrivals(np.array(offsets, np.int64), cat(times), cat(n_in), cat(cached),
                          cat(n_out))


def _replay_rows(rep: ReplayArrivals, rows):
    """The CSR of a subset of deployments (in the given order)."""
    parts = [slice(rep.offsets[r], rep.offsets[r + 1]) for r in rows]
    offsets = np.r_[0, np.cumsum([s.stop - s.start for s in parts])].astype(np.int64)
    cat = lambda a: np.concatenate([a[s] for s in parts])  # noqa: E731
    return ReplayArrivals(offsets, cat(rep.arrival_s), cat(rep.input_tokens),
                          cat(rep.cached_tokens), cat(rep.output_tokens))


def _run(models, model_index, uids, seed, chunks, *, synthetic=None, replay=None, spi=10,
         offset=0):
    """Advance one batch through ``chunks`` (list of lengths); return (per-deployment mW,
    per-target mW, batch). Each deployment is its own target."""
    n_dep = len(uids)
    batch = DeploymentBatch(models, model_index, uids, np.arange(n_dep), seed)
    total = sum(chunks)
    dep = np.zeros((n_dep, total), np.int32)
    tgt = np.zeros((n_dep, total), np.int64)
    step0 = 0
    for n in chunks:
        t = np.zeros((n_dep, n), np.int64)
        d = np.zeros((n_dep, n), np.int32)
        if synthetic is not None:
            base, mult = synthetic
            batch.advance(step0, n, t, synthetic=_syn_chunk(base, mult, spi, step0, n, offset),
                          deployment_mw=d)
        else:
            batch.advance(step0, n, t, replay=replay, deployment_mw=d)
        dep[:, step0:step0 + n] = d
        tgt[:, step0:step0 + n] = t
        step0 += n
    return dep, tgt, batch


N_STEPS = 1200


def _assert_same_stats(b1, b2):
    """Arrival counts are exact; the float workload sums are accumulated per call, so their
    rounding depends on the chunking (relative 1e-15)."""
    np.testing.assert_array_equal(b1.stats[:, S_ARRIVED], b2.stats[:, S_ARRIVED])
    np.testing.assert_allclose(b1.stats, b2.stats, rtol=1e-12)
    for name, a in b1.state._asdict().items():   # every carried array, bit for bit
        if name == "serving":
            for sname, sa in a._asdict().items():
                np.testing.assert_array_equal(sa, getattr(b2.state.serving, sname), err_msg=sname)
        else:
            np.testing.assert_array_equal(a, getattr(b2.state, name), err_msg=name)


UNEVEN = [1, 0, 7, 240, 13, 400, 1, 538]   # sums to N_STEPS, includes an empty chunk


def test_uneven_chunks_sum():
    assert sum(UNEVEN) == N_STEPS


@pytest.fixture(scope="module")
def packed_qwen(qwen):
    return PackedModels.pack([qwen])


@pytest.mark.parametrize("offset", [0, 7])
def test_kernel_determinism_and_seeds(packed_qwen, offset):
    n_dep = 6
    syn = _synthetic_inputs(n_dep, N_STEPS, 10)
    uids = np.arange(n_dep) * 8
    a, ta, _ = _run(packed_qwen, np.zeros(n_dep), uids, 42, [N_STEPS], synthetic=syn,
                    offset=offset)
    b, tb, _ = _run(packed_qwen, np.zeros(n_dep), uids, 42, [N_STEPS], synthetic=syn,
                    offset=offset)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(ta, a.astype(np.int64))  # one deployment per target
    c, _, _ = _run(packed_qwen, np.zeros(n_dep), uids, 43, [N_STEPS], synthetic=syn,
                   offset=offset)
    assert (a != c).mean() > 0.5   # another seed: (almost) every sample differs
    # power is physical: inside the model's clamp range
    lo, hi = packed_qwen.tables.clamp_w[0]
    assert a.min() >= lo * 1000 - 1 and a.max() <= hi * 1000 + 1


@pytest.mark.parametrize("offset", [0, 7])
def test_kernel_chunking_invariance_synthetic(packed_qwen, offset):
    n_dep = 5
    syn = _synthetic_inputs(n_dep, N_STEPS, 10, seed=1)
    uids = np.arange(n_dep) * 8 + 16
    one, t1, b1 = _run(packed_qwen, np.zeros(n_dep), uids, 9, [N_STEPS], synthetic=syn,
                       offset=offset)
    many, t2, b2 = _run(packed_qwen, np.zeros(n_dep), uids, 9, UNEVEN, synthetic=syn,
                        offset=offset)
    assert one.dtype == np.int32 and t1.dtype == np.int64
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(t1, t2)
    _assert_same_stats(b1, b2)
    assert b1.stats[:, S_ARRIVED].sum() > 100  # the test exercised real traffic


def test_kernel_chunking_invariance_replay(packed_qwen):
    n_dep = 4
    rep = _replay_csr(n_dep, N_STEPS, seed=2)
    uids = np.arange(n_dep) * 8
    one, t1, b1 = _run(packed_qwen, np.zeros(n_dep), uids, 5, [N_STEPS], replay=rep)
    many, t2, b2 = _run(packed_qwen, np.zeros(n_dep), uids, 5, UNEVEN, replay=rep)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(t1, t2)
    _assert_same_stats(b1, b2)


def test_kernel_targets_sum_deployments(packed_qwen):
    """Deployments sharing a target are summed into it exactly (integer milliwatts)."""
    n_dep = 6
    syn = _synthetic_inputs(n_dep, 400, 10, seed=4)
    uids = np.arange(n_dep) * 8
    batch = DeploymentBatch(packed_qwen, np.zeros(n_dep), uids, [0, 0, 1, 1, 1, 2], 3)
    tgt = np.zeros((3, 400), np.int64)
    dep = np.zeros((n_dep, 400), np.int32)
    batch.advance(0, 400, tgt, synthetic=_syn_chunk(*syn, 10, 0, 400), deployment_mw=dep)
    groups = np.array([0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(tgt, sum_groups(dep.astype(np.int64), groups))


@pytest.mark.parametrize("mode", ["synthetic", "replay"])
def test_kernel_deployment_subset_invariance(library, mode):
    """A deployment's trace does not depend on which other deployments share the batch, on its
    position in it, or on which other models are packed with its own."""
    qwen, gemma = library[QWEN], library[GEMMA]
    n_dep = 5
    uids = np.array([0, 8, 16, 24, 40])
    syn = _synthetic_inputs(n_dep, 800, 10, seed=6)
    rep = _replay_csr(n_dep, 800, seed=6)
    kw = {"synthetic": syn} if mode == "synthetic" else {"replay": rep}
    full, _, _ = _run(PackedModels.pack([qwen]), np.zeros(n_dep), uids, 21, [800], **kw)
    for rows in ([2], [3, 2], [4, 0, 2]):
        rows = np.array(rows)
        kw = ({"synthetic": (syn[0][rows], syn[1][rows])} if mode == "synthetic"
              else {"replay": _replay_rows(rep, rows)})
        sub, _, _ = _run(PackedModels.pack([qwen]), np.zeros(rows.size), uids[rows], 21, [800],
                         **kw)
        np.testing.assert_array_equal(sub, full[rows])
    # packed together with another model (gemma first, so qwen's index and K padding change)
    rows = np.array([1, 2])
    kw = ({"synthetic": (syn[0][rows], syn[1][rows])} if mode == "synthetic"
          else {"replay": _replay_rows(rep, rows)})
    mixed, _, _ = _run(PackedModels.pack([gemma, qwen]), np.array([1, 1]), uids[rows], 21, [800],
                       **kw)
    np.testing.assert_array_equal(mixed, full[rows])


def test_kernel_replay_serves_each_deployment_its_own_requests(packed_qwen):
    """Regression: the replay pointer of deployment d starts at ``replay.offsets[d]``. Starting
    at 0, deployment d would walk the requests of deployments 0..d-1 before its own, so every
    deployment but the first would serve the requests of all deployments before it."""
    n_dep = 4
    rep = _replay_csr(n_dep, 800, seed=8)
    _, _, batch = _run(packed_qwen, np.zeros(n_dep), np.arange(n_dep) * 8, 1, [800], replay=rep)
    own = np.diff(rep.offsets)
    np.testing.assert_array_equal(batch.stats[:, S_ARRIVED], own)


def test_kernel_replay_workload_matches_serving_model(qwen, packed_qwen):
    """The kernel's serving model is the one of replay_workload: same running count per step
    (single-deployment batch, so the workload is computed independently of the kernel's
    request bookkeeping), and every request arrives."""
    rep = _replay_csr(1, 1600, seed=12, rate=3.0)
    _, _, batch = _run(packed_qwen, [0], [0], 4, [1600], replay=rep)
    f = replay_workload(rep.arrival_s, rep.input_tokens, rep.output_tokens, qwen.serving, 1600,
                        cached_tokens=rep.cached_tokens)
    assert batch.stats[0, S_RUNNING_SUM] == f[:, F_RUNNING].sum()
    assert batch.stats[0, S_ARRIVED] == rep.arrival_s.size


def test_no_requests_means_idle_power(qwen):
    """With no requests every step is idle: the power is the model's idle floor plus the idle
    state's centred spread, so its mean over 16 seeds x 2000 steps is idle_w to within 4
    standard errors: the spread's sd over the square root of the effective sample size of an
    AR(1) with the idle state's phi, n (1 - phi) / (1 + phi)."""
    p = np.concatenate([replay_power(qwen, np.zeros(0), np.zeros(0, int), np.zeros(0, int),
                                     2000, seed=s) for s in range(16)])
    q = qwen.spread.quantiles_w[0]
    sd = np.std(np.interp(np.linspace(0, 1, 10001), np.linspace(0, 1, q.size), q))
    phi = qwen.spread.phi[0]
    n_eff = p.size * (1 - phi) / (1 + phi)
    assert p.mean() == pytest.approx(qwen.idle_w, abs=4 * sd / np.sqrt(n_eff) + 1e-3)


# =============================================================================================
# statistics of the generated power against the model it samples


def _with_spread(model, quantiles_w, phi):
    """``model`` with every state's residual quantiles and AR(1) coefficient replaced."""
    from dataclasses import replace

    from distgen.model.power import N_STATES, Spread
    q = np.broadcast_to(np.asarray(quantiles_w, float), (N_STATES, len(quantiles_w))).copy()
    return replace(model, spread=Spread(q, np.full(N_STATES, phi), np.zeros(N_STATES, int),
                                        np.arange(N_STATES), np.zeros(N_STATES)),
                   clamp_w=(0.0, 10.0 * model.tdp_w))


def _idle_run(model, n_dep=64, n_steps=1500, seed=3):
    """Power [W] of deployments with no traffic: every step is the idle state, at the level
    ``idle_w``, so the power minus idle is the state's residual process itself."""
    batch = DeploymentBatch(PackedModels.pack([model]), np.zeros(n_dep), np.arange(n_dep) * 8,
                            np.arange(n_dep), seed)
    dep = np.zeros((n_dep, n_steps), np.int32)
    syn = SyntheticArrivals(np.zeros(n_dep), np.ones((n_dep, 2), np.float32), 0, n_steps + 1,
                            gamma_gap_quantiles(1.0))
    batch.advance(0, n_steps, np.zeros((n_dep, n_steps), np.int64), synthetic=syn,
                  deployment_mw=dep)
    return dep / 1000.0 - model.idle_w


def test_within_state_marginal_follows_the_state_quantiles(qwen):
    """A skewed residual distribution (exponential, mean 0: a right tail of spikes) sampled by
    the kernel (phi = 0: independent draws) matches its quantile table: KS distance below the
    5% critical value 1.36 / sqrt(n) (n = 96,000 draws, 0.0044) plus the table's own
    resolution (65 quantiles interpolated linearly, and the latent grid of 0.05: about 0.002).
    A distribution reflected about its mean (-R) fails by far: its KS distance to this one is
    0.26. (Flipping the latent's sign, R(Phi(-z)), gives the same process in distribution: z and
    its AR(1) are symmetric, so that is not a bug.)
    The kernel centres each table (its mean under the latent grid is exactly 0), so the
    reference is the table's own distribution moved by the table's mean (the trapezoid mean of
    the quantile function, 0.2 W here: the upper clip at 1 - 1e-4 shortens the tail)."""
    from scipy import stats
    p = np.linspace(0, 1, 65)
    expo = stats.expon(loc=-10.0, scale=10.0)            # mean 0
    table = expo.ppf(np.clip(p, 1e-4, 1 - 1e-4))
    table_mean = float(np.sum(0.5 * (table[1:] + table[:-1]) * np.diff(p)))
    x = _idle_run(_with_spread(qwen, table, 0.0)).ravel()
    ref = stats.expon(loc=-10.0 - table_mean, scale=10.0).cdf
    assert stats.kstest(x, ref).statistic < 0.0044 + 0.004
    assert abs(x.mean()) < 4 * 10.0 / np.sqrt(x.size)   # centred: the spread moves no energy
    assert stats.kstest(-x - 20.0, ref).statistic > 0.2


def test_lag1_autocorrelation_follows_phi(qwen):
    """With Gaussian residual quantiles (sd 5 W) the residual is 5 z, and the latent z is an
    AR(1) with coefficient phi while the state holds: the lag-1 autocorrelation of the power
    estimates phi. 64 series of 1500 steps: the estimator's sd is about
    sqrt((1 - phi^2) / 96000) = 0.002; tolerance 0.02 (table interpolation)."""
    from scipy import stats
    table = stats.norm(scale=5.0).ppf(np.clip(np.linspace(0, 1, 65), 1e-4, 1 - 1e-4))
    for phi in (0.0, 0.5, 0.9):
        x = _idle_run(_with_spread(qwen, table, phi))
        x = x - x.mean(axis=1, keepdims=True)
        r1 = (x[:, 1:] * x[:, :-1]).sum() / (x * x).sum()
        assert r1 == pytest.approx(phi, abs=0.02)


def test_mean_power_follows_the_level(qwen):
    """The kernel's power is the level of the work (idle + activity powers x shares, through
    the sensor kernel) plus a centred spread: over 16 seeds of a 20-minute replay, the mean
    generated power equals the mean level computed independently from replay_workload's work
    and distgen.model.power (the spread's mean is zero; clamping moves it by < 0.3%)."""
    from distgen.model.power import activity_shares, level_w
    rep = _replay_csr(1, 4800, seed=21, rate=1.5)
    f = replay_workload(rep.arrival_s, rep.input_tokens, rep.output_tokens, qwen.serving, 4800,
                        cached_tokens=rep.cached_tokens)
    level = level_w(activity_shares(f, qwen.serving, DT), qwen.power)
    gen = np.mean([replay_power(qwen, rep.arrival_s, rep.input_tokens, rep.output_tokens, 4800,
                                seed=s, cached_tokens=rep.cached_tokens).mean()
                   for s in range(16)])
    assert gen == pytest.approx(level.mean(), rel=0.003)
    assert level.mean() > qwen.idle_w + 50  # the replay kept the GPU busy


# =============================================================================================
# resampling


@settings(max_examples=60, deadline=None)
@given(factor=st.integers(1, 13), n_series=st.integers(1, 3),
       cuts=st.lists(st.integers(0, 40), min_size=1, max_size=8),
       seed=st.integers(0, 2 ** 31 - 1))
def test_block_summer_streaming_equals_one_shot(factor, n_series, cuts, seed):
    rng = np.random.default_rng(seed)
    total = sum(cuts)
    data = rng.integers(0, 10 ** 9, (n_series, total), dtype=np.int64)
    summer = BlockSummer(n_series, factor)
    out, i = [], 0
    for n in cuts:
        out.append(summer.push(data[:, i:i + n]))
        i += n
    streamed = np.concatenate(out, axis=1)
    n_blocks = total // factor
    expected = data[:, :n_blocks * factor].reshape(n_series, n_blocks, factor).sum(axis=2)
    assert streamed.dtype == np.int64
    np.testing.assert_array_equal(streamed, expected)
    assert summer.pending_steps == total - n_blocks * factor
    # coarsening block sums again equals summing at the coarser factor directly
    if n_blocks >= 2:
        np.testing.assert_array_equal(coarsen_sums(expected, 2),
                                      data[:, :(n_blocks // 2) * 2 * factor]
                                      .reshape(n_series, n_blocks // 2, 2 * factor).sum(axis=2))


@pytest.mark.parametrize("factor", [1, 4, 240, 3600])
def test_block_means_preserve_energy(factor):
    rng = np.random.default_rng(factor)
    n = factor * 7
    base_mw = rng.integers(50_000, 3_000_000, (3, n), dtype=np.int64)
    sums = BlockSummer(3, factor).push(base_mw)
    means_w = block_means_w(sums, factor)
    # energy [J] at the base step (0.25 s) and at the coarse step (factor * 0.25 s)
    e_base = base_mw.sum(axis=1) / MW_PER_W * DT
    e_coarse = means_w.sum(axis=1) * factor * DT
    np.testing.assert_allclose(e_coarse, e_base, rtol=1e-12)
    # sum of means x factor == sum of base values / 1000 (per mW unit), exactly for integers
    np.testing.assert_array_equal(np.rint(means_w * factor * MW_PER_W).astype(np.int64).sum(1),
                                  base_mw.sum(1))


def test_block_summer_rejects_bad_factor():
    with pytest.raises(ValueError):
        BlockSummer(1, 0)


# =============================================================================================
# reduction


def test_sum_groups_hand_case():
    children = np.array([[1, 2], [10, 20], [100, 200], [1000, 2000], [5, 5]], np.int64)
    groups = np.array([0, 0, 3, 3, 7])          # contiguous, ascending, ids need not be dense
    np.testing.assert_array_equal(sum_groups(children, groups),
                                  [[11, 22], [1100, 2200], [5, 5]])
    # one group, one child
    np.testing.assert_array_equal(sum_groups(children[:1], np.array([4])), [[1, 2]])


def test_non_gpu_constant_when_activity_weight_zero():
    gpu = np.array([[0, 123_456_789]], np.int64)
    out = non_gpu_mw(gpu, np.array([400.0]), np.array([3200.0]), 1000.0, 0.0)
    np.testing.assert_array_equal(out, [[1_000_000, 1_000_000]])
    assert out.dtype == np.int64


def test_non_gpu_activity_hand_case():
    # server GPUs: idle 8 x 80 W = 640 W, TDP 8 x 400 W = 3200 W; span 2560 W
    idle, tdp = np.array([640.0, 640.0]), np.array([3200.0, 3200.0])
    gpu_w = np.array([[640.0, 1920.0, 3200.0, 100.0, 5000.0],
                      [0.0, 640.0 + 256.0, 640.0 + 2560.0 * 0.75, 3200.0, 3199.0]])
    gpu = np.rint(gpu_w * MW_PER_W).astype(np.int64)
    out = non_gpu_mw(gpu, idle, tdp, 800.0, 400.0)
    expected_activity = np.array([[0.0, 0.5, 1.0, 0.0, 1.0],     # below idle / above TDP clip
                                  [0.0, 0.1, 0.75, 1.0, 2559 / 2560]])
    np.testing.assert_array_equal(out, np.rint((800.0 + 400.0 * expected_activity) * MW_PER_W)
                                  .astype(np.int64))
    assert out[0, 1] == 1_000_000   # 800 + 400 * 0.5 W
