"""Site topology (rows -> racks -> servers -> deployments) with stable ids, and fleet shards.

Ids are positions in the full site, independent of how the fleet is cut: ``rack_uid = row *
racks_per_row + rack``, ``server_uid = rack_uid * servers_per_rack + server`` and a deployment is
named after its first GPU, ``deployment_uid = server_uid * gpus_per_server + first_gpu``. Random
numbers are keyed by these ids, so a deployment draws the same numbers in any shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class Topology:
    """A regular site: every row has the same racks x servers x GPUs; one serving config per row.

    Attributes
    ----------
    rows, racks_per_row, servers_per_rack, gpus_per_server : counts.
    row_serving : serving-configuration id of each row (length ``rows``).
    row_tp : tensor-parallel degree of each row's configuration (length ``rows``).
    """

    rows: int
    racks_per_row: int
    servers_per_rack: int
    gpus_per_server: int
    row_serving: tuple[str, ...]
    row_tp: tuple[int, ...]

    def __post_init__(self):
        if len(self.row_serving) != self.rows or len(self.row_tp) != self.rows:
            raise ValueError("row_serving and row_tp need one entry per row")
        for tp in self.row_tp:
            if tp < 1 or self.gpus_per_server % tp:
                raise ValueError(f"TP {tp} does not divide {self.gpus_per_server} GPUs per server")

    @property
    def n_racks(self) -> int:
        return self.rows * self.racks_per_row

    @property
    def n_servers(self) -> int:
        return self.n_racks * self.servers_per_rack

    @property
    def n_gpus(self) -> int:
        return self.n_servers * self.gpus_per_server

    def deployments_per_server(self, row: int) -> int:
        return self.gpus_per_server // self.row_tp[row]

    @cached_property
    def n_deployments(self) -> int:
        per_row = self.racks_per_row * self.servers_per_rack
        return sum(per_row * self.deployments_per_server(r) for r in range(self.rows))

    def deployments_before_rack(self, rack_uid: int) -> int:
        """Number of deployments in racks ``0 .. rack_uid - 1`` (site order position)."""
        full_rows, rack_in_row = divmod(int(rack_uid), self.racks_per_row)
        per_rack = [self.servers_per_rack * self.deployments_per_server(r) for r in range(self.rows)]
        return (sum(per_rack[r] * self.racks_per_row for r in range(full_rows))
                + (per_rack[full_rows] * rack_in_row if full_rows < self.rows else 0))

    def rack_row(self, rack_uid: int) -> int:
        return rack_uid // self.racks_per_row

    def deployment_table(self) -> dict[str, np.ndarray]:
        """Every deployment of the site in id order, as arrays (vectorised over the rows that
        share a TP degree; no per-deployment Python loop).

        Returns
        -------
        dict of int64 (n_deployments,) arrays: ``deployment_id``, ``server_id``, ``rack_id``,
        ``row_id``, ``gpus`` (TP), ``first_gpu`` (index in the server).
        """
        row_tp = np.asarray(self.row_tp, np.int64)
        parts = []
        for tp in np.unique(row_tp):
            rows = np.flatnonzero(row_tp == tp)
            first = np.arange(0, self.gpus_per_server, tp, dtype=np.int64)
            rack = (rows[:, None] * self.racks_per_row
                    + np.arange(self.racks_per_row)[None, :])              # (R, racks)
            server = (rack[..., None] * self.servers_per_rack
                      + np.arange(self.servers_per_rack))                  # (R, racks, srv)
            dep = server[..., None] * self.gpus_per_server + first           # (R, racks, srv, k)
            shape = dep.shape
            parts.append({
                "deployment_id": dep.ravel(),
                "server_id": np.broadcast_to(server[..., None], shape).ravel(),
                "rack_id": np.broadcast_to(rack[..., None, None], shape).ravel(),
                "row_id": np.broadcast_to(rows[:, None, None, None], shape).ravel(),
                "gpus": np.full(dep.size, tp, np.int64),
                "first_gpu": np.broadcast_to(first, shape).ravel()})
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(out["deployment_id"], kind="stable")
        return {k: v[order] for k, v in out.items()}

    def fleet(self, rack_start: int = 0, rack_stop: int | None = None) -> "FleetSlice":
        """Deployments of the racks ``[rack_start, rack_stop)`` as flat arrays (see FleetSlice)."""
        rack_stop = self.n_racks if rack_stop is None else rack_stop
        if not 0 <= rack_start < rack_stop <= self.n_racks:
            raise ValueError(f"rack range [{rack_start}, {rack_stop}) outside 0..{self.n_racks}")
        dep_uid, dep_server, dep_tp, dep_row = [], [], [], []
        servers = []
        for rack_uid in range(rack_start, rack_stop):
            row = self.rack_row(rack_uid)
            tp = self.row_tp[row]
            for s in range(self.servers_per_rack):
                server_uid = rack_uid * self.servers_per_rack + s
                servers.append(server_uid)
                for first_gpu in range(0, self.gpus_per_server, tp):
                    dep_uid.append(server_uid * self.gpus_per_server + first_gpu)
                    dep_server.append(server_uid)
                    dep_tp.append(tp)
                    dep_row.append(row)
        return FleetSlice(
            topology=self,
            rack_start=rack_start,
            rack_stop=rack_stop,
            deployment_uid=np.asarray(dep_uid, np.int64),
            deployment_server_uid=np.asarray(dep_server, np.int64),
            deployment_tp=np.asarray(dep_tp, np.int32),
            deployment_row=np.asarray(dep_row, np.int32),
            server_uid=np.asarray(servers, np.int64),
        )


@dataclass(frozen=True)
class FleetSlice:
    """The deployments of a contiguous rack range, flattened in id order.

    Attributes
    ----------
    deployment_uid, deployment_server_uid : int64 (n_deployments,) stable ids.
    deployment_tp, deployment_row : int32 (n_deployments,).
    server_uid : int64 (n_servers,) servers of the slice, ascending.
    """

    topology: Topology
    rack_start: int
    rack_stop: int
    deployment_uid: np.ndarray
    deployment_server_uid: np.ndarray
    deployment_tp: np.ndarray
    deployment_row: np.ndarray
    server_uid: np.ndarray

    @property
    def n_deployments(self) -> int:
        return int(self.deployment_uid.shape[0])

    @property
    def n_servers(self) -> int:
        return int(self.server_uid.shape[0])

    @property
    def rack_uid(self) -> np.ndarray:
        return np.arange(self.rack_start, self.rack_stop, dtype=np.int64)

    @property
    def row_uid(self) -> np.ndarray:
        """Rows touched by the slice (a slice may hold part of a row)."""
        t = self.topology
        return np.arange(self.rack_start // t.racks_per_row,
                         (self.rack_stop - 1) // t.racks_per_row + 1, dtype=np.int64)

    @property
    def deployment_rack_uid(self) -> np.ndarray:
        return self.deployment_server_uid // self.topology.servers_per_rack

    @property
    def deployment_server_index(self) -> np.ndarray:
        """Index of each deployment's server within ``server_uid``."""
        return (self.deployment_server_uid - self.server_uid[0]).astype(np.int64)


@dataclass(frozen=True)
class Shard:
    """One piece of the fleet: the racks ``[rack_start, rack_stop)``."""

    index: int
    rack_start: int
    rack_stop: int


def plan_shards(topology: Topology, shards: int) -> list[Shard]:
    """Cut the fleet into ``shards`` contiguous rack ranges of near-equal GPU count.

    Cuts fall on row boundaries when ``shards <= rows`` (so each task sums whole rows), else on
    rack boundaries. Asking for more shards than racks gives one shard per rack.
    """
    if shards < 1:
        raise ValueError("shards must be >= 1")
    t = topology
    if shards <= t.rows:
        bounds = np.linspace(0, t.rows, shards + 1).round().astype(int) * t.racks_per_row
    else:
        n = min(shards, t.n_racks)
        bounds = np.linspace(0, t.n_racks, n + 1).round().astype(int)
    bounds = np.unique(bounds)
    return [Shard(i, int(a), int(b)) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
