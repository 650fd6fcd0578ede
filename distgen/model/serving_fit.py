"""Fit the serving model's iteration-time parameters from measured runs.

**With the engine's own metrics** (``engine.csv``): over a stretch of a few seconds in which the
server is busy, the elapsed time is the sum of its iterations' durations::

    dt = step_base_s * iterations + prefill_s_per_token * prompt tokens
         + decode_s_per_seq * generated tokens + context_s_per_token * context tokens read
         + prefill_attention_s_per_token * prompt-token positions

The counters give iterations and tokens; the context read and the prompt-token positions come
from replaying the request log (iterated to a fixed point). Stretches, not single 4 Hz scrapes:
a long prefill iteration's tokens land in the scrape in which it ends, so per-scrape rows are
biased. The attention coefficient is tied to the prefill coefficient by the model's
architecture (attention FLOPs per token-position over dense FLOPs per token), because on short
runs the two are collinear. Non-negative least squares.

**From the request log alone** (no engine log, the normal case for user data): the
architecture and the GPU give a roofline estimate of each cost (an iteration reads the weights
at the memory bandwidth; a prompt token costs its FLOPs at the compute peak; a context token
its KV bytes), each at the efficiency the engine-log fits of this project measured. The request
log then calibrates two of them within a factor of two: the lower-quartile line of the time to
first token against prompt length (requests that did not queue) scales the prefill cost, and
the benchmark's median time per output token the iteration. The report states which parameters
came from data and which from the roofline, with the bootstrap range of the calibration.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from distgen.errors import InputError
from distgen.ingest.trace import RunTrace
from distgen.workload.serving import (F_ATTENTION_TOKENS, F_CONTEXT_TOKENS, ServingParams,
                                      replay_workload)

#: Scrapes per fitting stretch (about 2 s at 4 Hz).
STRETCH_SCRAPES = 8
#: Attention FLOPs per (token, earlier position) over dense FLOPs per token, when the manifest
#: has no architecture: Qwen3-8B's value (4 x 4096 x 36 / (2 x 8.19e9)).
DEFAULT_ATTENTION_RATIO = 3.6e-5
#: Per-sequence decode time relative to the fixed iteration time, when it cannot be fitted:
#: the Qwen3-8B / A100 engine-log fit (92 us / 11.8 ms).
DEFAULT_DECODE_SEQ_RATIO = 7.8e-3
MIN_STRETCHES = 10
#: Memory bandwidth [B/s] and dense BF16 peak [FLOP/s] per GPU (NVIDIA datasheets, SXM parts,
#: A100 80 GB), for roofline estimates.
GPU_ROOFLINE = {"A100": (2.0e12, 312e12), "H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12),
                "B200": (8.0e12, 2250e12)}
#: Efficiencies of the roofline estimates, from the Qwen3-8B / A100 engine-log fit: iteration
#: 11.8 ms for 16.4 GB of weights at 2.0 TB/s (0.69); prefill 48 us/token against 52 us for
#: 16.4 GFLOP at 312 TFLOP/s (taken as 0.9 with the attention share).
BANDWIDTH_EFFICIENCY = 0.69
COMPUTE_EFFICIENCY = 0.9
#: Calibration from a request log may move a roofline estimate by at most this factor.
CALIBRATION_RANGE = 2.0

#: Architecture facts of models whose measured runs carry none (public model cards): layers,
#: model width, KV heads, head dimension, active parameters, weight bytes.
KNOWN_ARCH = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(n_layers=32, d_model=4096, n_kv=8, head_dim=128,
                                             n_active=8.03e9, w_bytes=16.06e9),
    "meta-llama/Llama-3.1-70B-Instruct": dict(n_layers=80, d_model=8192, n_kv=8, head_dim=128,
                                              n_active=70.6e9, w_bytes=141.1e9),
    "openai/gpt-oss-120b": dict(n_layers=36, d_model=2880, n_kv=8, head_dim=64,
                                n_active=5.1e9, w_bytes=65.0e9),
}


def architecture(run: RunTrace) -> dict | None:
    """The model architecture of a run: the manifest's ``arch`` block, else :data:`KNOWN_ARCH`."""
    arch = run.manifest.get("arch") if isinstance(run.manifest, dict) else None
    if isinstance(arch, dict) and {"n_layers", "d_model", "n_kv", "head_dim", "n_active",
                                   "w_bytes"} <= set(arch):
        return arch
    return KNOWN_ARCH.get(run.model_name)


def attention_ratio(arch: dict | None) -> float:
    """Attention FLOPs per (token, position) over dense FLOPs per token."""
    if arch is None:
        return DEFAULT_ATTENTION_RATIO
    return 4.0 * float(arch["d_model"]) * float(arch["n_layers"]) / (2.0 * float(arch["n_active"]))


