"""Workload-conditioned state transitions: a ridge-penalised multinomial-logistic model.

P(s_t = k | s_{t-1} = j, x_t) = softmax_k( c[w_t, k] + A[w_t, j, k] + x_t . B[:, k] )

where ``x_t`` encodes the work the serving model schedules around step t (cumulative threshold
indicators of the running requests and of the prefill tokens in steps t and t+1, and the sign of
the change in running requests) and ``w_t`` says whether there is any work at all. The ridge
penalty acts on A and B only: the intercepts c carry each context's state frequencies
unshrunk, so rare moves (a busy GPU dropping to idle) stay as rare as observed. Threshold
(not one-hot) indicators make extrapolation saturate: a running count above anything seen in
training gets the effect of the highest threshold that was seen. With no work in flight a GPU's
power can only hold or decay, so transitions to a higher state are forbidden there.

Every feature is discrete, so the model is sampled from a precomputed table T[j, cell, k] over
all feature cells: one uniform and at most K comparisons per deployment-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

RUNNING_THRESHOLDS = (1, 2, 3, 5, 8, 12, 18, 27, 40, 64, 96, 144, 216)
PREFILL_THRESHOLDS_TOKENS = (1, 256, 1024, 4096)
N_DELTA_BINS = 3  # running fell / unchanged / rose
LAMBDA_CANDIDATES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
_FORBIDDEN_LOGIT = -50.0


@dataclass(frozen=True)
class FeatureGrid:
    """How workload maps to a transition cell (stored in the artifact)."""

    running_thresholds: tuple[int, ...] = RUNNING_THRESHOLDS
    prefill_thresholds_tokens: tuple[int, ...] = PREFILL_THRESHOLDS_TOKENS

    @property
    def n_running_bins(self) -> int:
        return len(self.running_thresholds) + 1

    @property
    def n_prefill_bins(self) -> int:
        return len(self.prefill_thresholds_tokens) + 1

    @property
    def n_cells(self) -> int:
        return self.n_running_bins * self.n_prefill_bins * N_DELTA_BINS

    @property
    def n_features(self) -> int:
        return len(self.running_thresholds) + len(self.prefill_thresholds_tokens) + 2

    def cells(self, running: np.ndarray, prefill_tokens: np.ndarray) -> np.ndarray:
        """Cell index per step from per-step running requests and prefill tokens.

        The prefill feature of step t is the tokens of steps t and t+1 (a power sample can
        catch a prefill that the step model books one step later); the change feature is
        running_t - running_{t-1} (0 for the first step).
        """
        running = np.asarray(running, np.float64)
        prefill = np.asarray(prefill_tokens, np.float64)
        window = prefill + np.r_[prefill[1:], 0.0]
        delta = np.diff(running, prepend=running[:1])
        return self.cell_of(running, window, delta)

    def cell_of(self, running, prefill_window_tokens, delta_running):
        r = np.searchsorted(np.asarray(self.running_thresholds, np.float64), running, "right")
        p = np.searchsorted(np.asarray(self.prefill_thresholds_tokens, np.float64),
                            prefill_window_tokens, "right")
        d = np.sign(delta_running).astype(np.int64) + 1
        return (r * self.n_prefill_bins + p) * N_DELTA_BINS + d

    def cell_design(self) -> tuple[np.ndarray, np.ndarray]:
        """Feature vector x (n_cells, n_features) and has-work flag (n_cells,) of every cell."""
        n_r, n_p = len(self.running_thresholds), len(self.prefill_thresholds_tokens)
        x = np.zeros((self.n_cells, self.n_features))
        work = np.zeros(self.n_cells, np.int64)
        for r in range(self.n_running_bins):
            for p in range(self.n_prefill_bins):
                for d in range(N_DELTA_BINS):
                    c = (r * self.n_prefill_bins + p) * N_DELTA_BINS + d
                    x[c, :r] = 1.0
                    x[c, n_r:n_r + p] = 1.0
                    x[c, n_r + n_p] = d == 2
                    x[c, n_r + n_p + 1] = d == 0
                    work[c] = (r > 0) or (p > 0)
        return x, work


@dataclass(frozen=True)
class TransitionModel:
    """Fitted logits. ``intercepts`` (2, K) indexed [has_work, to]; ``prev_logits`` (2, K, K)
    indexed [has_work, from, to]; ``feature_logits`` (n_features, K)."""

    grid: FeatureGrid
    intercepts: np.ndarray
    prev_logits: np.ndarray
    feature_logits: np.ndarray
    ridge_lambda: float
    state_mean_w: np.ndarray  # to forbid rises without work

    def table(self) -> np.ndarray:
        """T[from, cell, to]: transition probabilities for every cell (float64, rows sum to 1)."""
        x, work = self.grid.cell_design()
        logits = (self.intercepts[work][:, None, :] + self.prev_logits[work]
                  + (x @ self.feature_logits)[:, None, :])
        logits = np.transpose(logits, (1, 0, 2)).copy()  # (K, cells, K)
        rise = self.state_mean_w[None, :] > self.state_mean_w[:, None]
        logits[:, work == 0, :] += np.where(rise, _FORBIDDEN_LOGIT, 0.0)[:, None, :]
        logits -= logits.max(axis=2, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=2, keepdims=True)


def _unpack(theta, k, n_features):
    c = theta[:2 * k].reshape(2, k)
    a = theta[2 * k:2 * k + 2 * k * k].reshape(2, k, k)
    b = theta[2 * k + 2 * k * k:].reshape(n_features, k)
    return c, a, b


def _objective(theta, k, n_features, prev, nxt, x, work, penalty, lam):
    c, a, b = _unpack(theta, k, n_features)
    logits = c[work] + a[work, prev] + x @ b + penalty
    top = logits.max(axis=1, keepdims=True)
    z = np.exp(logits - top)
    total = z.sum(axis=1, keepdims=True)
    rows = np.arange(prev.shape[0])
    nll = -(logits[rows, nxt] - top[:, 0] - np.log(total[:, 0])).sum()
    grad_logits = z / total
    grad_logits[rows, nxt] -= 1.0
    grad_c = np.zeros((2, k))
    np.add.at(grad_c, work, grad_logits)
    grad_a = np.zeros((2, k, k))
    np.add.at(grad_a, (work, prev), grad_logits)
    grad_b = x.T @ grad_logits
    penalised = theta.copy()
    penalised[:2 * k] = 0.0  # intercepts are not shrunk
    return (nll + 0.5 * lam * float(penalised @ penalised),
            np.concatenate([grad_c.ravel(), grad_a.ravel(), grad_b.ravel()]) + lam * penalised)


@dataclass(frozen=True)
class TransitionData:
    """Observed transitions: previous state, next state and the next step's cell."""

    prev: np.ndarray
    nxt: np.ndarray
    cell: np.ndarray

    def subset(self, mask) -> "TransitionData":
        return TransitionData(self.prev[mask], self.nxt[mask], self.cell[mask])


