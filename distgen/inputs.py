"""What a run is computed from, as content hashes, and how two sets of inputs differ.

Every committed shard records the :class:`RunInputs` of its run, so ``--resume`` can tell a
shard computed from the same inputs from one computed from an edited request trace, a swapped
model artifact, another configuration or another distgen version, and say which. The hashes
are computed once per run (by :func:`run_inputs`, from the plan) and travel with the plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import distgen


def model_sha256(model) -> str:
    """sha256 of a power model's canonical JSON (:meth:`PowerModel.to_dict`, sorted keys).

    This is what generation reads of an artifact, whatever its file's layout or indentation.
    """
    text = json.dumps(model.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunInputs:
    """Content hashes of everything a run's numbers depend on.

    Attributes
    ----------
    config_sha256 : :func:`~distgen.config.config_hash` of the resolved configuration.
    trace_path, trace_sha256 : the replayed request trace and the sha256 of its bytes (None
        for synthetic traffic).
    models_sha256 : serving configuration -> :func:`model_sha256` of each model used.
    distgen_version : version of the code.
    """

    config_sha256: str
    trace_path: str | None = None
    trace_sha256: str | None = None
    models_sha256: dict = field(default_factory=dict)
    distgen_version: str = distgen.__version__

    @property
    def sha256(self) -> str:
        """One hash over all of the above (the trace by content, not by path)."""
        doc = {"config": self.config_sha256, "trace": self.trace_sha256,
               "models": dict(sorted(self.models_sha256.items())),
               "distgen": self.distgen_version}
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        return {**asdict(self), "sha256": self.sha256}

    @classmethod
    def from_dict(cls, doc: dict) -> "RunInputs":
        return cls(config_sha256=doc.get("config_sha256", ""), trace_path=doc.get("trace_path"),
                   trace_sha256=doc.get("trace_sha256"),
                   models_sha256=dict(doc.get("models_sha256") or {}),
                   distgen_version=doc.get("distgen_version", ""))


def run_inputs(config, library, serving_ids) -> RunInputs:
    """The :class:`RunInputs` of a run of ``config`` using the models ``serving_ids`` of
    ``library`` (hashes the trace file once; a few milliseconds per model)."""
    from distgen.config import config_hash
    from distgen.io.manifest import file_digest

    trace_path = trace_sha = None
    if config.traffic.mode == "replay":
        trace_path = str(config.traffic.replay.path)
        trace_sha = file_digest(trace_path)
    return RunInputs(config_sha256=config_hash(config), trace_path=trace_path,
                     trace_sha256=trace_sha,
                     models_sha256={c: model_sha256(library[c]) for c in sorted(set(serving_ids))})


def _short(digest: str | None) -> str:
    return "none" if not digest else digest[:12]


def input_differences(old: dict | None, new: RunInputs) -> list[str]:
    """Why inputs recorded as ``old`` (a :meth:`RunInputs.to_dict`) differ from ``new``: one
    phrase per cause, completing "... were computed ...". Empty when they match."""
    if not old:
        return ["with no record of their inputs (by an older distgen)"]
    was = RunInputs.from_dict(old)
    causes = []
    if was.config_sha256 != new.config_sha256:
        causes.append(f"from another configuration (config sha256 {_short(was.config_sha256)}, "
                      f"now {_short(new.config_sha256)})")
    if was.trace_sha256 != new.trace_sha256:
        causes.append(f"from another request trace (sha256 {_short(was.trace_sha256)}, now "
                      f"{_short(new.trace_sha256)} of {new.trace_path})")
    for cid in sorted(set(was.models_sha256) | set(new.models_sha256)):
        a, b = was.models_sha256.get(cid), new.models_sha256.get(cid)
        if a != b:
            causes.append(f"with another model for {cid} (sha256 {_short(a)}, now {_short(b)})")
    if was.distgen_version != new.distgen_version:
        causes.append(f"by distgen {was.distgen_version or '?'} (this is "
                      f"{new.distgen_version})")
    if not causes and old.get("sha256") not in (None, new.sha256):
        causes.append("from other inputs")
    return causes


def index_ranges(indices) -> str:
    """``[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"``."""
    out, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)