def run_workload(run: RunTrace, params: ServingParams, offset_s: float = 0.0) -> np.ndarray:
    """Replay a run's request log through the serving model on the run's power grid.

    The run's own batching settings (``max_num_seqs``, token budget) are used, and its cached
    prompt tokens; ``offset_s`` [s] shifts the arrivals (the fitted clock offset).
    """
    req = run.requests
    settings = run.serving
    p = ServingParams(params.step_base_s, params.prefill_s_per_token, params.decode_s_per_seq,
                      settings.max_num_batched_tokens, settings.max_num_seqs,
                      params.context_s_per_token, params.prefill_attention_s_per_token)
    return replay_workload(req.arrival_s - run.start_s + offset_s, req.input_tokens,
                           req.output_tokens, p, run.n_steps, run.interval_s,
                           cached_tokens=getattr(req, "cached_tokens", None))


def measured_running(run: RunTrace) -> np.ndarray:
    """The engine's running-request gauge on the run's power grid (linear interpolation)."""
    return np.interp(run.time_s, run.engine.time_s, run.engine.running)


def _stretches(run: RunTrace, work: np.ndarray, start_s: float, stop_s: float):
    """Rows (iterations, prompt tokens, generated tokens, context tokens, positions) and elapsed
    seconds of busy stretches of the engine log inside [start_s, stop_s]."""
    e = run.engine
    inside = (e.time_s >= start_s) & (e.time_s <= stop_s)
    t = e.time_s[inside]
    grid = run.start_s + run.interval_s * np.arange(work.shape[0] + 1)
    cum = lambda col: np.interp(t, grid, np.r_[0.0, np.cumsum(work[:, col])])  # noqa: E731
    cols = np.c_[e.iterations_total[inside], e.prompt_tokens_total[inside],
                 e.generation_tokens_total[inside], cum(F_CONTEXT_TOKENS),
                 cum(F_ATTENTION_TOKENS)]
    busy = e.running[inside] > 0
    rows, dts = [], []
    i, n = 0, t.shape[0]
    while i < n - 1:
        if not (busy[i] and busy[i + 1]):
            i += 1
            continue
        j = i
        while j + 1 < n and busy[j + 1] and j - i < STRETCH_SCRAPES:
            j += 1
        if j - i >= 2:
            rows.append(cols[j] - cols[i])
            dts.append(t[j] - t[i])
        i = j
    return np.array(rows).reshape(-1, 5), np.array(dts)


def _fit_engine(windows, ratio_attn: float, settings) -> tuple[ServingParams, dict]:
    params = ServingParams(0.012, 4.5e-5, 1.2e-4, settings.max_num_batched_tokens,
                           settings.max_num_seqs, 1.2e-7, 4.5e-5 * ratio_attn)
    for _ in range(5):  # context and positions depend on the timing: iterate to a fixed point
        rows, dts = [], []
        for run, a, b in windows:
            if run.engine is None:
                continue
            r, d = _stretches(run, run_workload(run, params), run.start_s + a * run.interval_s,
                              run.start_s + b * run.interval_s)
            rows.append(r)
            dts.append(d)
        x, y = np.concatenate(rows), np.concatenate(dts)
        if x.shape[0] < MIN_STRETCHES:
            raise InputError(windows[0][0].source / "engine.csv",
                             f"only {x.shape[0]} busy stretches of the engine log to fit the "
                             f"serving model (need {MIN_STRETCHES})")
        design = np.c_[x[:, 0], x[:, 1] + ratio_attn * x[:, 4], x[:, 2], x[:, 3]]
        coef, _ = nnls(design, y)
        coef[0] = max(coef[0], 1e-3)  # an iteration is never free
        params = ServingParams(coef[0], coef[1], coef[2], settings.max_num_batched_tokens,
                               settings.max_num_seqs, coef[3], coef[1] * ratio_attn)
    rms = float(np.sqrt(np.mean((design @ coef - y) ** 2)))
    return params, {"method": "engine log (busy stretches, NNLS)", "stretches": int(y.size),
                    "rms_s": rms, "fitted": ["step_base_s", "prefill_s_per_token",
                                             "decode_s_per_seq", "context_s_per_token"],
                    "attention_ratio": ratio_attn}


def _request_log_scalar(run: RunTrace, key: str) -> float | None:
    """A summary number of the benchmark client's request log (e.g. ``median_tpot_ms``)."""
    import json

    for name in ("requests.json", "requests_core.json"):
        path = run.source / name if run.source is not None else None
        if path is not None and path.is_file():
            try:
                value = json.loads(path.read_text()).get(key)
            except (OSError, ValueError, AttributeError):
                return None
            return float(value) if isinstance(value, (int, float)) and value > 0 else None
    return None


