"""A one-line progress display on stderr: shards done, deployment-steps per second, ETA."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Shows progress after ``delay_s`` seconds, refreshed at most every ``every_s`` seconds.

    Quiet runs (short ones, or ``enabled=False``) print nothing. On a terminal the line is
    rewritten in place; otherwise a new line is written at each refresh.
    """

    def __init__(self, *, enabled: bool = True, stream=None, delay_s: float = 2.0,
                 every_s: float = 0.5):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.delay_s = delay_s
        self.every_s = every_s if self.stream.isatty() else max(every_s, 10.0)
        self.total = 0
        self.done = 0
        self.shards_total = 0
        self.shards_done = 0
        self._t0 = self._last = 0.0
        self._shown = False

    def start(self, plan, shards) -> None:
        self.total = sum(plan.topology.fleet(s.rack_start, s.rack_stop).n_deployments
                         for s in shards) * plan.n_steps
        self.shards_total = len(shards)
        self._t0 = self._last = time.perf_counter()

    def advance(self, deployment_steps: int) -> None:
        self.done += deployment_steps
        self._maybe_show()

    def shard_done(self, record=None) -> None:
        """A shard finished (``record``: its :class:`~distgen.distributed.jobs.ShardRecord`)."""
        self.shards_done += 1
        self._maybe_show()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        bar = "#" * int(20 * frac)
        return (f"[{bar:<20}] {100 * frac:5.1f}%  shards {self.shards_done}/{self.shards_total}"
                f"  {rate / 1e6:6.2f} M deployment-steps/s  elapsed {_duration(elapsed)}"
                f"  ETA {_duration(eta) if eta != float('inf') else '?'}")

    def _maybe_show(self) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._t0 < self.delay_s or now - self._last < self.every_s:
            return
        self._last = now
        self._shown = True
        end = "\r" if self.stream.isatty() else "\n"
        self.stream.write(self.line() + end)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._shown:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
