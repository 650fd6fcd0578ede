"""Operating envelope: the range of work a power model saw in training.

A model fitted on chat traffic at a few requests per second has never seen 100 running requests
or 30,000-token contexts. Its level model still gives an answer there (it saturates at the
fitted ceiling), but that answer is an extrapolation, and the product says so: generation
counts the deployment-steps whose work lies outside the envelope, per configuration (manifest
and CLI summary), and validation reports the share per held-out run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from distgen.workload.serving import (F_CONTEXT_TOKENS, F_DECODE_BATCH, F_DECODE_TOKENS,
                                      F_PREFILL_TOKENS, F_RUNNING)

#: Headroom above the largest value seen before a step counts as outside: the maxima of short
#: runs are noisy, and a step at the training maximum is not an extrapolation.
HEADROOM = 1.1


@dataclass(frozen=True)
class OperatingEnvelope:
    """Largest work per step seen in training (times :data:`HEADROOM`).

    Attributes
    ----------
    running : requests running (in prefill or decoding).
    decode_batch : mean decoding requests during the step's decode iterations.
    prefill_tokens : [tokens] prompt tokens computed in one 0.25 s step.
    context_per_seq : [tokens] KV-cache tokens read per generated token (the context of a
        decoding request).
    """

    running: float
    decode_batch: float
    prefill_tokens: float
    context_per_seq: float

    def as_array(self) -> np.ndarray:
        """In the order of the kernel's ``ENV_*`` columns."""
        return np.array([self.running, self.decode_batch, self.prefill_tokens,
                         self.context_per_seq], np.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OperatingEnvelope":
        return cls(**{k: float(d[k]) for k in ("running", "decode_batch", "prefill_tokens",
                                               "context_per_seq")})

    @classmethod
    def of(cls, features: np.ndarray) -> "OperatingEnvelope":
        """The envelope of training steps (``replay_workload`` columns)."""
        f = np.asarray(features, np.float64)
        return cls(running=HEADROOM * float(f[:, F_RUNNING].max(initial=0.0)),
                   decode_batch=HEADROOM * float(f[:, F_DECODE_BATCH].max(initial=0.0)),
                   prefill_tokens=HEADROOM * float(f[:, F_PREFILL_TOKENS].max(initial=0.0)),
                   context_per_seq=HEADROOM * float(context_per_seq(f).max(initial=0.0)))

    def outside(self, features: np.ndarray) -> np.ndarray:
        """Boolean per step: some work beyond the envelope (the kernel's rule)."""
        f = np.asarray(features, np.float64)
        return ((f[:, F_RUNNING] > self.running) | (f[:, F_DECODE_BATCH] > self.decode_batch)
                | (f[:, F_PREFILL_TOKENS] > self.prefill_tokens)
                | (context_per_seq(f) > self.context_per_seq))


def context_per_seq(features: np.ndarray) -> np.ndarray:
    """[tokens] context read per generated token in each step (0 without decoding)."""
    dec = features[:, F_DECODE_TOKENS]
    return np.divide(features[:, F_CONTEXT_TOKENS], dec, out=np.zeros_like(dec), where=dec > 0)


def share_outside(model, run) -> float:
    """Share of a measured run's steps whose work lies outside ``model``'s envelope, the work
    coming from replaying the run's request log through the model's serving model."""
    from distgen.model.serving_fit import run_workload

    f = run_workload(run, model.serving)
    valid = getattr(run, "valid", None)
    out = model.envelope.outside(f)
    if valid is not None:
        out = out[np.asarray(valid, bool)]
    return float(out.mean()) if out.size else 0.0
