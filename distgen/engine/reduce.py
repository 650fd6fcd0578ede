"""Hierarchical sums: deployment -> server (+ non-GPU power) -> rack -> row, integer milliwatts.

Every array here is int64 milliwatts with time on the last axis; integer sums are exact, so a
parent always equals the sum of its children, bit for bit, however the fleet was cut.
"""

from __future__ import annotations

import numpy as np

from distgen.core.grid import MW_PER_W


def non_gpu_mw(gpu_mw: np.ndarray, idle_gpu_w: np.ndarray, tdp_gpu_w: np.ndarray,
               idle_w: float, activity_w: float, xp=np) -> np.ndarray:
    """Server power outside the GPUs [mW]: ``idle_w + activity_w * activity``.

    Parameters
    ----------
    gpu_mw : int64 (n_servers, n_steps) [mW] the server's GPU power.
    idle_gpu_w, tdp_gpu_w : (n_servers,) [W] the server's summed GPU idle and nameplate power.
    idle_w, activity_w : [W] constant part and the part that follows GPU activity, where
        activity = (GPU power - GPU idle) / (GPU TDP - GPU idle), clipped to [0, 1].
    xp : the array module of the arrays (numpy, or cupy on a GPU: one elementwise operation
        per step, so the same bits).
    """
    if activity_w == 0.0:
        return xp.full(gpu_mw.shape, int(round(idle_w * MW_PER_W)), np.int64)
    span = xp.maximum(tdp_gpu_w - idle_gpu_w, 1e-9)[:, None]
    activity = xp.clip((gpu_mw / MW_PER_W - idle_gpu_w[:, None]) / span, 0.0, 1.0)
    return xp.rint((idle_w + activity_w * activity) * MW_PER_W).astype(np.int64)


def sum_groups(children_mw: np.ndarray, group_of_child: np.ndarray, xp=np) -> np.ndarray:
    """Sum rows of ``children_mw`` that share a group; groups are contiguous and ascending.

    Returns (n_groups, n_steps) int64 in ascending group order. ``group_of_child`` is a host
    array; ``children_mw`` may live on a GPU (``xp`` = cupy: a segmented sum on the device).
    """
    starts = np.flatnonzero(np.r_[True, group_of_child[1:] != group_of_child[:-1]])
    return xp.add.reduceat(children_mw, xp.asarray(starts), axis=0)
