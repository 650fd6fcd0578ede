"""The fleet kernel's typed seam: named records of arrays, one per role.

The compiled kernel takes these records instead of dozens of positional arrays, so two arrays of
the same shape cannot be swapped silently, and adding an input touches one record. Numba
compiles NamedTuples of arrays and scalars as plain structs (no overhead); the GPU kernel takes
the same fields.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from distgen.workload.serving import ServingState


class Chunk(NamedTuple):
    """Which steps one kernel call advances: global steps ``[step0, step0 + n_steps)``.

    ``mode`` is :data:`MODE_SYNTHETIC` or :data:`MODE_REPLAY`; statistics count requests
    arriving at, and steps from, ``count_from_step`` on (the warm-up is not counted).
    """

    step0: int
    n_steps: int
    interval_s: float
    mode: int
    count_from_step: int


MODE_SYNTHETIC = 0
MODE_REPLAY = 1


class ModelTables(NamedTuple):
    """Power models packed into padded arrays, indexed by model number m (see PackedModels).

    table_cum : (M, K, cells, K) stay-first cumulative transition probabilities.
    n_states : (M,) int32 states per model.
    power_of_z : (M, K, Z) [W] state power at the latent normal grid ``z_min + i / z_inv_step``.
    phi, innovation : (M, K) latent AR(1) coefficient and sqrt(1 - phi^2).
    clamp_w : (M, 2) [W] generated power bounds.
    serving : (M, 5) ServingParams.as_array().
    iterations_per_s : (M, seq capacity + 1) [1/s] iteration rate by decoding requests.
    tok_in, tok_out : (M, Q) [tokens] token-length quantiles at linspace(0, 1, Q).
    running_bin : (seq capacity + 2,) int64 running-bin index of each running count.
    prefill_th : (P,) [tokens] prefill-window thresholds of the transition cells.
    """

    table_cum: np.ndarray
    n_states: np.ndarray
    power_of_z: np.ndarray
    z_min: float
    z_inv_step: float
    phi: np.ndarray
    innovation: np.ndarray
    clamp_w: np.ndarray
    serving: np.ndarray
    iterations_per_s: np.ndarray
    tok_in: np.ndarray
    tok_out: np.ndarray
    running_bin: np.ndarray
    prefill_th: np.ndarray
    n_prefill_bins: int


class Deployments(NamedTuple):
    """Per deployment (D,): random-number keys, model number and target row of its power."""

    state_key: np.ndarray   # uint64, state and power draws
    request_key: np.ndarray  # uint64, arrival and token-length draws
    model: np.ndarray       # int32 index into ModelTables
    target: np.ndarray      # int64 row of Outputs.target_mw


class SyntheticInputs(NamedTuple):
    """Synthetic arrivals of one chunk (see deployments.SyntheticArrivals for the meaning)."""

    base_rps: np.ndarray     # (D,) [req/s]
    rate_mult: np.ndarray    # (D, n_intervals) float32
    rate_k0: int
    steps_per_interval: int
    step_offset: int
    gamma_q: np.ndarray      # mean-1 gamma gap quantiles, empty for Poisson


class ReplayInputs(NamedTuple):
    """Replayed requests per deployment as CSR rows: ``offsets`` (D+1,)."""

    offsets: np.ndarray
    step: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray


class CarriedState(NamedTuple):
    """Everything a deployment carries from one chunk to the next (updated in place)."""

    serving: ServingState
    chain_state: np.ndarray   # int64 (D,) power state
    latent_z: np.ndarray      # float64 (D,) latent AR(1) value
    running_prev: np.ndarray  # float64 (D,) running requests of the previous step
    pending: np.ndarray       # float64 (D, N_FEATURES) workload of the look-ahead step
    have_pending: np.ndarray  # bool (D,) the look-ahead step has been computed
    op_time: np.ndarray       # float64 (D,) operational time of the arrival process
    next_arrival: np.ndarray  # float64 (D,) operational time of the next arrival
    n_arrived: np.ndarray     # int64 (D,) arrivals drawn so far (request counter)
    replay_ptr: np.ndarray    # int64 (D,) next replayed request of the deployment's CSR row


class Outputs(NamedTuple):
    """What a kernel call writes.

    target_mw : int64 (n_targets, n_steps) [mW] power added per target row (its server).
    deployment_mw : int32 (D, n_steps) [mW] per-deployment power, or shape (0, 0) when not kept.
    stats : float64 (D, N_STATS) accumulated workload statistics (columns S_*).
    """

    target_mw: np.ndarray
    deployment_mw: np.ndarray
    stats: np.ndarray


#: Columns of ``Outputs.stats``.
S_ARRIVED, S_RUNNING_SUM, S_PREFILL_TOKENS, S_DECODE_TOKENS = range(4)
N_STATS = 4