def roofline(arch: dict, gpu: str, tp: int) -> tuple[float, float, float]:
    """(step_base_s, prefill_s_per_token, context_s_per_token) from the architecture and the
    GPU: weights over bandwidth, dense FLOPs over compute, KV bytes over bandwidth, each per
    GPU of the TP group and at the measured efficiencies."""
    bandwidth, flops = GPU_ROOFLINE.get(gpu.upper(), GPU_ROOFLINE["A100"])
    bw = bandwidth * BANDWIDTH_EFFICIENCY * tp
    base = float(arch["w_bytes"]) / bw
    if float(arch["n_active"]) < 0.5 * float(arch["w_bytes"]) / 2:  # MoE: a decode step
        base = max(2.0 * float(arch["n_active"]) / bw, 2e-3)     # reads the active experts
    prefill = 2.0 * float(arch["n_active"]) / (flops * COMPUTE_EFFICIENCY * tp)
    kv = 2.0 * float(arch["n_kv"]) * float(arch["head_dim"]) * 2.0 * float(arch["n_layers"])
    return base, prefill, kv / bw


def _fit_requests(windows, ratio_attn: float, arch: dict | None,
                  settings) -> tuple[ServingParams, dict]:
    run0 = windows[0][0]
    if arch is None:
        raise InputError(run0.source / "manifest.json",
                         f"no engine log and no model architecture ('arch') for "
                         f"{run0.model_name!r}: the serving model cannot be estimated")
    base0, prefill0, context0 = roofline(arch, run0.gpu, run0.tp)
    n_in, ttft, tpot = [], [], []
    for run, a, b in windows:
        req = run.requests.window(run.start_s + a * run.interval_s,
                                  run.start_s + b * run.interval_s)
        if req.ttft_s is not None:
            ok = req.ttft_s > 0
            n_in.append(req.input_tokens[ok])
            ttft.append(req.ttft_s[ok])
        median_tpot_ms = _request_log_scalar(run, "median_tpot_ms")
        if median_tpot_ms:
            tpot.append(median_tpot_ms / 1e3)
    clip = lambda v, ref: float(np.clip(v, ref / CALIBRATION_RANGE,  # noqa: E731
                                        ref * CALIBRATION_RANGE))
    base = clip(float(np.median(tpot)), base0) if tpot else base0
    prefill, boot, fitted = prefill0, [], []
    x = np.concatenate(n_in).astype(np.float64) if n_in else np.zeros(0)
    y = np.concatenate(ttft) if ttft else np.zeros(0)
    if x.size >= 8:
        # TTFT of a request that did not queue = one iteration + its prefill: the lower
        # quartile of (TTFT - iteration) / prompt tokens over long prompts
        long = x >= np.median(x)
        per_token = np.maximum(y[long] - base, 0.0) / x[long]
        prefill = clip(float(np.quantile(per_token, 0.25)), prefill0)
        rng = np.random.default_rng(0)
        boot = [clip(float(np.quantile(rng.choice(per_token, per_token.size), 0.25)), prefill0)
                for _ in range(100)]
        fitted.append("prefill_s_per_token")
    if tpot:
        fitted.append("step_base_s")
    params = ServingParams(base, prefill, base * DEFAULT_DECODE_SEQ_RATIO,
                           settings.max_num_batched_tokens, settings.max_num_seqs,
                           context0 * base / base0, prefill * ratio_attn)
    report = {"method": "request log (roofline, calibrated by TTFT and median TPOT)",
              "requests": int(x.size), "roofline": {"step_base_s": base0,
                                                    "prefill_s_per_token": prefill0,
                                                    "context_s_per_token": context0},
              "fitted": fitted,
              "from_roofline": [k for k in ("step_base_s", "prefill_s_per_token")
                                if k not in fitted] + ["decode_s_per_seq", "context_s_per_token",
                                                       "prefill_attention_s_per_token"],
              "attention_ratio": ratio_attn}
    if boot:
        report["prefill_s_per_token_p10_p90"] = [float(v) for v in np.percentile(boot, [10, 90])]
    return params, report


def fit_serving(windows: list[tuple[RunTrace, int, int]]) -> tuple[ServingParams, dict]:
    """Serving parameters from training windows (run, start_step, stop_step) of one
    configuration: from the engine logs where any run has one, else from the request logs.

    Returns the parameters and a report (method, sample counts, what was fitted, what came
    from architecture ratios, uncertainty where it is estimated).
    """
    run0 = windows[0][0]
    arch = architecture(run0)
    settings = run0.serving
    if any(run.engine is not None for run, _, _ in windows):
        return _fit_engine(windows, attention_ratio(arch), settings)
    return _fit_requests(windows, attention_ratio(arch), arch, settings)
