"""The C fleet kernel's parameter block: the kernel records (engine.records) as one struct.

``fleet_kernel.cu`` takes a single ``DgFleet`` struct of pointers and scalars. Every field is 8
bytes (int64, float64 or a pointer), so the layout has no padding and is the same on the host
and on a GPU. :func:`fleet_params` builds it from the same records the Numba kernel takes, with
the array addresses given by a function: host arrays for the host build, device arrays for the
GPU build. It also checks every array's dtype and layout: the C code trusts them.
"""

from __future__ import annotations

import ctypes
from typing import Callable

import numpy as np

from distgen.core.rng import NORMAL_TABLE
from distgen.engine.records import (MODE_SYNTHETIC, N_ENVELOPE, N_STATS, CarriedState, Chunk,
                                    Deployments, ModelTables, Outputs, ReplayInputs,
                                    SyntheticInputs)

#: (field, kind) in the order of ``struct DgFleet``; kind is "i" (int64), "f" (float64) or
#: "p" (a pointer).
FIELDS = (
    ("step0", "i"), ("n_steps", "i"), ("interval_s", "f"), ("mode", "i"),
    ("count_from_step", "i"),
    ("n_deployments", "i"), ("state_key", "p"), ("request_key", "p"), ("model", "p"),
    ("target", "p"),
    ("serving", "p"), ("idle_w", "p"), ("d_w", "p"), ("sensor", "p"),
    ("busy_edges", "p"), ("n_busy_edges", "i"), ("prefill_edges", "p"),
    ("n_prefill_edges", "i"), ("residual_of_z", "p"), ("n_states", "i"), ("n_z", "i"),
    ("z_min", "f"), ("z_inv_step", "f"), ("phi", "p"), ("innovation", "p"), ("clamp_w", "p"),
    ("power_limit", "p"), ("tok_in", "p"), ("n_tok_in", "i"), ("tok_out", "p"),
    ("n_tok_out", "i"), ("envelope_max", "p"), ("n_envelope", "i"),
    ("base_rps", "p"), ("rate_mult", "p"), ("n_intervals", "i"), ("rate_k0", "i"),
    ("steps_per_interval", "i"), ("step_offset", "i"), ("gamma_q", "p"), ("n_gamma", "i"),
    ("input_tokens", "i"), ("output_tokens", "i"), ("cached_share", "f"),
    ("rep_offsets", "p"), ("rep_arrival_s", "p"), ("rep_input_tokens", "p"),
    ("rep_cached_tokens", "p"), ("rep_output_tokens", "p"),
    ("iterations", "p"), ("fin", "p"), ("ctx", "p"), ("heap_n", "p"), ("ctx_base", "p"),
    ("pre_left", "p"), ("pre_prompt", "p"), ("pre_out", "p"), ("pre_head", "p"),
    ("pre_n", "p"), ("pre_total", "p"), ("pre_attn", "p"), ("wait_t", "p"),
    ("wait_prompt", "p"), ("wait_cached", "p"), ("wait_out", "p"), ("wait_head", "p"),
    ("wait_n", "p"), ("dropped", "p"), ("seq_capacity", "i"), ("queue_capacity", "i"),
    ("state", "p"), ("latent_z", "p"), ("over_limit_j", "p"), ("shares_prev", "p"),
    ("op_time", "p"), ("next_arrival", "p"), ("n_arrived", "p"), ("replay_ptr", "p"),
    ("target_mw", "p"), ("target_stride", "i"), ("deployment_mw", "p"),
    ("deployment_stride", "i"), ("stats", "p"),
    ("normal_table", "p"),
)

_CTYPE = {"i": ctypes.c_int64, "f": ctypes.c_double, "p": ctypes.c_void_p}


class DgFleet(ctypes.Structure):
    """``struct DgFleet`` of fleet_kernel.cu (8-byte scalars and pointers, no padding)."""

    _fields_ = [(name, _CTYPE[kind]) for name, kind in FIELDS]


