"""Power states: a 1-D Gaussian mixture over measured power, each state's own distribution of
power, and per-state AR(1) persistence.

The mixture finds the states; within a state, power is drawn from that state's empirical
distribution through a Gaussian copula: a latent standard normal z follows the AR(1) while the
state holds (z_t = phi z_{t-1} + sqrt(1 - phi^2) eps) and is drawn fresh when the state changes,
and power = Q_s(Phi(z)) with Q_s the state's quantile function. For a Gaussian state this is
exactly the AR(1) of MODEL.md; for the skewed prefill-spike states it keeps generated values
where measured ones are (a wide Gaussian would spread them over the decode plateau).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

#: Variance floor [W^2]: keeps a component on a flat idle plateau from collapsing.
VARIANCE_FLOOR_W2 = 0.25


@dataclass(frozen=True)
class GaussianMixture1D:
    """Components sorted by mean.

    Attributes
    ----------
    mean_w : (K,) [W]; std_w : (K,) [W]; weight : (K,) summing to 1.
    log_likelihood : total log-likelihood of the data it was fitted on.
    n_samples : number of samples fitted.
    """

    mean_w: np.ndarray
    std_w: np.ndarray
    weight: np.ndarray
    log_likelihood: float
    n_samples: int

    @property
    def k(self) -> int:
        return int(self.mean_w.shape[0])

    @property
    def n_params(self) -> int:
        return 3 * self.k - 1

    @property
    def aic(self) -> float:
        return -2.0 * self.log_likelihood + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.log_likelihood + self.n_params * np.log(self.n_samples)

    def log_density_parts(self, power_w: np.ndarray) -> np.ndarray:
        """(n, K) log(weight_k * N(x | mean_k, std_k))."""
        x = np.asarray(power_w, np.float64)[:, None]
        var = self.std_w ** 2
        return (-0.5 * (x - self.mean_w) ** 2 / var - 0.5 * np.log(2 * np.pi * var)
                + np.log(self.weight))

    def assign(self, power_w: np.ndarray) -> np.ndarray:
        """Most probable component of each sample (int64)."""
        return np.argmax(self.log_density_parts(power_w), axis=1)


def fit_gmm_1d(power_w: np.ndarray, k: int, rng: np.random.Generator, *, restarts: int = 4,
               max_iter: int = 500, tol: float = 1e-7) -> GaussianMixture1D:
    """Fit a K-component 1-D Gaussian mixture by EM (best of several starts).

    The first start places means at evenly spaced quantiles; the others at random samples.
    Deterministic for a given ``rng`` state.
    """
    x = np.asarray(power_w, np.float64)
    n = x.shape[0]
    if n < 2 * k:
        raise ValueError(f"{n} samples are too few for {k} components")
    best = None
    for attempt in range(restarts):
        if attempt == 0:
            mean = np.quantile(x, (np.arange(k) + 0.5) / k)
        else:
            mean = np.sort(rng.choice(x, k, replace=False))
        var = np.full(k, max(np.var(x) / k ** 2, VARIANCE_FLOOR_W2))
        weight = np.full(k, 1.0 / k)
        previous = -np.inf
        for _ in range(max_iter):
            logp = (-0.5 * (x[:, None] - mean) ** 2 / var - 0.5 * np.log(2 * np.pi * var)
                    + np.log(weight))
            top = logp.max(axis=1, keepdims=True)
            log_norm = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
            resp = np.exp(logp - log_norm[:, None])
            ll = float(log_norm.sum())
            nk = resp.sum(axis=0) + 1e-12
            weight = nk / n
            mean = (resp * x[:, None]).sum(axis=0) / nk
            var = (resp * (x[:, None] - mean) ** 2).sum(axis=0) / nk + VARIANCE_FLOOR_W2
            if ll - previous < tol * abs(ll):
                break
            previous = ll
        if best is None or ll > best[0]:
            best = (ll, mean, var, weight)
    ll, mean, var, weight = best
    order = np.argsort(mean)
    return GaussianMixture1D(mean[order], np.sqrt(var[order]), weight[order] / weight.sum(),
                             ll, n)


def select_mixture(power_w: np.ndarray, k_candidates, rng: np.random.Generator,
                   criterion: str = "aic") -> tuple[GaussianMixture1D, dict[int, float]]:
    """Fit each candidate K and keep the lowest information criterion.

    AIC is the default: the states serve a generator scored on predictive fidelity, and BIC's
    heavier penalty merges the decode plateau and prefill spikes on runs of a few hundred
    samples. Returns the chosen mixture and {K: criterion value}.
    """
    scores, best = {}, None
    n = np.asarray(power_w).shape[0]
    for k in k_candidates:
        if n < 20 * k:  # at least ~20 samples per component
            break
        g = fit_gmm_1d(power_w, k, rng)
        scores[k] = float(getattr(g, criterion))
        if best is None or scores[k] < scores[best.k]:
            best = g
    if best is None:
        raise ValueError(f"{n} power samples are too few to fit power states")
    return best, scores


#: Probabilities at which each state's power quantiles are stored.
QUANTILE_POINTS = 65
#: Below this many samples a state's quantiles come from its Gaussian instead.
MIN_EMPIRICAL_SAMPLES = 10


def state_quantiles(power_w: np.ndarray, states: np.ndarray,
                    mixture: GaussianMixture1D) -> np.ndarray:
    """(K, QUANTILE_POINTS) [W] power quantiles of each state at ``linspace(0, 1, n)``."""
    p = np.linspace(0.0, 1.0, QUANTILE_POINTS)
    gauss = ndtri(np.clip(p, 1e-3, 1 - 1e-3))
    out = np.empty((mixture.k, p.size))
    for k in range(mixture.k):
        x = np.asarray(power_w)[states == k]
        if x.size >= MIN_EMPIRICAL_SAMPLES:
            out[k] = np.quantile(x, p)
        else:
            out[k] = mixture.mean_w[k] + mixture.std_w[k] * gauss
    return out


def latent_scores(power_w: np.ndarray, states: np.ndarray, k: int) -> np.ndarray:
    """Each sample's latent normal score within its state: Phi^-1((rank + 0.5) / n_state)."""
    z = np.zeros(np.asarray(power_w).shape[0])
    for s in range(k):
        idx = np.flatnonzero(states == s)
        if idx.size:
            ranks = np.argsort(np.argsort(np.asarray(power_w)[idx], kind="stable"), kind="stable")
            z[idx] = ndtri((ranks + 0.5) / idx.size)
    return z


