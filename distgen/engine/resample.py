"""Coarser resolutions as block sums (exact, integer milliwatts) and block means (watts).

A resolution of ``factor`` steps is the mean over consecutive blocks of ``factor`` base steps,
so energy is the same at every resolution. Generation streams through time in chunks of any
length; :class:`BlockSummer` carries the partial block from one chunk to the next.
"""

from __future__ import annotations

import numpy as np

from distgen.core.grid import MW_PER_W



class BlockSummer:
    """Sums of consecutive blocks of ``factor`` steps along the last axis, streamed.

    Parameters
    ----------
    n_series : number of rows (entities) of every pushed chunk.
    factor : steps per block (>= 1).
    xp : array module of the chunks (numpy, or cupy: block sums on the GPU).
    """

    def __init__(self, n_series: int, factor: int, xp=np):
        if factor < 1:
            raise ValueError("factor must be >= 1")
        self.factor = int(factor)
        self.xp = xp
        self._partial = xp.zeros(n_series, np.int64)
        self._filled = 0

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add a (n_series, n_t) int64 chunk; return the (n_series, n_blocks) completed sums."""
        f = self.factor
        n = chunk.shape[1]
        if f == 1:
            return chunk
        out = []
        i = 0
        if self._filled:
            take = min(f - self._filled, n)
            self._partial += chunk[:, :take].sum(axis=1)
            self._filled += take
            i = take
            if self._filled == f:
                out.append(self._partial[:, None].copy())
                self._partial[:] = 0
                self._filled = 0
        whole = (n - i) // f
        if whole:
            block = chunk[:, i:i + whole * f]
            out.append(block.reshape(block.shape[0], whole, f).sum(axis=2))
            i += whole * f
        if i < n:
            self._partial += chunk[:, i:].sum(axis=1)
            self._filled += n - i
        if not out:
            return self.xp.zeros((chunk.shape[0], 0), np.int64)
        return self.xp.concatenate(out, axis=1) if len(out) > 1 else out[0]

    @property
    def pending_steps(self) -> int:
        """Steps in the unfinished block (0 at a block boundary)."""
        return self._filled


def block_means_w(sums_mw: np.ndarray, factor: int) -> np.ndarray:
    """Mean power [W] (float64) from block sums of ``factor`` steps in milliwatts."""
    return np.asarray(sums_mw, np.float64) / (factor * MW_PER_W)


def coarsen_sums(sums_mw: np.ndarray, ratio: int) -> np.ndarray:
    """Block sums at ``ratio`` times coarser resolution from finer block sums (last axis)."""
    n = sums_mw.shape[-1] // ratio
    return sums_mw[..., :n * ratio].reshape(*sums_mw.shape[:-1], n, ratio).sum(axis=-1)