#: Dtypes the C kernel reads: (record field -> dtype). Inputs are converted (copied when they
#: differ); state and outputs are updated in place, so they must already have these.
_STATE_DTYPES = {
    "iterations": np.float64, "fin": np.float64, "ctx": np.float64, "heap_n": np.int32,
    "ctx_base": np.float64, "pre_left": np.int32, "pre_prompt": np.int32,
    "pre_out": np.int32, "pre_head": np.int32, "pre_n": np.int32, "pre_total": np.int64,
    "pre_attn": np.float64, "wait_t": np.float64, "wait_prompt": np.int32,
    "wait_cached": np.int32, "wait_out": np.int32, "wait_head": np.int32, "wait_n": np.int32,
    "dropped": np.int64,
    "state": np.int64, "latent_z": np.float64, "over_limit_j": np.float64,
    "shares_prev": np.float64, "op_time": np.float64, "next_arrival": np.float64,
    "n_arrived": np.int64, "replay_ptr": np.int64,
}


def _inplace(name: str, a, dtype) -> object:
    """An array the kernel writes: it must already be of ``dtype`` and C-contiguous."""
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise TypeError(f"fleet kernel: {name} must be a C-contiguous {np.dtype(dtype).name} "
                        f"array (got {a.dtype}, contiguous={a.flags.c_contiguous})")
    return a


