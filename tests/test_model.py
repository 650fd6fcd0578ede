"""Power-model fitting: mixture states, AR(1), transition logits, the end-to-end fit on the
measured fixtures, the JSON artifact and the model library."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from distgen.errors import InputError, ModelLibraryError
from distgen.model.artifact import ModelLibrary, PowerModel
from distgen.model.states import ar1_phi, fit_gmm_1d, select_mixture
from distgen.model.transitions import (FeatureGrid, TransitionData, TransitionModel,
                                       fit_transitions)

QWEN = "qwen3-8b_A100_tp1"


# =============================================================================================
# mixture states

TRUE_MEAN = np.array([80.0, 200.0, 350.0])
TRUE_STD = np.array([3.0, 15.0, 20.0])
TRUE_WEIGHT = np.array([0.3, 0.3, 0.4])


@pytest.fixture(scope="module")
def mixture_sample():
    """4500 samples of a well-separated 3-component mixture (idle / decode / prefill-like)."""
    rng = np.random.default_rng(0)
    counts = (TRUE_WEIGHT * 4500).astype(int)
    x = np.concatenate([rng.normal(m, s, c) for m, s, c in zip(TRUE_MEAN, TRUE_STD, counts)])
    return rng.permutation(x)


def test_gmm_recovers_known_mixture(mixture_sample):
    """Means within 2 W: their standard errors are std / sqrt(n_k) = 0.08, 0.41, 0.47 W, and
    the components overlap by < 1e-6, so 2 W is > 4 standard errors. Stds within 10% (standard
    error of a std ~ std / sqrt(2 n) < 2%), weights within 0.01 (exact counts 1350/1350/1800)."""
    g = fit_gmm_1d(mixture_sample, 3, np.random.default_rng(1))
    assert g.k == 3
    assert np.all(np.diff(g.mean_w) > 0)               # sorted by mean
    np.testing.assert_allclose(g.mean_w, TRUE_MEAN, atol=2.0)
    np.testing.assert_allclose(g.std_w, TRUE_STD, rtol=0.10)
    np.testing.assert_allclose(g.weight, TRUE_WEIGHT, atol=0.01)
    assert g.weight.sum() == pytest.approx(1.0)
    # assignment: every sample goes to the component it was drawn near
    assert np.all(g.assign(np.array([79.0, 81.0, 190.0, 215.0, 330.0, 380.0]))
                  == [0, 0, 1, 1, 2, 2])


def test_gmm_deterministic_for_a_given_rng(mixture_sample):
    a = fit_gmm_1d(mixture_sample, 3, np.random.default_rng(5))
    b = fit_gmm_1d(mixture_sample, 3, np.random.default_rng(5))
    np.testing.assert_array_equal(a.mean_w, b.mean_w)
    np.testing.assert_array_equal(a.std_w, b.std_w)


def test_select_mixture_picks_three_components(mixture_sample):
    """BIC must pick K = 3 on well-separated Gaussian components. The default criterion (AIC,
    chosen for predictive fidelity) must not under-fit: K >= 3, and any extra component adds
    less than 0.1% to the criterion (it may split a Gaussian at no cost)."""
    best, scores = select_mixture(mixture_sample, range(2, 6), np.random.default_rng(1),
                                  criterion="bic")
    assert best.k == 3, scores
    best, scores = select_mixture(mixture_sample, range(2, 6), np.random.default_rng(1))
    assert best.k >= 3
    assert scores[3] - scores[best.k] < 1e-3 * abs(scores[3])
    assert scores[2] - scores[3] > 1000        # two components are far worse


def test_select_mixture_refuses_too_few_samples():
    with pytest.raises(ValueError):
        select_mixture(np.arange(30.0), range(2, 5), np.random.default_rng(0))


# =============================================================================================
# AR(1)


def _ar1(rng, n, phi, mu, sigma):
    x = np.empty(n)
    x[0] = rng.normal(0.0, sigma)
    eps = rng.normal(0.0, sigma * np.sqrt(1 - phi ** 2), n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + eps[t]
    return mu + x


def test_ar1_phi_recovers_one_long_state():
    """phi = 0.8 over 6000 samples: the estimator's standard error is sqrt((1 - phi^2) / n) =
    0.008, tolerance 0.03 (> 3.5 standard errors)."""
    rng = np.random.default_rng(7)
    x = _ar1(rng, 6000, 0.8, 300.0, 10.0)
    phi = ar1_phi(x, np.zeros(x.size, np.int64), np.array([300.0]))
    assert phi[0] == pytest.approx(0.8, abs=0.03)


def test_ar1_phi_per_state_segments_and_short_runs():
    """Two states alternating in runs of 200 (phi 0.8 and 0.3, 20 runs each): per-state
    estimates within 0.05 (standard errors ~0.011 and ~0.016; per-run start-up adds a small
    downward bias). A third state seen only in runs shorter than min_run gets phi = 0."""
    rng = np.random.default_rng(8)
    xs, ss = [], []
    for i in range(40):
        state = i % 2
        phi, mu = (0.8, 100.0) if state == 0 else (0.3, 300.0)
        xs.append(_ar1(rng, 200, phi, mu, 8.0))
        ss.append(np.full(200, state))
        xs.append(np.array([500.0, 510.0, 490.0]))   # 3-sample runs of state 2
        ss.append(np.full(3, 2))
    x, s = np.concatenate(xs), np.concatenate(ss)
    phi = ar1_phi(x, s, np.array([100.0, 300.0, 500.0]))
    assert phi[0] == pytest.approx(0.8, abs=0.05)
    assert phi[1] == pytest.approx(0.3, abs=0.05)
    assert phi[2] == 0.0
    # clipped into [0, 0.99]: an alternating (negatively correlated) state gives 0
    alt = np.tile([290.0, 310.0], 100)
    assert ar1_phi(alt, np.zeros(alt.size, np.int64), np.array([300.0]))[0] == 0.0


# =============================================================================================
# transitions

K = 3
STATE_MEAN = np.array([80.0, 200.0, 350.0])


def _true_transition_model(grid: FeatureGrid) -> TransitionModel:
    """Three states (idle, decode, prefill); work raises the top state's odds with running
    requests, prefill tokens and a rising running count; a falling count favours idle."""
    n_r, n_p = len(grid.running_thresholds), len(grid.prefill_thresholds_tokens)
    intercepts = np.array([[2.0, -1.0, -2.0],      # no work
                           [-1.0, 0.5, 0.5]])      # work
    prev = np.stack([np.eye(K) * 2.5, np.eye(K) * 2.5])
    feat = np.zeros((grid.n_features, K))
    feat[:n_r, 2] = 0.15
    feat[n_r:n_r + n_p, 2] = 0.6
    feat[n_r + n_p, 2] = 0.5       # running rose
    feat[n_r + n_p + 1, 0] = 0.4   # running fell
    return TransitionModel(grid, intercepts, prev, feat, 0.0, STATE_MEAN)


def test_transition_fit_recovers_known_logit_model():
    """15000 transitions of a known logit chain on a random sequence of 24 cells (running bins
    0/1/4/8 x prefill bins 0/2 x the 3 delta bins; 3 of them without work).

    Tolerance: on (from, cell) pairs visited >= 100 times the total-variation distance between
    fitted and true rows stays < 0.1 (a row estimated from 100 draws alone has expected TV
    ~0.05; the parametric fit pools cells, but the ridge shrinks the rarely used from-state
    logits), and the visit-weighted mean TV < 0.02 (measured 0.004-0.01)."""
    grid = FeatureGrid()
    true = _true_transition_model(grid)
    table = true.table()
    rng = np.random.default_rng(0)
    cand = np.array([(r * grid.n_prefill_bins + p) * 3 + d
                     for r in (0, 1, 4, 8) for p in (0, 2) for d in range(3)])
    n = 15000
    cells = rng.choice(cand, n)
    s = np.zeros(n + 1, np.int64)
    u = rng.random(n)
    cum = np.cumsum(table, axis=2)
    for k in range(n):
        s[k + 1] = min(np.searchsorted(cum[s[k], cells[k]], u[k], "right"), K - 1)
    data = TransitionData(s[:-1], s[1:], cells)
    fold = np.minimum(np.arange(n) * 2 // n, 1)
    fit = fit_transitions(data, fold, grid, STATE_MEAN, lambdas=(0.3, 3.0))
    assert fit.ridge_lambda in (0.3, 3.0)
    fitted = fit.table()
    assert fitted.shape == table.shape == (K, grid.n_cells, K)
    np.testing.assert_allclose(fitted.sum(axis=2), 1.0, atol=1e-12)

    visits = np.zeros((K, grid.n_cells))
    np.add.at(visits, (s[:-1], cells), 1)
    tv = 0.5 * np.abs(fitted - table).sum(axis=2)
    well = visits >= 100
    assert well.sum() >= 30
    assert tv[well].max() < 0.1
    assert (tv * visits).sum() / visits.sum() < 0.02

    # no work in flight: the fitted model never rises to a higher-power state
    _, work = grid.cell_design()
    rise = STATE_MEAN[None, :] > STATE_MEAN[:, None]          # [from, to]
    no_work = fitted[:, work == 0, :]                         # (K, cells, K)
    assert no_work[np.broadcast_to(rise[:, None, :], no_work.shape)].max() < 1e-15


def test_feature_grid_cells_hand_case():
    grid = FeatureGrid(running_thresholds=(1, 4), prefill_thresholds_tokens=(1, 100))
    running = np.array([0, 1, 5, 5, 2])
    prefill = np.array([0, 50, 0, 200, 0])
    cells = grid.cells(running, prefill)
    # running bins 0,1,2,2,1; prefill windows (t, t+1): 50, 50, 200, 200, 0 -> bins 1,1,2,2,0;
    # delta: 0 (first), +, +, 0, -
    r = np.array([0, 1, 2, 2, 1])
    p = np.array([1, 1, 2, 2, 0])
    d = np.array([1, 2, 2, 1, 0])
    np.testing.assert_array_equal(cells, (r * grid.n_prefill_bins + p) * 3 + d)
    assert grid.n_cells == 3 * 3 * 3


# =============================================================================================
# end-to-end fit on the measured fixtures


@pytest.fixture(scope="module")
def qwen_runs(measured_dir):
    from distgen.ingest import read_runs
    runs = sorted((r for r in read_runs(measured_dir) if r.config_id == QWEN),
                  key=lambda r: r.run_id)
    assert len(runs) == 2
    return runs


@pytest.fixture(scope="module")
def qwen_fit(qwen_runs):
    from distgen.model.fit import fit_power_model
    return fit_power_model([(r, 0, r.n_steps) for r in qwen_runs], seed=0)


def _without_fit_time(d: dict) -> dict:
    d = copy.deepcopy(d)
    d["provenance"].pop("fitted_at")
    return d


def test_fit_is_deterministic(qwen_runs):
    """Two fits with the same seed give the same artifact (up to its time stamp). On the first
    150 steps of each run to keep the test fast: the whole pipeline (serving fit, mixture,
    transitions and their calibration) runs all the same."""
    from distgen.model.fit import fit_power_model
    windows = [(r, 0, 150) for r in qwen_runs]
    a = fit_power_model(windows, seed=0)
    b = fit_power_model(windows, seed=0)
    assert _without_fit_time(a.to_dict()) == _without_fit_time(b.to_dict())
    assert a.provenance["n_samples"] == 300


def test_fit_provenance_and_shape(qwen_runs, qwen_fit):
    m = qwen_fit
    assert m.config_id == QWEN and m.tp == 1 and m.gpu.upper() == "A100"
    assert [r["run_id"] for r in m.provenance["runs"]] == [r.run_id for r in qwen_runs]
    assert m.provenance["n_samples"] == sum(r.n_steps for r in qwen_runs)
    assert 2 <= m.k <= 10
    assert np.all(np.diff(m.states.mean_w) > 0)
    assert np.all((m.ar1_phi >= 0) & (m.ar1_phi <= 0.99))
    lo, hi = m.clamp_w
    power = np.concatenate([r.power_w for r in qwen_runs])
    assert lo <= power.min() and hi >= power.max()
    assert m.tdp_w == 400.0                       # A100 datasheet x TP1


def test_energy_account_is_physical(qwen_fit):
    """idle 50-150 W for one A100 (nvidia-smi idle of these runs is 82-88 W, PROVENANCE); energy
    per prefill and per decode token positive and below 1 J."""
    ea = qwen_fit.energy_account
    assert 50.0 < ea["idle_w"] < 150.0
    assert 0.0 < ea["j_per_prefill_token"] < 1.0
    assert 0.0 < ea["j_per_decode_token"] < 1.0
    assert ea["r2"] > 0.5


def test_artifact_json_round_trip(qwen_fit, tmp_path):
    """to_dict -> JSON -> from_dict: the dict is reproduced exactly; the transition table equals
    the in-memory one up to the logits' rounding to 6 decimals at save (<= 1e-5 in probability)
    and is bit-identical from the second round trip on."""
    d = json.loads(json.dumps(qwen_fit.to_dict()))
    loaded = PowerModel.from_dict(d)
    assert json.loads(json.dumps(loaded.to_dict())) == d
    np.testing.assert_allclose(loaded.transition_table, qwen_fit.transition_table, atol=1e-5)
    again = PowerModel.from_dict(json.loads(json.dumps(loaded.to_dict())))
    np.testing.assert_array_equal(again.transition_table, loaded.transition_table)
    np.testing.assert_array_equal(again.states.mean_w, qwen_fit.states.mean_w)
    np.testing.assert_array_equal(again.ar1_phi, qwen_fit.ar1_phi)
    # through a file
    path = qwen_fit.save(tmp_path)
    assert path.name == f"{QWEN}.json"
    from_file = PowerModel.load(path)
    assert from_file.to_dict() == loaded.to_dict()
    lib = ModelLibrary.load(tmp_path)
    assert list(lib.models) == [QWEN]
    np.testing.assert_array_equal(lib[QWEN].transition_table, loaded.transition_table)


def _write(tmp_path: Path, name: str, doc) -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(format="something.else"), "not a distgen power model"),
    (lambda d: d.update(format_version=99), "format_version"),
    (lambda d: d["transitions"].update(prev_logits=[[[0.0]]]), "transition logits"),
    (lambda d: d["transitions"].update(intercepts=[[0.0, 1.0]]), "transition logits"),
    (lambda d: d.pop("serving"), "malformed"),
    (lambda d: d["states"].update(mean_w="abc"), "malformed"),
])
def test_bad_artifact_raises_input_error_naming_file(qwen_fit, tmp_path, mutate, words):
    d = json.loads(json.dumps(qwen_fit.to_dict()))
    mutate(d)
    path = _write(tmp_path, "bad.json", d)
    with pytest.raises(InputError) as exc:
        PowerModel.load(path)
    assert str(path) in str(exc.value)
    assert words in str(exc.value)


def test_artifact_not_json_or_missing(tmp_path):
    path = _write(tmp_path, "broken.json", "{\n  \"format\": \n")
    with pytest.raises(InputError) as exc:
        PowerModel.load(path)
    assert str(path) in str(exc.value) and "invalid JSON" in str(exc.value)
    with pytest.raises(InputError) as exc:
        PowerModel.load(tmp_path / "nope.json")
    assert "nope.json" in str(exc.value)


# =============================================================================================
# model library


def test_library_unknown_config_lists_available():
    lib = ModelLibrary.load()
    assert QWEN in lib
    with pytest.raises(ModelLibraryError) as exc:
        lib["llama-9000_Z100_tp3"]
    msg = str(exc.value)
    assert "llama-9000_Z100_tp3" in msg
    for cid in lib.models:
        assert cid in msg


def test_library_folder_errors(tmp_path):
    with pytest.raises(ModelLibraryError):
        ModelLibrary.load(tmp_path / "missing")
    with pytest.raises(ModelLibraryError):
        ModelLibrary.load(tmp_path)                 # exists, no *.json


def test_library_version_is_content_hash(tmp_path):
    src = Path(ModelLibrary.load().source)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    data = (src / f"{QWEN}.json").read_bytes()
    (tmp_path / "a" / f"{QWEN}.json").write_bytes(data)
    (tmp_path / "b" / f"{QWEN}.json").write_bytes(data)
    va, vb = ModelLibrary.load(tmp_path / "a").version, ModelLibrary.load(tmp_path / "b").version
    assert va == vb
    d = json.loads(data)
    d["tdp_w"] = d["tdp_w"] + 1.0
    (tmp_path / "b" / f"{QWEN}.json").write_text(json.dumps(d))
    assert ModelLibrary.load(tmp_path / "b").version != va
