"""A batch of deployments with its carried state, advanced chunk by chunk through the kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincinv, ndtr

from distgen.core.grid import INTERVAL_S
from distgen.core.rng import KIND_DEPLOYMENT, KIND_REQUEST, entity_key
from distgen.engine.hostkernel import cpu_kernel
from distgen.engine.records import (MODE_REPLAY, MODE_SYNTHETIC, N_STATS, CarriedState, Chunk,
                                    Deployments, ModelTables, Outputs, ReplayInputs,
                                    SyntheticInputs)
from distgen.model.artifact import PowerModel
from distgen.model.power import BUSY_EDGES, PREFILL_EDGES
from distgen.workload.serving import ServingState

GAMMA_TABLE_SIZE = 4097
#: Latent normal grid of the state residual tables (the kernel interpolates linearly on it).
Z_MIN, Z_STEP = -4.5, 0.05
Z_GRID = Z_MIN + Z_STEP * np.arange(181)
TOKEN_TABLE_SIZE = 1025
DEFAULT_QUEUE_CAPACITY = 2048


@dataclass(frozen=True)
class PackedModels:
    """Power models packed into the kernel's :class:`ModelTables` (index = position in ``ids``).
    """

    ids: tuple[str, ...]
    tables: ModelTables

    @classmethod
    def pack(cls, models: list[PowerModel]) -> "PackedModels":
        residual = np.stack([_residual_of_z(m.spread.quantiles_w) + m.spread.offset_w[:, None]
                             for m in models])
        phi = np.stack([m.spread.phi for m in models])
        tables = ModelTables(
            serving=np.stack([np.array(m.serving.rates(), np.float64) for m in models]),
            idle_w=np.array([m.power.idle_w for m in models], np.float64),
            d_w=np.array([m.power.d_w for m in models], np.float64),
            sensor=np.array([m.power.sensor for m in models], np.float64),
            busy_edges=np.asarray(BUSY_EDGES, np.float64),
            prefill_edges=np.asarray(PREFILL_EDGES, np.float64),
            residual_of_z=residual, z_min=Z_MIN, z_inv_step=1.0 / Z_STEP,
            phi=phi, innovation=np.sqrt(1.0 - phi ** 2),
            clamp_w=np.array([m.clamp_w for m in models], np.float64),
            power_limit=np.array([[m.power.limit_w, m.power.limit_budget_j] for m in models],
                                 np.float64),
            tok_in=np.stack([_fine_quantiles(m.tokens.input_tokens) for m in models]),
            tok_out=np.stack([_fine_quantiles(m.tokens.output_tokens) for m in models]),
            envelope_max=np.stack([m.envelope.as_array() for m in models]))
        return cls(ids=tuple(m.config_id for m in models), tables=tables)

    def seq_capacity(self) -> int:
        return int(self.tables.serving[:, 6].max())


def _residual_of_z(quantiles_w: np.ndarray) -> np.ndarray:
    """(S, Z) residual [W] = R_s(Phi(z)) on Z_GRID, from (S, n) quantiles at linspace(0, 1, n),
    each row shifted so that the kernel's residual (linear interpolation on the grid, z a
    standard normal clipped to the grid) has mean exactly zero: the spread never moves the
    energy, whatever the shape of the quantile table."""
    p = np.linspace(0.0, 1.0, quantiles_w.shape[1])
    table = np.stack([np.interp(ndtr(Z_GRID), p, q) for q in quantiles_w])
    return table - (table @ _grid_weights())[:, None]


def _grid_weights() -> np.ndarray:
    """Weights w with E[r(z)] = sum_i w_i r_i for r linear between the grid nodes and z
    standard normal clipped to the grid (fine quadrature; the weights sum to 1)."""
    z = np.linspace(Z_GRID[0] - 4.0, Z_GRID[-1] + 4.0, 200001)
    density = np.exp(-0.5 * z * z)
    density /= density.sum()
    pos = np.clip((z - Z_MIN) / Z_STEP, 0.0, Z_GRID.size - 1.000001)
    i = pos.astype(np.int64)
    frac = pos - i
    w = np.bincount(i, density * (1.0 - frac), Z_GRID.size)
    return w + np.bincount(i + 1, density * frac, Z_GRID.size)


def _fine_quantiles(quantiles: np.ndarray) -> np.ndarray:
    """Resample a token quantile table to TOKEN_TABLE_SIZE points, interpolating in log space
    (token lengths span orders of magnitude), so the kernel can interpolate linearly."""
    q = np.log(np.maximum(np.asarray(quantiles, np.float64), 1.0))
    p = np.linspace(0.0, 1.0, q.size)
    return np.exp(np.interp(np.linspace(0.0, 1.0, TOKEN_TABLE_SIZE), p, q))


def gamma_gap_quantiles(burstiness: float) -> np.ndarray:
    """Quantile table of a mean-1 gamma gap with shape ``burstiness`` (empty for Poisson)."""
    if burstiness == 1.0:
        return np.zeros(0)
    p = np.linspace(0.0, 1.0, GAMMA_TABLE_SIZE)
    p[0], p[-1] = 0.5 / GAMMA_TABLE_SIZE, 1.0 - 0.5 / GAMMA_TABLE_SIZE
    return gammaincinv(burstiness, p) / burstiness


@dataclass(frozen=True)
class SyntheticArrivals:
    """Inputs of the synthetic arrival process for one chunk.

    ``rate_mult`` (D, n_intervals) multiplies ``base_rps`` (D,) [req/s]; column ``i`` is
    modulation interval ``rate_k0 + i`` of ``steps_per_interval`` steps each. Kernel step k uses
    interval ``max(k - step_offset, 0) // steps_per_interval`` (steps before ``step_offset`` are
    warm-up and use interval 0); the columns must cover every interval of the chunk's steps.
    ``input_tokens`` / ``output_tokens`` fix every request's lengths (0: the model's fitted
    distribution); ``cached_share`` of each prompt is served from the prefix cache.
    """

    base_rps: np.ndarray
    rate_mult: np.ndarray
    rate_k0: int
    steps_per_interval: int
    gamma_q: np.ndarray
    step_offset: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_share: float = 0.0


@dataclass(frozen=True)
class ReplayArrivals:
    """Requests per deployment as CSR: ``offsets`` (D+1,), arrival time [s, kernel clock],
    prompt, cached and output tokens."""

    offsets: np.ndarray
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    cached_tokens: np.ndarray
    output_tokens: np.ndarray

    @classmethod
    def single(cls, arrival_s, input_tokens, output_tokens,
               cached_tokens=None) -> "ReplayArrivals":
        arrival_s = np.asarray(arrival_s, np.float64)
        order = np.argsort(arrival_s, kind="stable")
        cached = (np.zeros(arrival_s.size, np.int32) if cached_tokens is None
                  else np.asarray(cached_tokens, np.int32)[order])
        return cls(np.array([0, arrival_s.size], np.int64), arrival_s[order],
                   np.asarray(input_tokens, np.int32)[order], cached,
                   np.asarray(output_tokens, np.int32)[order])


class DeploymentBatch:
    """Deployments advanced together; carries serving queues, power state and the sensor's
    memory of the last steps.

    Parameters
    ----------
    models : packed power models.
    model_index : (D,) which packed model each deployment uses.
    deployment_uid : (D,) stable ids (key the random numbers).
    target_index : (D,) row of the target array each deployment's power is added to.
    seed : run seed.
    kernel : the kernel implementation, a function with :func:`~distgen.engine.kernel.
        fleet_kernel`'s signature (default: :func:`~distgen.engine.hostkernel.cpu_kernel`, the
        Numba kernel or the C build of the GPU kernel's source, which give the same bits).
    """

    def __init__(self, models: PackedModels, model_index, deployment_uid, target_index, seed: int,
                 *, queue_capacity: int = DEFAULT_QUEUE_CAPACITY, interval_s: float = INTERVAL_S,
                 kernel=None):
        uid = np.asarray(deployment_uid, np.int64)
        n = uid.shape[0]
        self.models = models
        self.kernel = kernel or cpu_kernel()
        self.interval_s = float(interval_s)
        self.deployments = Deployments(
            state_key=entity_key(seed, KIND_DEPLOYMENT, uid),
            request_key=entity_key(seed, KIND_REQUEST, uid),
            model=np.asarray(model_index, np.int32),
            target=np.asarray(target_index, np.int64))
        self.state = CarriedState(
            serving=ServingState.empty(n, models.seq_capacity(), queue_capacity),
            state=np.full(n, -1, np.int64), latent_z=np.zeros(n), over_limit_j=np.zeros(n),
            shares_prev=np.zeros((n, 2, 4)), op_time=np.zeros(n),
            next_arrival=np.full(n, -1.0), n_arrived=np.zeros(n, np.int64),
            replay_ptr=np.zeros(n, np.int64))
        self.stats = np.zeros((n, N_STATS))
        self._replay_started = False
        self._no_synthetic = SyntheticInputs(np.zeros(n), np.zeros((1, 1), np.float32), 0, 1, 0,
                                             np.zeros(0), 0, 0, 0.0)
        empty_i32 = np.zeros(1, np.int32)
        self._no_replay = ReplayInputs(np.zeros(n + 1, np.int64), np.zeros(1), empty_i32,
                                       empty_i32, empty_i32)

    @property
    def n_deployments(self) -> int:
        return int(self.deployments.state_key.shape[0])

    @property
    def serving_state(self) -> ServingState:
        return self.state.serving

    def advance(self, step0: int, n_steps: int, target_mw: np.ndarray, *,
                synthetic: SyntheticArrivals | None = None, replay: ReplayArrivals | None = None,
                deployment_mw: np.ndarray | None = None, count_from_step: int = 0) -> None:
        """Run steps ``[step0, step0 + n_steps)``.

        Adds each deployment's power [mW, integer] into its row of ``target_mw`` (int64,
        (n_targets, n_steps), C-contiguous) and, if given, stores it in ``deployment_mw`` (int32,
        (D, n_steps)). Statistics (``stats``, dropped requests) count only requests arriving
        at, and steps from, ``count_from_step`` on (warm-up steps are not counted).
        """
        if (synthetic is None) == (replay is None):
            raise ValueError("give exactly one of synthetic or replay arrivals")
        syn, rep = self._no_synthetic, self._no_replay
        if synthetic is not None:
            mode = MODE_SYNTHETIC
            syn = SyntheticInputs(np.asarray(synthetic.base_rps, np.float64),
                                  np.asarray(synthetic.rate_mult, np.float32),
                                  int(synthetic.rate_k0), int(synthetic.steps_per_interval),
                                  int(synthetic.step_offset),
                                  np.asarray(synthetic.gamma_q, np.float64),
                                  int(synthetic.input_tokens), int(synthetic.output_tokens),
                                  float(synthetic.cached_share))
        else:
            if not self._replay_started:  # each deployment reads its own CSR row
                self.state.replay_ptr[:] = replay.offsets[:-1]
                self._replay_started = True
            mode = MODE_REPLAY
            rep = ReplayInputs(replay.offsets, np.asarray(replay.arrival_s, np.float64),
                               replay.input_tokens, replay.cached_tokens, replay.output_tokens)
        if deployment_mw is None:
            deployment_mw = np.zeros((0, 0), np.int32)
        self.kernel(Chunk(int(step0), int(n_steps), self.interval_s, mode, int(count_from_step)),
                    self.deployments, self.models.tables, syn, rep, self.state,
                    Outputs(target_mw, deployment_mw, self.stats))


def replay_power(model: PowerModel, arrival_s, input_tokens, output_tokens, n_steps: int,
                 seed: int, deployment_uid: int = 0, cached_tokens=None) -> np.ndarray:
    """Generated power [W] of one deployment serving a given request stream.

    ``arrival_s`` [s] is relative to the start of the first step. This is the path validation
    uses to regenerate a measured run from its request log alone.
    """
    packed = PackedModels.pack([model])
    batch = DeploymentBatch(packed, [0], [deployment_uid], [0], seed,
                            queue_capacity=max(len(arrival_s), 16), interval_s=model.interval_s)
    out = np.zeros((1, n_steps), np.int64)
    batch.advance(0, n_steps, out,
                  replay=ReplayArrivals.single(arrival_s, input_tokens, output_tokens,
                                               cached_tokens))
    return out[0] / 1000.0