def ar1_phi(power_w: np.ndarray, states: np.ndarray, mean_w: np.ndarray, *, min_run: int = 5,
            segments: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Per-state AR(1) coefficient from same-state runs of at least ``min_run`` samples.

    phi_s = sum (x_t - mu)(x_{t-1} - mu) / sum (x_{t-1} - mu)^2 over those runs, clipped to
    [0, 0.99]; 0 for a state without such runs. ``segments`` are [start, stop) index ranges that
    runs must not cross (different measured runs concatenated).
    """
    x = np.asarray(power_w, np.float64)
    s = np.asarray(states)
    k = mean_w.shape[0]
    num = np.zeros(k)
    den = np.zeros(k)
    for start, stop in segments or [(0, x.shape[0])]:
        seg_s = s[start:stop]
        if seg_s.size == 0:
            continue
        change = np.flatnonzero(np.diff(seg_s)) + 1
        bounds = np.r_[0, change, seg_s.size]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b - a < min_run:
                continue
            st = seg_s[a]
            y = x[start + a:start + b] - mean_w[st]
            num[st] += float(np.dot(y[1:], y[:-1]))
            den[st] += float(np.dot(y[:-1], y[:-1]))
    phi = np.divide(num, den, out=np.zeros(k), where=den > 0)
    return np.clip(phi, 0.0, 0.99)