def _fit_logits(data: TransitionData, grid: FeatureGrid, mean_w: np.ndarray, lam: float):
    k = mean_w.shape[0]
    x_cells, work_cells = grid.cell_design()
    x = x_cells[data.cell]
    work = work_cells[data.cell]
    rise = mean_w[None, :] > mean_w[:, None]
    penalty = np.where((work == 0)[:, None], np.where(rise[data.prev], _FORBIDDEN_LOGIT, 0.0), 0.0)
    theta0 = np.zeros(2 * k + 2 * k * k + grid.n_features * k)
    # a context never seen keeps intercepts at 0; bound them so a state absent from a context
    # gets a small, finite probability rather than an unbounded logit
    bounds = [(-30.0, 30.0)] * (2 * k) + [(None, None)] * (theta0.size - 2 * k)
    res = minimize(_objective, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   args=(k, grid.n_features, data.prev, data.nxt, x, work, penalty, lam),
                   options={"maxiter": 5000})
    return _unpack(res.x, k, grid.n_features)


def _log_likelihood(model: TransitionModel, data: TransitionData) -> float:
    table = model.table()
    return float(np.log(table[data.prev, data.cell, data.nxt] + 1e-300).sum())


def _simulate_occupancy(table: np.ndarray, sequences, replicas: int, rng) -> np.ndarray:
    """Expected state counts per (design column, state) when the chain generates its own states
    along the training cell sequences."""
    k = table.shape[0]
    cum = np.cumsum(table, axis=2)
    return_counts = None
    for cells, first_state, design in sequences:
        n = cells.shape[0]
        s = np.full(replicas, first_state)
        counts = np.zeros((n, k))
        u = rng.random((n, replicas))
        for t in range(n):
            row = cum[s, cells[t]]                       # (replicas, K)
            s = np.minimum((u[t][:, None] > row).sum(axis=1), k - 1)
            counts[t] = np.bincount(s, minlength=k) / replicas
        contrib = design.T @ counts                      # (columns, K)
        return_counts = contrib if return_counts is None else return_counts + contrib
    return return_counts


