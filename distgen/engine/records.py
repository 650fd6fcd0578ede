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

    serving : (M, 7) ServingRates fields per model (base, prefill, decode, context, attention
        [s per unit], budget [tokens], max_num_seqs).
    idle_w : (M,) [W] deployment power with no work.
    d_w : (M, 4) [W] power above idle per activity (model.power.ACTIVITIES).
    sensor : (M, 2) sensor kernel weights (h1, h2).
    busy_edges, prefill_edges : state-cell edges (model.power.BUSY_EDGES / PREFILL_EDGES).
    residual_of_z : (M, N_STATES, Z) [W] state residual at the latent normal grid
        ``z_min + i / z_inv_step``.
    phi, innovation : (M, N_STATES) latent AR(1) coefficient and sqrt(1 - phi^2).
    clamp_w : (M, 2) [W] generated power bounds.
    power_limit : (M, 2) the sustained power limit [W] (model.power.sustained_limit_w) and the
        energy [J] above it a burst may use before the limiter holds the level at the limit.
    tok_in, tok_out : (M, Q) [tokens] token-length quantiles at linspace(0, 1, Q).
    envelope_max : (M, N_ENVELOPE) largest work seen in training (ENV_* columns).
    """

    serving: np.ndarray
    idle_w: np.ndarray
    d_w: np.ndarray
    sensor: np.ndarray
    busy_edges: np.ndarray
    prefill_edges: np.ndarray
    residual_of_z: np.ndarray
    z_min: float
    z_inv_step: float
    phi: np.ndarray
    innovation: np.ndarray
    clamp_w: np.ndarray
    power_limit: np.ndarray
    tok_in: np.ndarray
    tok_out: np.ndarray
    envelope_max: np.ndarray


#: Columns of ``ModelTables.envelope_max``: running requests, mean decode batch, prompt tokens
#: computed per step, context tokens per decoding request.
ENV_RUNNING, ENV_DECODE_BATCH, ENV_PREFILL_TOKENS, ENV_CONTEXT_PER_SEQ = range(4)
N_ENVELOPE = 4


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
    input_tokens: int        # every request's prompt tokens, or 0: the model's distribution
    output_tokens: int       # every request's output tokens, or 0: the model's distribution
    cached_share: float      # share of each prompt served from the prefix cache


class ReplayInputs(NamedTuple):
    """Replayed requests per deployment as CSR rows: ``offsets`` (D+1,); arrival times [s]
    on the kernel's clock (step k starts at ``k * interval_s``)."""

    offsets: np.ndarray
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    cached_tokens: np.ndarray
    output_tokens: np.ndarray


class CarriedState(NamedTuple):
    """Everything a deployment carries from one chunk to the next (updated in place)."""

    serving: ServingState
    state: np.ndarray         # int64 (D,) power state of the last step (-1 before the first)
    latent_z: np.ndarray      # float64 (D,) latent AR(1) value
    over_limit_j: np.ndarray  # float64 (D,) [J] energy spent above the power limit (bucket)
    shares_prev: np.ndarray   # float64 (D, 2, 4) activity shares of the two previous steps
    op_time: np.ndarray       # float64 (D,) operational time of the arrival process
    next_arrival: np.ndarray  # float64 (D,) operational time of the next arrival (-1: none yet)
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


#: Columns of ``Outputs.stats``: requests arrived, running-request steps, prompt tokens
#: computed, tokens generated, busy seconds, steps outside the model's operating envelope.
(S_ARRIVED, S_RUNNING_SUM, S_PREFILL_TOKENS, S_DECODE_TOKENS, S_BUSY_S,
 S_OUTSIDE_ENVELOPE) = range(6)
N_STATS = 6
