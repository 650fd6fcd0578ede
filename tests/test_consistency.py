"""Physical consistency of every bundled model, from the library alone (MODEL.md section 2 and
issue #11): isolated requests, mean power against the energy account on traffic unlike the
training runs, monotone and bounded in the request rate, a serving model that drains.

Each check's definition and tolerance is in distgen/analysis/consistency.py; this file runs
them on every configuration of the bundled library and pins what they must show.
"""

from __future__ import annotations

import pytest

from distgen.analysis.consistency import (ACCOUNT_TOLERANCE, PANEL, account_panel, drains,
                                          isolated_request, rate_sweep)
from distgen.model.artifact import ModelLibrary

LIBRARY = ModelLibrary.load()
CONFIGS = sorted(LIBRARY.models)


@pytest.mark.parametrize("config_id", CONFIGS)
def test_isolated_request_is_physical(config_id):
    """A 400/8-token request alone: energy above idle within its busy time x (TDP x TP - idle)
    plus half a step, and within 0.5-2 x the energy account (the generated spread is centred,
    so the two agree to the clamp's effect: here within 20 %)."""
    r = isolated_request(LIBRARY[config_id])
    assert 0 < r["energy_above_idle_j"] <= r["bound_j"], r
    assert 0.8 <= r["ratio_to_account"] <= 1.25, r


@pytest.mark.parametrize("config_id", CONFIGS)
def test_mean_power_follows_the_account_on_unlike_traffic(config_id):
    points = account_panel(LIBRARY[config_id], duration_s=300.0, n_deployments=4)
    assert len(points) == 2 * len(PANEL)
    for p in points:
        assert abs(p.ratio - 1.0) <= ACCOUNT_TOLERANCE, p


@pytest.mark.parametrize("config_id", CONFIGS)
def test_mean_power_monotone_and_bounded_in_rate(config_id):
    model = LIBRARY[config_id]
    r = rate_sweep(model, duration_s=150.0)
    assert r["monotone"] and r["bounded"], r
    assert r["mean_w"][0] < r["mean_w"][-1]          # more traffic, more power
    assert r["mean_w"][0] >= 0.98 * model.idle_w


@pytest.mark.parametrize("config_id", CONFIGS)
def test_serving_model_drains_long_prompts(config_id):
    r = drains(LIBRARY[config_id])
    assert r["ok"] and r["max_prompt_tokens"] > 8000, r
