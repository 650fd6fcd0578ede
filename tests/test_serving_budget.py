"""The serving model under token-budget pressure: a hand case (distgen.workload.serving).

An iteration schedules one token for every decoding request plus prompt tokens up to the
budget that is left, ``budget_tokens - n_decoding`` (vLLM's ``max_num_batched_tokens`` counts
decode tokens too), and takes ``step_base_s + decode_s_per_seq * n_decoding +
prefill_s_per_token * prompt_tokens`` seconds. The parameters are powers of two so that every
time below is exact in float64 and the expected values are exact:

* ``step_base_s = 2^-9 s`` (1.953 ms), ``decode_s_per_seq = 2^-13 s`` (0.122 ms),
  ``prefill_s_per_token = 2^-14 s`` (61 us), ``budget_tokens = 80``; steps of 0.25 s = 2^-2 s.
* With 16 requests decoding, an iteration costs 2^-9 + 16 x 2^-13 = 2^-8 s and leaves
  80 - 16 = 64 prompt tokens of budget.
"""

from __future__ import annotations

import numpy as np
import pytest

from distgen.workload.serving import (F_DECODE_TOKENS, F_ITERATIONS, F_PREFILL_TOKENS, F_RUNNING,
                                      ServingParams, replay_workload)

BASE_S, DECODE_S, PREFILL_S = 2.0 ** -9, 2.0 ** -13, 2.0 ** -14
PARAMS = ServingParams(BASE_S, PREFILL_S, DECODE_S, budget_tokens=80, max_num_seqs=32)
LONG_OUTPUT = 10_000    # tokens: nobody finishes within the case


@pytest.fixture(scope="module")
def steps() -> np.ndarray:
    """16 short requests (4-token prompts) at t = 0, one 4096-token prompt at t = 0.25 s."""
    arrival_s = np.array([0.0] * 16 + [0.25])
    prompt = np.array([4] * 16 + [4096])
    output = np.full(17, LONG_OUTPUT)
    return replay_workload(arrival_s, prompt, output, PARAMS, 4)


def test_first_step_prefill_then_decode(steps):
    """Step 0: the 16 prompts (64 tokens) fit the budget of 80 in one iteration of
    2^-9 + 64 x 2^-14 = 3 x 2^-9 s; the rest of the step, 2^-2 - 3 x 2^-9 s, holds
    (2^-2 - 3 x 2^-9) / 2^-8 = 62.5 decode iterations of 16 tokens each (the first token of
    each request comes with its prefill): 63.5 iterations, 64 prompt tokens, 1000 decode
    tokens."""
    assert steps[0, F_ITERATIONS] == 63.5
    assert steps[0, F_PREFILL_TOKENS] == 64
    assert steps[0, F_DECODE_TOKENS] == 1000.0
    assert steps[0, F_RUNNING] == 16


def test_decoding_requests_take_their_share_of_the_budget(steps):
    """Steps 1 and 2: the 4096-token prompt needs 4096 / (80 - 16) = 64 iterations (a budget
    that forgot the 16 decode tokens would need ceil(4096 / 80) = 52) and 64 x 2^-8 +
    4096 x 2^-14 = 0.25 + 0.25 = 0.5 s: half of it in each step, 32 iterations and 2048
    prompt tokens, while the 16 decoding requests make 16 x 32 = 512 tokens. The prompt
    completes exactly at the end of step 2, so no decode-only time is left in either step.
    (With the budget bug, step 1 would do 0.25 / (52 x 2^-8 + 0.25) of 52 iterations: 28.7
    iterations and 2259 prompt tokens.)"""
    for k in (1, 2):
        assert steps[k, F_ITERATIONS] == 32.0, k
        assert steps[k, F_PREFILL_TOKENS] == 2048, k
        assert steps[k, F_DECODE_TOKENS] == 512.0, k
        assert steps[k, F_RUNNING] == 17, k


def test_decode_only_step_runs_at_the_batch_iteration_time(steps):
    """Step 3: 17 requests decode; an iteration takes 2^-9 + 17 x 2^-13 = 33 x 2^-13 s, so
    the step holds 2^-2 / (33 x 2^-13) = 2048 / 33 = 62.06 iterations and 17 x 2048 / 33
    decode tokens."""
    assert steps[3, F_ITERATIONS] == pytest.approx(2048 / 33, rel=1e-12)
    assert steps[3, F_PREFILL_TOKENS] == 0
    assert steps[3, F_DECODE_TOKENS] == pytest.approx(17 * 2048 / 33, rel=1e-12)