def calibrate(model: TransitionModel, sequences, *, iterations: int = 12, replicas: int = 32,
              step: float = 1.0, seed: int = 0) -> TransitionModel:
    """Adjust the intercepts so that the chain, generating its own states along the training
    cell sequences, reproduces the observed state occupancy with and without work in flight.

    Maximum likelihood matches one-step predictions given the *measured* previous state; a
    generator feeds back its own states, and small per-step errors shift its occupancy (and so
    its energy) by a percent or more. This simulated moment matching removes that bias.
    ``sequences`` holds (cells, observed states, mask) per training window; steps outside the
    mask (workload the request log cannot explain) are simulated but not counted.
    """
    rng = np.random.default_rng(seed)
    _, work_cells = model.grid.cell_design()
    k = model.state_mean_w.shape[0]
    seqs, observed = [], 0.0
    for cells, states, mask in sequences:
        design = np.c_[(work_cells[cells] == 0), (work_cells[cells] == 1)]
        design = design * np.asarray(mask, np.float64)[:, None]
        seqs.append((cells, int(states[0]), design.astype(np.float64)))
        observed = observed + design.T @ np.eye(k)[states]
    intercepts = model.intercepts.copy()
    current = model
    for _ in range(iterations):
        simulated = _simulate_occupancy(current.table(), seqs, replicas, rng)
        intercepts += step * (np.log(observed + 1.0) - np.log(simulated + 1.0))
        current = TransitionModel(model.grid, intercepts.copy(), model.prev_logits,
                                  model.feature_logits, model.ridge_lambda, model.state_mean_w)
    return current


def fit_transitions(data: TransitionData, fold: np.ndarray, grid: FeatureGrid,
                    mean_w: np.ndarray, lambdas=LAMBDA_CANDIDATES) -> TransitionModel:
    """Fit the logits; choose the ridge strength by blocked cross-validation.

    ``fold`` assigns each transition to a contiguous time block (0..n_folds-1); each lambda is
    scored by the held-out log-likelihood of every block under a fit on the others.
    """
    folds = np.unique(fold)
    best_lam, best_ll = lambdas[0], -np.inf
    if folds.size > 1:
        for lam in lambdas:
            ll = 0.0
            for f in folds:
                c, a, b = _fit_logits(data.subset(fold != f), grid, mean_w, lam)
                ll += _log_likelihood(TransitionModel(grid, c, a, b, lam, mean_w),
                                      data.subset(fold == f))
            if ll > best_ll:
                best_lam, best_ll = lam, ll
    c, a, b = _fit_logits(data, grid, mean_w, best_lam)
    return TransitionModel(grid, c, a, b, float(best_lam), np.asarray(mean_w, np.float64))
