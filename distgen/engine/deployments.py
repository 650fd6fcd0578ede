"""A batch of deployments with its carried state, advanced chunk by chunk through the kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincinv, ndtr

from distgen.core.grid import INTERVAL_S
from distgen.core.rng import KIND_DEPLOYMENT, KIND_REQUEST, entity_key
from distgen.engine.kernel import fleet_kernel
from distgen.engine.records import (MODE_REPLAY, MODE_SYNTHETIC, N_STATS, CarriedState, Chunk,
                                    Deployments, ModelTables, Outputs, ReplayInputs,
                                    SyntheticInputs)
from distgen.model.artifact import PowerModel
from distgen.workload.serving import N_FEATURES, ServingState

GAMMA_TABLE_SIZE = 4097
#: Latent normal grid of the state power tables (the kernel interpolates linearly on it).
Z_MIN, Z_STEP = -4.5, 0.05
Z_GRID = Z_MIN + Z_STEP * np.arange(181)
TOKEN_TABLE_SIZE = 1025
DEFAULT_QUEUE_CAPACITY = 4096


@dataclass(frozen=True)
class PackedModels:
    """Power models packed into the kernel's :class:`ModelTables` (index = position in ``ids``).
    """

    ids: tuple[str, ...]
    tables: ModelTables

    @classmethod
    def pack(cls, models: list[PowerModel]) -> "PackedModels":
        grids = {m.transitions.grid for m in models}
        if len(grids) != 1:
            raise ValueError("models to run together must share one feature grid")
        grid = grids.pop()
        n_m = len(models)
        k = max(m.k for m in models)
        table = np.ones((n_m, k, grid.n_cells, k))
        power_of_z = np.zeros((n_m, k, Z_GRID.size))
        phi = np.zeros((n_m, k))
        tok_in = np.ones((n_m, TOKEN_TABLE_SIZE))
        tok_out = np.ones((n_m, TOKEN_TABLE_SIZE))
        for i, m in enumerate(models):
            km = m.k
            table[i, :km, :, :km] = _stay_first_cumulative(m.transition_table)
            power_of_z[i, :km] = _power_of_z(m.state_quantiles_w)
            phi[i, :km] = m.ar1_phi
            tok_in[i] = _fine_quantiles(m.tokens.input_tokens)
            tok_out[i] = _fine_quantiles(m.tokens.output_tokens)
        seq_capacity = int(max(m.serving.max_num_seqs for m in models))
        tables = ModelTables(
            table_cum=table, n_states=np.array([m.k for m in models], np.int32),
            power_of_z=power_of_z, z_min=Z_MIN, z_inv_step=1.0 / Z_STEP,
            phi=phi, innovation=np.sqrt(1.0 - phi ** 2),
            clamp_w=np.array([m.clamp_w for m in models], np.float64),
            serving=np.stack([m.serving.as_array() for m in models]),
            iterations_per_s=np.stack([m.serving.iterations_per_s(seq_capacity)
                                       for m in models]),
            tok_in=tok_in, tok_out=tok_out,
            running_bin=np.searchsorted(np.asarray(grid.running_thresholds),
                                        np.arange(seq_capacity + 2), "right").astype(np.int64),
            prefill_th=np.asarray(grid.prefill_thresholds_tokens, np.float64),
            n_prefill_bins=grid.n_prefill_bins)
        return cls(ids=tuple(m.config_id for m in models), tables=tables)

    def seq_capacity(self) -> int:
        return int(self.tables.serving[:, 4].max())


def _power_of_z(quantiles_w: np.ndarray) -> np.ndarray:
    """(K, Z) power [W] = Q_s(Phi(z)) on Z_GRID, from (K, n) quantiles at linspace(0, 1, n)."""
    p = np.linspace(0.0, 1.0, quantiles_w.shape[1])
    u = ndtr(Z_GRID)
    return np.stack([np.interp(u, p, q) for q in quantiles_w])


def _fine_quantiles(quantiles: np.ndarray) -> np.ndarray:
    """Resample a token quantile table to TOKEN_TABLE_SIZE points, interpolating in log space
    (token lengths span orders of magnitude), so the kernel can interpolate linearly."""
    q = np.log(np.maximum(np.asarray(quantiles, np.float64), 1.0))
    p = np.linspace(0.0, 1.0, q.size)
    return np.exp(np.interp(np.linspace(0.0, 1.0, TOKEN_TABLE_SIZE), p, q))


def _stay_first_cumulative(table: np.ndarray) -> np.ndarray:
    """Cumulative rows in the order [from-state, then the others ascending].

    Most steps keep their state, so the kernel's scan usually stops at the first comparison.
    """
    k = table.shape[0]
    out = np.empty_like(table)
    for s in range(k):
        order = [s] + [t for t in range(k) if t != s]
        out[s] = np.cumsum(table[s][:, order], axis=1)
    out[..., -1] = 1.0  # guard against rounding: a uniform < 1 always lands
    return out


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
    warm-up and use interval 0); the columns must cover every interval from that of ``step0`` to
    that of ``step0 + n_steps`` (one step of lookahead).
    """

    base_rps: np.ndarray
    rate_mult: np.ndarray
    rate_k0: int
    steps_per_interval: int
    gamma_q: np.ndarray
    step_offset: int = 0


