"""The fitted power model of one serving configuration, and the model library (JSON, versioned).

Artifacts are data: plain JSON, never pickles, so loading someone else's file runs no code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from distgen.errors import InputError, ModelLibraryError
from distgen.model.states import GaussianMixture1D
from distgen.model.transitions import FeatureGrid, TransitionModel
from distgen.workload.serving import ServingParams

FORMAT = "distgen.power_model"
FORMAT_VERSION = 1

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
    states : power-state mixture (mean/std [W] per state, sorted by mean).
    state_quantiles_w : (K, n) [W] each state's power quantiles at ``linspace(0, 1, n)``.
    ar1_phi : (K,) per-state AR(1) coefficient of the latent normal (see model.states).
    clamp_w : (low, high) [W] generated power bounds.
    transitions : workload-conditioned transition model.
    serving : serving-model parameters.
    tokens : token-length quantiles of the training requests.
    tdp_w : [W] nameplate power of the deployment (per-GPU TDP x TP).
    baselines : {"mean_w": ..., "lut_w": {"idle": ..., "prefill": ..., "decode": ...}}.
    energy_account : {"idle_w", "j_per_iteration", "j_per_prefill_token", "j_per_decode_token",
        "r2"}.
    provenance : training runs, windows, sample counts, fit date, distgen version, seed.
    scores : held-out fidelity of the fitting procedure (filled by ``distgen fit``).
    """

    config_id: str
    model_name: str
    gpu: str
    tp: int
    interval_s: float
    states: GaussianMixture1D
    state_quantiles_w: np.ndarray
    ar1_phi: np.ndarray
    clamp_w: tuple[float, float]
    transitions: TransitionModel
    serving: ServingParams
    tokens: TokenQuantiles
    tdp_w: float
    baselines: dict
    energy_account: dict
    provenance: dict
    scores: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.states.k

    @property
    def idle_w(self) -> float:
        """[W] mean of the lowest power state."""
        return float(self.states.mean_w[0])

    @cached_property
    def transition_table(self) -> np.ndarray:
        return self.transitions.table()

    def to_dict(self) -> dict:
        t = self.transitions
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config_id": self.config_id,
            "model_name": self.model_name,
            "gpu": self.gpu,
            "tp": self.tp,
            "interval_s": self.interval_s,
            "units": {"power": "W", "time": "s", "energy": "J"},
            "states": {
                "mean_w": _floats(self.states.mean_w),
                "std_w": _floats(self.states.std_w),
                "weight": _floats(self.states.weight),
                "quantiles_w": [_floats(q) for q in self.state_quantiles_w],
                "ar1_phi": _floats(self.ar1_phi),
                "log_likelihood": float(self.states.log_likelihood),
                "n_samples": int(self.states.n_samples),
            },
            "clamp_w": [float(self.clamp_w[0]), float(self.clamp_w[1])],
            "transitions": {
                "kind": "workload_logit",
                "running_thresholds": list(t.grid.running_thresholds),
                "prefill_thresholds_tokens": list(t.grid.prefill_thresholds_tokens),
                "ridge_lambda": t.ridge_lambda,
                "intercepts": np.round(t.intercepts, 6).tolist(),
                "prev_logits": np.round(t.prev_logits, 6).tolist(),
                "feature_logits": np.round(t.feature_logits, 6).tolist(),
            },
            "serving": self.serving.to_dict(),
            "tokens": {"input_tokens_quantiles": _floats(self.tokens.input_tokens),
                       "output_tokens_quantiles": _floats(self.tokens.output_tokens)},
            "tdp_w": self.tdp_w,
            "baselines": self.baselines,
            "energy_account": self.energy_account,
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
                                 f"supported (this distgen reads {FORMAT_VERSION})")
            s = d["states"]
            mean = np.asarray(s["mean_w"], np.float64)
            states = GaussianMixture1D(mean, np.asarray(s["std_w"], np.float64),
                                       np.asarray(s["weight"], np.float64),
                                       float(s["log_likelihood"]), int(s["n_samples"]))
            t = d["transitions"]
            grid = FeatureGrid(tuple(int(v) for v in t["running_thresholds"]),
                               tuple(int(v) for v in t["prefill_thresholds_tokens"]))
            trans = TransitionModel(grid, np.asarray(t["intercepts"], np.float64),
                                    np.asarray(t["prev_logits"], np.float64),
                                    np.asarray(t["feature_logits"], np.float64),
                                    float(t["ridge_lambda"]), mean)
            k = mean.shape[0]
            if states.std_w.shape != (k,) or len(s["quantiles_w"]) != k or \
                    len(s["ar1_phi"]) != k:
                raise InputError(source, "per-state arrays do not match the number of states")
            if trans.intercepts.shape != (2, k) or trans.prev_logits.shape != (2, k, k) or \
                    trans.feature_logits.shape != (grid.n_features, k):
                raise InputError(source, "transition logits do not match the number of states")
            tok = d["tokens"]
            return cls(
                config_id=str(d["config_id"]), model_name=str(d["model_name"]),
                gpu=str(d["gpu"]), tp=int(d["tp"]), interval_s=float(d["interval_s"]),
                states=states, state_quantiles_w=np.asarray(s["quantiles_w"], np.float64),
                ar1_phi=np.asarray(s["ar1_phi"], np.float64),
                clamp_w=(float(d["clamp_w"][0]), float(d["clamp_w"][1])),
                transitions=trans, serving=ServingParams.from_dict(d["serving"]),
                tokens=TokenQuantiles(np.asarray(tok["input_tokens_quantiles"], np.float64),
                                      np.asarray(tok["output_tokens_quantiles"], np.float64)),
                tdp_w=float(d["tdp_w"]), baselines=dict(d["baselines"]),
                energy_account=dict(d["energy_account"]), provenance=dict(d["provenance"]),
                scores=dict(d.get("scores", {})))
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(source, f"malformed power model: {type(exc).__name__}: {exc}")

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
        except FileNotFoundError:
            raise InputError(path, "file not found")
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON: {exc.msg}", line=exc.lineno)
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
