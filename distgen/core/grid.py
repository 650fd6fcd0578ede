"""The time grid every trace lives on: one truth for the base step and the output levels."""

from __future__ import annotations

#: [s] the base step of every trace: the measurement cadence of the GPU power logs.
INTERVAL_S = 0.25
#: Entity levels below the site, coarsest first (the site is their sum).
ENTITY_LEVELS = ("rows", "racks", "servers", "deployments")
#: Milliwatts per watt: generation sums integer milliwatts.
MW_PER_W = 1000


def steps_of(seconds: float) -> int:
    """Whole base steps in ``seconds`` [s] (rounded to the nearest step)."""
    return int(round(seconds / INTERVAL_S))


def is_step_multiple(seconds: float, step_s: float = INTERVAL_S) -> bool:
    """True when ``seconds`` is a whole number of ``step_s`` (to 1e-9 relative)."""
    r = seconds / step_s
    return abs(r - round(r)) <= 1e-9 * max(1.0, abs(r))
