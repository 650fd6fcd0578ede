"""The shard contract: plan a run, generate one shard, persist its partial aggregates.

Plain functions, no Ray: ``distributed/`` wraps :func:`run_shard` in tasks and the local driver
calls it in a loop. A shard is a contiguous rack range; it streams through time in chunks,
carrying every deployment's state, and keeps only integer-milliwatt block sums of its servers,
racks and (partial) rows at the output resolutions, so memory is O(deployments + chunk) and the
result does not depend on how the fleet was cut.

Contract for later consumers (GPU backend, planner analyses): a committed shard is a set of
int64 ``(n_blocks, n_entities)`` arrays named ``<level>_<factor>`` (block sums in mW over
``factor`` steps of 0.25 s) plus a JSON summary; :mod:`distgen.assembly` turns them into the
output files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property, reduce
from typing import Callable, Iterator

import numpy as np

from distgen.backend import make_device, resolve_backend
from distgen.config.schema import RunConfig
from distgen.config.validate import expand_row_serving, start_hour_of_day, validate
from distgen.core.grid import INTERVAL_S, steps_of
from distgen.engine.deployments import (DeploymentBatch, PackedModels, ReplayArrivals,
                                        SyntheticArrivals, gamma_gap_quantiles)
from distgen.engine.gpukernel import DeviceDeploymentBatch, NVRTC_OPTIONS, SOURCE
from distgen.engine.records import (S_ARRIVED, S_BUSY_S, S_DECODE_TOKENS, S_OUTSIDE_ENVELOPE,
                                    S_PREFILL_TOKENS, S_RUNNING_SUM)
from distgen.engine.reduce import non_gpu_mw, sum_groups
from distgen.engine.resample import BlockSummer
from distgen.inputs import RunInputs, run_inputs
from distgen.model.artifact import ModelLibrary
from distgen.results import ShardSummary, WorkloadSummary
from distgen.topology import Shard, Topology, plan_shards
from distgen.workload.rates import rate_multipliers, rate_state_init

#: Chunk steps are capped so that one chunk's (servers x steps) int64 array stays near this
#: (on a GPU: ``device.chunk_elements``, longer launches).
CHUNK_ELEMENTS = 1 << 22

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class RunPlan:
    """A validated run: topology, shards, time grid and which streams each shard persists.

    ``site_factor`` is the resolution (in steps) at which shards persist partial row sums for
    the site: the greatest common divisor of the site resolutions, so each of them is a whole
    number of feed blocks. ``level_factors`` holds the resolution of every entity level that is
    written.
    """

    config: RunConfig
    topology: Topology
    shards: tuple[Shard, ...]
    n_steps: int
    site_factors: tuple[int, ...]
    site_factor: int
    level_factors: dict[str, int] = field(default_factory=dict)
    library_version: str = ""
    inputs: RunInputs | None = None

    @property
    def stream_names(self) -> list[str]:
        names = {f"rows_{self.site_factor}"}
        names.update(f"{lvl}_{f}" for lvl, f in self.level_factors.items())
        return sorted(names)

    @cached_property
    def n_deployments(self) -> int:
        return self.topology.n_deployments

    @property
    def deployment_steps(self) -> int:
        return self.n_deployments * self.n_steps


def plan_run(config: RunConfig, library: ModelLibrary) -> RunPlan:
    """Validate ``config`` against the model library and lay out topology, shards and streams."""
    validate(config, known_serving=library.tp_by_config)
    resolve_backend(config.backend, remote_gpus=config.ray.num_gpus_per_task > 0)
    row_serving = expand_row_serving(config)
    f = config.facility
    topology = Topology(f.rows, f.racks_per_row, f.servers_per_rack, f.gpus_per_server,
                        row_serving, tuple(library[c].tp for c in row_serving))
    out = config.output
    site_factors = tuple(steps_of(r) for r in out.site_resolutions_s)
    levels = {"rows": out.rows_resolution_s, "racks": out.racks_resolution_s,
              "servers": out.servers_resolution_s, "deployments": out.deployments_resolution_s}
    return RunPlan(
        config=config, topology=topology, shards=tuple(plan_shards(topology, config.shards)),
        n_steps=steps_of(config.duration_s), site_factors=site_factors,
        site_factor=reduce(math.gcd, site_factors),
        level_factors={lvl: steps_of(r) for lvl, r in levels.items() if r is not None},
        library_version=library.version, inputs=run_inputs(config, library, row_serving))


@dataclass(frozen=True)
class ShardChunk:
    """One time chunk of a shard at 0.25 s: int64 milliwatts, (entities, steps).

    ``rows`` covers only the racks of the shard (a row cut by a shard boundary is partial).
    """

    step0: int
    servers: np.ndarray
    racks: np.ndarray
    rows: np.ndarray
    deployments: np.ndarray | None

    @property
    def n_steps(self) -> int:
        return int(self.servers.shape[1])


class ShardGenerator:
    """Iterates over the time chunks of one shard (see :class:`ShardChunk`).

    After the iteration, :meth:`workload` describes the shard's work. ``device`` runs the
    kernel and the reductions on a GPU (:func:`distgen.backend.make_device`; default: the
    config's ``backend`` where this runs); the chunks' arrays then live on the device
    (``xp``, ``to_host``).
    """

    def __init__(self, plan: RunPlan, shard: Shard, library: ModelLibrary,
                 replay_requests: "ReplayRequests | None" = None, device=None):
        cfg = plan.config
        t = plan.topology
        self.plan = plan
        self.shard = shard
        self.fleet = fleet = t.fleet(shard.rack_start, shard.rack_stop)
        if device is None:
            backend = resolve_backend(cfg.backend)
            device = make_device(backend, SOURCE.read_text(), NVRTC_OPTIONS)
        self.device = device
        self.xp = np if device is None else device.xp
        self.to_host = np.asarray if device is None else device.to_host
        configs = sorted({t.row_serving[r] for r in np.unique(fleet.deployment_row)})
        models = [library[c] for c in configs]
        row_model = np.array([configs.index(c) if c in configs else -1 for c in t.row_serving],
                             np.int32)
        model_index = row_model[fleet.deployment_row]
        n_srv = fleet.n_servers
        self.want_deployments = "deployments" in plan.level_factors
        self.chunk_steps = max(16, min(steps_of(cfg.chunk_s),
                                       (CHUNK_ELEMENTS if device is None
                                        else device.chunk_elements) // max(n_srv, 1),
                                       plan.n_steps))
        if device is None:
            self.batch = DeploymentBatch(PackedModels.pack(models), model_index,
                                         fleet.deployment_uid, fleet.deployment_server_index,
                                         cfg.seed, interval_s=INTERVAL_S)
        else:
            # chunk buffers beside the state: servers and two temporaries of its size, racks
            # and rows, per-deployment power when kept
            reserve = self.chunk_steps * (4 * 8 * n_srv + (4 * fleet.n_deployments
                                                           if self.want_deployments else 0))
            self.batch = DeviceDeploymentBatch(PackedModels.pack(models), model_index,
                                               fleet.deployment_uid,
                                               fleet.deployment_server_index, cfg.seed,
                                               device=device, interval_s=INTERVAL_S,
                                               reserve_bytes=reserve)
        dep_idle = np.array([m.idle_w for m in models])[model_index]
        dep_tdp = np.array([m.tdp_w for m in models])[model_index]
        self.server_idle_w = self.xp.asarray(
            np.bincount(fleet.deployment_server_index, dep_idle, n_srv))
        self.server_tdp_w = self.xp.asarray(
            np.bincount(fleet.deployment_server_index, dep_tdp, n_srv))
        self.server_rack = fleet.server_uid // t.servers_per_rack
        self.rack_row = fleet.rack_uid // t.racks_per_row
        traffic = cfg.traffic
        self.warmup_steps = steps_of(cfg.warmup_s)
        self.replay = None
        if traffic.mode == "replay":
            self.replay = replay_requests.for_shard(t, shard, self.warmup_steps)
        else:
            self.base_rps = np.full(fleet.n_deployments, traffic.site_rate_rps / t.n_deployments)
            self.gamma_q = gamma_gap_quantiles(traffic.burstiness if traffic.arrivals == "gamma"
                                               else 1.0)
            self.steps_per_interval = steps_of(traffic.modulation.interval_s)
            self.rate_state = rate_state_init(fleet)
            self.start_hour = start_hour_of_day(cfg)
            self._rate_cache: tuple[int, np.ndarray] | None = None

    def _rate_columns(self, k_lo: int, k_hi: int) -> np.ndarray:
        """Rate multipliers for modulation intervals k_lo..k_hi (consecutive calls overlap by
        at most one interval, the lookahead step's)."""
        cols = []
        k = k_lo
        if self._rate_cache is not None and self._rate_cache[0] == k_lo:
            cols.append(self._rate_cache[1])
            k += 1
        if k <= k_hi:
            mult, self.rate_state = rate_multipliers(self.plan.config.traffic, self.fleet,
                                                     self.plan.config.seed, self.rate_state, k,
                                                     k_hi - k + 1, self.start_hour)
            cols.append(mult)
        out = np.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
        self._rate_cache = (k_hi, out[:, -1:].copy())
        return out

    def _advance(self, step0: int, n: int, servers: np.ndarray, deployments) -> None:
        """Kernel steps [step0, step0 + n); kernel step = warm-up steps + output step."""
        w = self.warmup_steps
        if self.replay is not None:
            self.batch.advance(step0, n, servers, replay=self.replay, deployment_mw=deployments,
                               count_from_step=w)
            return
        spi = self.steps_per_interval
        k_lo, k_hi = max(step0 - w, 0) // spi, max(step0 + n - w, 0) // spi
        tr = self.plan.config.traffic
        arrivals = SyntheticArrivals(self.base_rps, self._rate_columns(k_lo, k_hi), k_lo, spi,
                                     self.gamma_q, w, tr.input_tokens or 0,
                                     tr.output_tokens or 0, tr.prefix_cache_hit_share)
        self.batch.advance(step0, n, servers, synthetic=arrivals, deployment_mw=deployments,
                           count_from_step=w)

    def __iter__(self) -> Iterator[ShardChunk]:
        cfg = self.plan.config
        non_gpu = cfg.facility.non_gpu
        w = self.warmup_steps
        xp = self.xp
        for step0 in range(0, w, self.chunk_steps):  # warm-up: run, keep nothing
            n = min(self.chunk_steps, w - step0)
            self._advance(step0, n, xp.zeros((self.fleet.n_servers, n), np.int64), None)
        for out0 in range(0, self.plan.n_steps, self.chunk_steps):
            n = min(self.chunk_steps, self.plan.n_steps - out0)
            servers = xp.zeros((self.fleet.n_servers, n), np.int64)
            deployments = (xp.zeros((self.fleet.n_deployments, n), np.int32)
                           if self.want_deployments else None)
            self._advance(w + out0, n, servers, deployments)
            servers += non_gpu_mw(servers, self.server_idle_w, self.server_tdp_w,
                                  non_gpu.idle_w, non_gpu.activity_w, xp=xp)
            racks = sum_groups(servers, self.server_rack, xp=xp)
            rows = sum_groups(racks, self.rack_row, xp=xp)
            yield ShardChunk(out0, servers, racks, rows, deployments)

    def workload(self, deployments: np.ndarray | None = None) -> WorkloadSummary:
        """The work of the shard's deployments (or of the index array ``deployments``) in the
        output period (call after iterating). Totals are sums of whole numbers per deployment
        (tokens, ms), so they are exact for any cut of the fleet."""
        b = self.batch
        sel = slice(None) if deployments is None else deployments
        st, sv = b.stats[sel], b.serving_state
        whole = lambda col, scale=1.0: int(np.rint(st[:, col] * scale).sum())  # noqa: E731
        return WorkloadSummary(
            deployment_steps=int(st.shape[0]) * self.plan.n_steps,
            requests_arrived=whole(S_ARRIVED),
            requests_dropped=int(sv.dropped[sel].sum()),
            requests_waiting_at_end=int(sv.wait_n[sel].sum()),
            running_request_steps=whole(S_RUNNING_SUM),
            prefill_tokens=whole(S_PREFILL_TOKENS),
            decode_tokens=whole(S_DECODE_TOKENS),
            busy_ms=whole(S_BUSY_S, 1000.0),
            outside_envelope_steps=whole(S_OUTSIDE_ENVELOPE))

    def workload_by_config(self) -> dict[str, WorkloadSummary]:
        """Serving configuration -> :meth:`workload` of its deployments."""
        model = self.batch.deployments.model
        return {cid: self.workload(np.flatnonzero(model == i))
                for i, cid in enumerate(self.batch.models.ids)}


def shard_streams(plan: RunPlan, shard: Shard) -> dict[str, tuple[np.ndarray, int]]:
    """Stream name -> (entity ids, number of blocks) that a shard persists."""
    fleet = plan.topology.fleet(shard.rack_start, shard.rack_stop)
    ids = {"rows": fleet.row_uid, "racks": fleet.rack_uid, "servers": fleet.server_uid,
           "deployments": fleet.deployment_uid}
    out = {}
    for name in plan.stream_names:
        level, factor = name.rsplit("_", 1)
        out[name] = (ids[level], plan.n_steps // int(factor))
    return out


def run_shard(plan: RunPlan, shard: Shard, library: ModelLibrary, parts_dir,
              *, replay_requests: "ReplayRequests | None" = None,
              progress: ProgressFn | None = None, device=None) -> ShardSummary:
    """Generate one shard and commit its streams under ``parts_dir`` (idempotent on retry).

    Returns the shard's summary (also stored in its done marker). On a ``device`` (see
    :class:`ShardGenerator`) the block sums are taken there and only the persisted streams
    come back to the host.
    """
    from distgen.io.parts import PartWriter  # io owns the files; imported where used

    t0 = time.perf_counter()
    inputs = plan.inputs or run_inputs(plan.config, library, plan.topology.row_serving)
    gen = ShardGenerator(plan, shard, library, replay_requests, device=device)
    streams = shard_streams(plan, shard)
    summers = {name: BlockSummer(ids.size, int(name.rsplit("_", 1)[1]), xp=gen.xp)
               for name, (ids, _) in streams.items()}
    written = dict.fromkeys(streams, 0)
    with PartWriter(parts_dir, shard.index, streams) as writer:
        for chunk in gen:
            for name, summer in summers.items():
                sums = summer.push(getattr(chunk, name.rsplit("_", 1)[0]))
                if sums.shape[1]:
                    writer.write(name, written[name], gen.to_host(sums).T)
                    written[name] += sums.shape[1]
            if progress is not None:
                progress(gen.fleet.n_deployments * chunk.n_steps)
        summary = ShardSummary(
            shard=shard.index, rack_start=shard.rack_start, rack_stop=shard.rack_stop,
            deployments=gen.fleet.n_deployments, servers=gen.fleet.n_servers,
            workload=gen.workload(), wall_s=time.perf_counter() - t0,
            inputs_sha256=inputs.sha256, by_config=gen.workload_by_config())
        writer.commit({**summary.to_dict(), "inputs": inputs.to_dict()})
    return summary


@dataclass(frozen=True)
class ReplayRequests:
    """A request trace mapped onto the run and routed to every deployment of the site.

    Built once per run (every shard would compute the same routing); shards take their part
    with :meth:`for_shard`.
    """

    routes: np.ndarray
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cached_tokens: np.ndarray
    trace_span_s: float = 0.0  # [s, trace time] first to last request of the trace file

    @classmethod
    def build(cls, plan: RunPlan, library: ModelLibrary) -> "ReplayRequests":
        from distgen.io.trace import read_request_trace
        from distgen.workload.routing import expand_rows, route_requests

        cfg = plan.config
        replay = cfg.traffic.replay
        trace = read_request_trace(replay.path)
        arrival, row = expand_rows(trace.arrival_s, replay, cfg.duration_s, cfg.seed)
        n_in = np.asarray(trace.input_tokens, np.int64)[row]
        n_out = np.asarray(trace.output_tokens, np.int64)[row]
        cached = np.asarray(trace.cached_tokens, np.int64)[row]
        t = plan.topology
        fleet = t.fleet()
        service = None
        if replay.routing == "least_loaded":
            serving = [library[c].serving for c in t.row_serving]
            service = (np.array([s.prefill_s_per_token for s in serving])[fleet.deployment_row],
                       np.array([s.step_base_s for s in serving])[fleet.deployment_row])
        routes = route_requests(arrival, n_in - cached, n_out, n_deployments=t.n_deployments,
                                routing=replay.routing, seed=cfg.seed,
                                service_s_per_token=service)
        span = float(trace.arrival_s[-1] - trace.arrival_s[0]) if len(trace) else 0.0
        return cls(routes, arrival, n_in, n_out, cached, span)

    def for_shard(self, topology: Topology, shard: Shard, step_offset: int = 0) -> ReplayArrivals:
        """The shard's requests; arrival times move by ``step_offset`` warm-up steps."""
        from distgen.workload.routing import requests_for_deployments

        first = topology.deployments_before_rack(shard.rack_start)
        last = topology.deployments_before_rack(shard.rack_stop)
        csr = requests_for_deployments(self.routes, self.arrival_s, self.input_tokens,
                                       self.output_tokens, np.arange(first, last))
        return ReplayArrivals(csr.offsets.astype(np.int64),
                              csr.arrival_s + step_offset * INTERVAL_S,
                              csr.input_tokens.astype(np.int32),
                              self.cached_tokens[csr.request_index].astype(np.int32),
                              csr.output_tokens.astype(np.int32))
