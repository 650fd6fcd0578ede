"""The fitted power model of one serving configuration, and the model library (JSON, versioned).

Artifacts are data: plain JSON, never pickles, so loading someone else's file runs no code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from distgen.errors import InputError, ModelLibraryError
from distgen.model.envelope import OperatingEnvelope
from distgen.model.power import (ACTIVITIES, BUSY_EDGES, N_STATES, PREFILL_EDGES, Spread,
                                 WorkPower)
from distgen.workload.serving import ServingParams

FORMAT = "distgen.power_model"
FORMAT_VERSION = 2

#: Board power limits [W] of common data-centre GPUs (SXM / OAM parts), for TDP baselines and
#: the non-GPU activity share. Sources: NVIDIA A100 / H100 / H200 / B200 and L40S datasheets.
GPU_TDP_W = {"A100": 400.0, "H100": 700.0, "H200": 700.0, "B200": 1000.0, "L40S": 350.0,
             "L4": 72.0, "A10G": 150.0, "MI300X": 750.0}


@dataclass(frozen=True)
class TokenQuantiles:
    """Quantiles of request token lengths at probabilities ``linspace(0, 1, n)``."""

    input_tokens: np.ndarray
    output_tokens: np.ndarray

    @classmethod
    def fit(cls, input_tokens, output_tokens, n: int = 65) -> "TokenQuantiles":
        q = np.linspace(0.0, 1.0, n)
        return cls(np.quantile(np.maximum(input_tokens, 1), q),
                   np.quantile(np.maximum(output_tokens, 1), q))


@dataclass(frozen=True)
class PowerModel:
    """Everything needed to generate one configuration's deployment power.

    Attributes
    ----------
    config_id, model_name, gpu, tp : the serving configuration.
    interval_s : [s] step of the model (0.25).
    serving : serving-model parameters (iteration time, batching).
    power : activity powers over the idle floor and the sensor kernel (the level).
    spread : residual quantiles and AR(1) persistence per state (the spread).
    clamp_w : (low, high) [W] generated power bounds.
    tokens : token-length quantiles of the training requests.
    envelope : the work seen in training (:mod:`distgen.model.envelope`).
    tdp_w : [W] nameplate power of the deployment (per-GPU TDP x TP).
    arrival_offset_s : [s] fitted offset between the request log's clock and the power reading
        (used when a measured run is regenerated; 0 for new traffic).
    baselines : {"mean_w": ..., "lut_w": {"idle": ..., "prefill": ..., "decode": ...}}.
    provenance : training runs, windows, sample counts, fit date, distgen version, seed.
    scores : held-out fidelity of the fitting procedure (filled by ``distgen fit``).
    """

    config_id: str
    model_name: str
    gpu: str
    tp: int
    interval_s: float
    serving: ServingParams
    power: WorkPower
    spread: Spread
    clamp_w: tuple[float, float]
    tokens: TokenQuantiles
    envelope: OperatingEnvelope
    tdp_w: float
    arrival_offset_s: float
    baselines: dict
    provenance: dict
    scores: dict = field(default_factory=dict)

    @property
    def idle_w(self) -> float:
        """[W] deployment power with no work."""
        return float(self.power.idle_w)

    @property
    def energy_account(self) -> dict:
        """Energy per unit of work [J] (see :meth:`WorkPower.energy_account`)."""
        return self.power.energy_account(self.serving)

    def to_dict(self) -> dict:
        sp = self.spread
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config_id": self.config_id,
            "model_name": self.model_name,
            "gpu": self.gpu,
            "tp": self.tp,
            "interval_s": self.interval_s,
            "units": {"power": "W", "time": "s", "energy": "J"},
            "serving": self.serving.to_dict(),
            "power": {"idle_w": self.power.idle_w,
                      "activities": list(ACTIVITIES),
                      "d_w": _floats(self.power.d_w),
                      "sensor": _floats(self.power.sensor),
                      "limit_w": self.power.limit_w,
                      "limit_budget_j": self.power.limit_budget_j,
                      "ceiling_w": self.power.ceiling_w},
            "spread": {"busy_edges": list(BUSY_EDGES), "prefill_edges": list(PREFILL_EDGES),
                       "quantiles_w": [_floats(q) for q in sp.quantiles_w],
                       "phi": _floats(sp.phi),
                       "n_samples": [int(v) for v in sp.n_samples],
                       "source": [int(v) for v in sp.source],
                       "offset_w": _floats(sp.offset_w)},
            "clamp_w": [float(self.clamp_w[0]), float(self.clamp_w[1])],
            "tokens": {"input_tokens_quantiles": _floats(self.tokens.input_tokens),
                       "output_tokens_quantiles": _floats(self.tokens.output_tokens)},
            "envelope": self.envelope.to_dict(),
            "tdp_w": self.tdp_w,
            "arrival_offset_s": self.arrival_offset_s,
            "energy_account": self.energy_account,
            "baselines": self.baselines,
            "provenance": self.provenance,
            "scores": self.scores,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "PowerModel":
        try:
            if d.get("format") != FORMAT:
                raise InputError(source, f"not a distgen power model (format={d.get('format')!r})")
            if d.get("format_version") != FORMAT_VERSION:
                raise InputError(source, f"format_version {d.get('format_version')!r} is not "
                                 f"supported (this distgen reads {FORMAT_VERSION}); refit with "
                                 f"`distgen fit`")
            pw, sp = d["power"], d["spread"]
            if tuple(sp["busy_edges"]) != BUSY_EDGES or \
                    tuple(sp["prefill_edges"]) != PREFILL_EDGES:
                raise InputError(source, "spread state edges differ from this distgen's; refit")
            spread = Spread(np.asarray(sp["quantiles_w"], np.float64),
                            np.asarray(sp["phi"], np.float64),
                            np.asarray(sp["n_samples"], np.int64),
                            np.asarray(sp["source"], np.int64),
                            np.asarray(sp["offset_w"], np.float64))
            if spread.quantiles_w.shape[0] != N_STATES or spread.phi.shape != (N_STATES,):
                raise InputError(source, f"spread needs {N_STATES} states")
            if len(pw["d_w"]) != len(ACTIVITIES) or len(pw["sensor"]) != 2:
                raise InputError(source, f"power.d_w needs {len(ACTIVITIES)} values and "
                                 f"power.sensor 2")
            tok = d["tokens"]
            return cls(
                config_id=str(d["config_id"]), model_name=str(d["model_name"]),
                gpu=str(d["gpu"]), tp=int(d["tp"]), interval_s=float(d["interval_s"]),
                serving=ServingParams.from_dict(d["serving"]),
                power=WorkPower(float(pw["idle_w"]), tuple(float(v) for v in pw["d_w"]),
                                tuple(float(v) for v in pw["sensor"]),
                                float(pw["limit_w"]), float(pw["limit_budget_j"])),
                spread=spread,
                clamp_w=(float(d["clamp_w"][0]), float(d["clamp_w"][1])),
                tokens=TokenQuantiles(np.asarray(tok["input_tokens_quantiles"], np.float64),
                                      np.asarray(tok["output_tokens_quantiles"], np.float64)),
                envelope=OperatingEnvelope.from_dict(d["envelope"]),
                tdp_w=float(d["tdp_w"]), arrival_offset_s=float(d["arrival_offset_s"]),
                baselines=dict(d["baselines"]), provenance=dict(d["provenance"]),
                scores=dict(d.get("scores", {})))
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(source, f"malformed power model: {type(exc).__name__}: {exc}"
                             ) from exc

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / f"{self.config_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PowerModel":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise InputError(path, "file not found") from exc
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from exc
        return cls.from_dict(d, str(path))


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a, np.float64)]


@dataclass(frozen=True)
class ModelLibrary:
    """Power models by serving-configuration id, with a content hash as the library version."""

    models: dict[str, PowerModel]
    source: str
    version: str

    def __contains__(self, config_id: str) -> bool:
        return config_id in self.models

    def __getitem__(self, config_id: str) -> PowerModel:
        try:
            return self.models[config_id]
        except KeyError:
            raise ModelLibraryError(
                f"serving configuration '{config_id}' is not in the model library {self.source}; "
                f"available: {', '.join(sorted(self.models)) or '(none)'}") from None

    @property
    def tp_by_config(self) -> dict[str, int]:
        return {cid: m.tp for cid, m in self.models.items()}

    @classmethod
    def load(cls, directory: str | Path | None = None) -> "ModelLibrary":
        """Load every ``*.json`` model in ``directory`` (default: the bundled library)."""
        if directory is None:
            directory = Path(str(resources.files("distgen.library")))
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelLibraryError(f"model library folder {directory} does not exist")
        models, digest = {}, hashlib.sha256()
        for path in sorted(directory.glob("*.json")):
            model = PowerModel.load(path)
            models[model.config_id] = model
            digest.update(path.read_bytes())
        if not models:
            raise ModelLibraryError(f"no power models (*.json) in {directory}")
        return cls(models, str(directory), digest.hexdigest()[:16])