@dataclass(frozen=True)
class ReplayArrivals:
    """Requests per deployment as CSR: ``offsets`` (D+1,), arrival step, input/output tokens."""

    offsets: np.ndarray
    step: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray

    @classmethod
    def single(cls, arrival_s, input_tokens, output_tokens, interval_s: float) -> "ReplayArrivals":
        order = np.argsort(arrival_s, kind="stable")
        step = np.maximum(np.floor(np.asarray(arrival_s)[order] / interval_s), 0).astype(np.int64)
        return cls(np.array([0, step.size], np.int64), step,
                   np.asarray(input_tokens, np.int32)[order],
                   np.asarray(output_tokens, np.int32)[order])


class DeploymentBatch:
    """Deployments advanced together; carries serving queues, chain state and power.

    Parameters
    ----------
    models : packed power models.
    model_index : (D,) which packed model each deployment uses.
    deployment_uid : (D,) stable ids (key the random numbers).
    target_index : (D,) row of the target array each deployment's power is added to.
    seed : run seed.
    """

    def __init__(self, models: PackedModels, model_index, deployment_uid, target_index, seed: int,
                 *, queue_capacity: int = DEFAULT_QUEUE_CAPACITY, interval_s: float = INTERVAL_S):
        uid = np.asarray(deployment_uid, np.int64)
        n = uid.shape[0]
        self.models = models
        self.interval_s = float(interval_s)
        self.deployments = Deployments(
            state_key=entity_key(seed, KIND_DEPLOYMENT, uid),
            request_key=entity_key(seed, KIND_REQUEST, uid),
            model=np.asarray(model_index, np.int32),
            target=np.asarray(target_index, np.int64))
        self.state = CarriedState(
            serving=ServingState.empty(n, models.seq_capacity(), queue_capacity),
            chain_state=np.zeros(n, np.int64), latent_z=np.zeros(n), running_prev=np.zeros(n),
            pending=np.zeros((n, N_FEATURES)), have_pending=np.zeros(n, np.bool_),
            op_time=np.zeros(n), next_arrival=np.zeros(n), n_arrived=np.zeros(n, np.int64),
            replay_ptr=np.zeros(n, np.int64))
        self.stats = np.zeros((n, N_STATS))
        self._replay_started = False
        self._no_synthetic = SyntheticInputs(np.zeros(n), np.zeros((1, 1), np.float32), 0, 1, 0,
                                             np.zeros(0))
        empty_i32 = np.zeros(1, np.int32)
        self._no_replay = ReplayInputs(np.zeros(n + 1, np.int64), np.zeros(1, np.int64),
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
                                  np.asarray(synthetic.gamma_q, np.float64))
        else:
            if not self._replay_started:  # each deployment reads its own CSR row
                self.state.replay_ptr[:] = replay.offsets[:-1]
                self._replay_started = True
            mode = MODE_REPLAY
            rep = ReplayInputs(replay.offsets, replay.step, replay.input_tokens,
                               replay.output_tokens)
        if deployment_mw is None:
            deployment_mw = np.zeros((0, 0), np.int32)
        fleet_kernel(Chunk(int(step0), int(n_steps), self.interval_s, mode, int(count_from_step)),
                     self.deployments, self.models.tables, syn, rep, self.state,
                     Outputs(target_mw, deployment_mw, self.stats))


def replay_power(model: PowerModel, arrival_s, input_tokens, output_tokens, n_steps: int,
                 seed: int, deployment_uid: int = 0) -> np.ndarray:
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
                                               model.interval_s))
    return out[0] / 1000.0