def fleet_params(chunk: Chunk, deps: Deployments, models: ModelTables, syn: SyntheticInputs,
                 rep: ReplayInputs, state: CarriedState, out: Outputs, *,
                 address: Callable[[object], int], xp=np,
                 normal_table=None) -> tuple[DgFleet, list]:
    """The kernel's parameter block for one call, and the arrays it points into.

    ``address(a)`` gives the address of array ``a`` (``a.ctypes.data`` on the host,
    ``a.data.ptr`` for a CuPy array); ``xp`` (numpy or cupy) converts inputs of another dtype
    or layout. Keep the returned list alive until the kernel has run: converted copies live
    only there. ``normal_table`` defaults to :data:`distgen.core.rng.NORMAL_TABLE` (pass the
    device copy on a GPU).
    """
    keep: list = []
    p = DgFleet()

    def ptr(a) -> int:
        keep.append(a)
        return address(a) if a.size else 0

    def inp(a, dtype) -> int:
        return ptr(xp.ascontiguousarray(xp.asarray(a), dtype=dtype))

    n = int(deps.state_key.shape[0])
    p.step0, p.n_steps = int(chunk.step0), int(chunk.n_steps)
    p.interval_s, p.mode = float(chunk.interval_s), int(chunk.mode)
    p.count_from_step = int(chunk.count_from_step)
    p.n_deployments = n
    p.state_key, p.request_key = inp(deps.state_key, np.uint64), inp(deps.request_key, np.uint64)
    p.model, p.target = inp(deps.model, np.int32), inp(deps.target, np.int64)

    m = models
    if m.serving.shape[1] != 7 or m.envelope_max.shape[1] != N_ENVELOPE:
        raise ValueError("fleet kernel: ModelTables.serving must be (M, 7) and envelope_max "
                         f"(M, {N_ENVELOPE})")
    p.serving, p.idle_w = inp(m.serving, np.float64), inp(m.idle_w, np.float64)
    p.d_w, p.sensor = inp(m.d_w, np.float64), inp(m.sensor, np.float64)
    p.busy_edges, p.n_busy_edges = inp(m.busy_edges, np.float64), int(m.busy_edges.shape[0])
    p.prefill_edges = inp(m.prefill_edges, np.float64)
    p.n_prefill_edges = int(m.prefill_edges.shape[0])
    p.residual_of_z = inp(m.residual_of_z, np.float64)
    p.n_states, p.n_z = int(m.residual_of_z.shape[1]), int(m.residual_of_z.shape[2])
    p.z_min, p.z_inv_step = float(m.z_min), float(m.z_inv_step)
    p.phi, p.innovation = inp(m.phi, np.float64), inp(m.innovation, np.float64)
    p.clamp_w, p.power_limit = inp(m.clamp_w, np.float64), inp(m.power_limit, np.float64)
    p.tok_in, p.n_tok_in = inp(m.tok_in, np.float64), int(m.tok_in.shape[1])
    p.tok_out, p.n_tok_out = inp(m.tok_out, np.float64), int(m.tok_out.shape[1])
    p.envelope_max, p.n_envelope = inp(m.envelope_max, np.float64), N_ENVELOPE

    synthetic = int(chunk.mode) == MODE_SYNTHETIC
    if synthetic and (syn.rate_mult.ndim != 2 or syn.rate_mult.shape[0] != n):
        raise ValueError(f"fleet kernel: rate_mult must be ({n}, n_intervals), "
                         f"got {syn.rate_mult.shape}")
    p.base_rps, p.rate_mult = inp(syn.base_rps, np.float64), inp(syn.rate_mult, np.float32)
    p.n_intervals = int(syn.rate_mult.shape[1])
    p.rate_k0, p.steps_per_interval = int(syn.rate_k0), int(syn.steps_per_interval)
    p.step_offset = int(syn.step_offset)
    p.gamma_q, p.n_gamma = inp(syn.gamma_q, np.float64), int(syn.gamma_q.shape[0])
    p.input_tokens, p.output_tokens = int(syn.input_tokens), int(syn.output_tokens)
    p.cached_share = float(syn.cached_share)

    if rep.offsets.shape[0] != n + 1:
        raise ValueError(f"fleet kernel: replay offsets must have {n + 1} entries, "
                         f"got {rep.offsets.shape[0]}")
    p.rep_offsets, p.rep_arrival_s = inp(rep.offsets, np.int64), inp(rep.arrival_s, np.float64)
    p.rep_input_tokens = inp(rep.input_tokens, np.int32)
    p.rep_cached_tokens = inp(rep.cached_tokens, np.int32)
    p.rep_output_tokens = inp(rep.output_tokens, np.int32)

    sv = state.serving
    for name, dtype in _STATE_DTYPES.items():
        owner = sv if hasattr(sv, name) else state
        setattr(p, name, ptr(_inplace(name, getattr(owner, name), dtype)))
    p.seq_capacity, p.queue_capacity = int(sv.fin.shape[1]), int(sv.wait_t.shape[1])
    if state.shares_prev.shape[1:] != (2, 4):
        raise ValueError("fleet kernel: shares_prev must be (D, 2, 4)")

    tm = out.target_mw
    if tm.dtype != np.int64 or tm.ndim != 2 or tm.strides[1] != 8 or tm.shape[1] < chunk.n_steps:
        raise TypeError("fleet kernel: target_mw must be int64 (n_targets, >= n_steps) with "
                        "unit stride along time")
    p.target_mw, p.target_stride = ptr(tm), int(tm.strides[0] // 8)
    dm = out.deployment_mw
    if dm.shape[0] > 0:
        if dm.dtype != np.int32 or dm.strides[1] != 4 or dm.shape[0] != n \
                or dm.shape[1] < chunk.n_steps:
            raise TypeError("fleet kernel: deployment_mw must be int32 (D, >= n_steps) with "
                            "unit stride along time")
        p.deployment_mw, p.deployment_stride = ptr(dm), int(dm.strides[0] // 4)
    else:
        p.deployment_mw, p.deployment_stride = 0, 0
    if out.stats.shape[1] != N_STATS:
        raise ValueError(f"fleet kernel: stats must be (D, {N_STATS})")
    p.stats = ptr(_inplace("stats", out.stats, np.float64))
    table = NORMAL_TABLE if normal_table is None else normal_table
    p.normal_table = inp(table, np.float64)
    return p, keep
