"""Reader for the benchmark client's request log (vLLM ``benchmark_serving.py`` output).

``requests.json`` is the full ``--save-detailed`` output (``input_lens``, ``output_lens``,
``ttfts``, ``itls``, ``request_timestamps``, maybe more keys); ``requests_core.json`` is the
same without ``itls`` (and possibly without ``ttfts``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distgen.errors import InputError
from distgen.ingest.manifest import load_json
from distgen.ingest.trace import RequestLog

REQUEST_FILES = ("requests.json", "requests_core.json")


def _numbers(path: Path, key: str, value: object, n: int | None) -> np.ndarray:
    """A JSON list of finite numbers as float64; an InputError names the key and index."""
    if not isinstance(value, list):
        raise InputError(path, f"'{key}' must be a list, got {type(value).__name__}", column=key)
    if n is not None and len(value) != n:
        raise InputError(path, f"'{key}' has {len(value)} entries but 'request_timestamps' "
                         f"has {n}", column=key)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(path, f"'{key}'[{i}] is not a number: {v!r}", column=key)
    out = np.array(value, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise InputError(path, f"'{key}'[{int(bad[0])}] is not finite: {out[bad[0]]}",
                         column=key)
    return out


def _tokens(path: Path, key: str, value: object, n: int) -> np.ndarray:
    out = _numbers(path, key, value, n)
    bad = np.flatnonzero((out < 0) | (out != np.round(out)))
    if bad.size:
        raise InputError(path, f"'{key}'[{int(bad[0])}] = {out[bad[0]]:g} is not a "
                         f"non-negative whole number of tokens", column=key)
    return out.astype(np.int64)


def _decode_s(path: Path, itls: object, n: int) -> np.ndarray | None:
    """[s] Sum of each request's inter-token latencies; None for a flat (not per-request) list."""
    if not isinstance(itls, list):
        raise InputError(path, f"'itls' must be a list, got {type(itls).__name__}", column="itls")
    if not any(isinstance(x, list) for x in itls):
        return None  # a flat list (e.g. trace-replay logs) cannot be split per request
    if len(itls) != n:
        raise InputError(path, f"'itls' has {len(itls)} entries but 'request_timestamps' has "
                         f"{n}", column="itls")
    out = np.empty(n)
    for i, row in enumerate(itls):
        if not isinstance(row, list):
            raise InputError(path, f"'itls'[{i}] is not a list: {row!r}", column="itls")
        out[i] = _numbers(path, f"itls[{i}]", row, None).sum()
    return out


def read_requests(path: Path, *, epoch_offset_s: float = 0.0) -> RequestLog:
    """Read a request log into a :class:`RequestLog`, sorted by arrival.

    Parameters
    ----------
    path : ``requests.json`` or ``requests_core.json``.
    epoch_offset_s : [s] added to ``request_timestamps`` (``clock.request_epoch_offset_s``).

    Returns
    -------
    RequestLog; ``ttft_s`` is None without ``ttfts``, ``latency_s`` (= ttft + sum(itls)) is
    None without both ``ttfts`` and per-request ``itls``.
    """
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise InputError(path, "the request log must be a JSON object")
    for key in ("request_timestamps", "input_lens", "output_lens"):
        if key not in doc:
            raise InputError(path, f"missing key '{key}'; keys found: {sorted(doc)}", column=key)
    arrival = _numbers(path, "request_timestamps", doc["request_timestamps"], None)
    n = arrival.size
    if n == 0:
        raise InputError(path, "no requests ('request_timestamps' is empty)",
                         column="request_timestamps")
    inputs = _tokens(path, "input_lens", doc["input_lens"], n)
    outputs = _tokens(path, "output_lens", doc["output_lens"], n)
    ttft = _numbers(path, "ttfts", doc["ttfts"], n) if doc.get("ttfts") is not None else None
    latency = None
    if ttft is not None and doc.get("itls") is not None:
        decode = _decode_s(path, doc["itls"], n)
        latency = None if decode is None else ttft + decode
    order = np.argsort(arrival, kind="stable")
    pick = (lambda a: None if a is None else a[order])
    return RequestLog(arrival[order] + epoch_offset_s, inputs[order], outputs[order],
                      pick(ttft), pick(latency))
