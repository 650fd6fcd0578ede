"""Reader for the benchmark client's request log (vLLM ``benchmark_serving.py`` output).

Three forms of one JSON object with per-request arrays (aligned, one entry per request):

* ``requests.json``: ``benchmark_serving.py --save-detailed`` output as the measured runs
  write it (``input_lens``, ``output_lens``, ``ttfts``, ``itls``, ``request_timestamps``
  [Unix epoch s], maybe more keys); ``requests_core.json`` is the same without ``itls``;
* the result JSON of ``vllm bench serve --save-result --save-detailed`` (file name like
  ``vllm-4.0qps-Qwen3-8B-20260721-111507.json``): the same arrays, with ``start_times`` (the
  send time of each request on the client's monotonic clock) instead of
  ``request_timestamps``, ``latencies``, and ``errors`` (a non-empty string marks a failed
  request, which is dropped).

Optional per-request keys: ``cached_prompt_tokens`` (aliases :data:`CACHED_KEYS`) and
``turn_idx``. :func:`find_request_log` says which file of a run folder is the log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distgen.errors import InputError
from distgen.ingest.manifest import load_json
from distgen.ingest.trace import RequestLog

REQUEST_FILES = ("requests.json", "requests_core.json")
#: Per-request arrival-time keys, in order of preference.
ARRIVAL_KEYS = ("request_timestamps", "start_times")
#: Per-request prompt tokens served from the prefix cache.
CACHED_KEYS = ("cached_prompt_tokens", "cached_tokens", "num_cached_tokens")
#: Earliest plausible Unix-epoch time of a request (2001-09-09): smaller values are on another
#: clock (``time.perf_counter``: seconds since boot on Linux).
_EPOCH_MIN_S = 1e9


def find_request_log(run_dir: Path) -> Path:
    """The request log of a run folder.

    Rule: ``requests.json``, else ``requests_core.json``, else the only other ``*.json`` file
    in the folder besides ``manifest.json`` (and ``*.pytorch.json`` side files), e.g. a
    ``vllm bench serve`` result file under its own name. Several candidates are an
    :class:`InputError` listing them.
    """
    for name in REQUEST_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    others = sorted(p.name for p in run_dir.glob("*.json")
                    if p.name != "manifest.json" and not p.name.endswith(".pytorch.json"))
    if len(others) == 1:
        return run_dir / others[0]
    if not others:
        raise InputError(run_dir / REQUEST_FILES[0],
                         f"file not found (nor {REQUEST_FILES[1]}, nor another *.json request "
                         f"log): the run has no request log")
    raise InputError(run_dir, f"no requests.json, and several JSON files could be the request "
                     f"log: {others}; rename the one to use to requests.json")


def _numbers(path: Path, key: str, value: object, n: int | None,
             against: str = "request_timestamps") -> np.ndarray:
    """A JSON list of finite numbers as float64; an InputError names the key and index."""
    if not isinstance(value, list):
        raise InputError(path, f"'{key}' must be a list, got {type(value).__name__}", column=key)
    if n is not None and len(value) != n:
        raise InputError(path, f"'{key}' has {len(value)} entries but '{against}' has {n}",
                         column=key)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(path, f"'{key}'[{i}] is not a number: {v!r}", column=key)
    out = np.array(value, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise InputError(path, f"'{key}'[{int(bad[0])}] is not finite: {out[bad[0]]}",
                         column=key)
    return out


def _tokens(path: Path, key: str, value: object, n: int, against: str) -> np.ndarray:
    out = _numbers(path, key, value, n, against)
    bad = np.flatnonzero((out < 0) | (out != np.round(out)))
    if bad.size:
        raise InputError(path, f"'{key}'[{int(bad[0])}] = {out[bad[0]]:g} is not a "
                         f"non-negative whole number of tokens", column=key)
    return out.astype(np.int64)


def _decode_s(path: Path, itls: object, n: int, against: str) -> np.ndarray | None:
    """[s] Sum of each request's inter-token latencies; None for a flat (not per-request) list."""
    if not isinstance(itls, list):
        raise InputError(path, f"'itls' must be a list, got {type(itls).__name__}", column="itls")
    if not any(isinstance(x, list) for x in itls):
        return None  # a flat list (e.g. trace-replay logs) cannot be split per request
    if len(itls) != n:
        raise InputError(path, f"'itls' has {len(itls)} entries but '{against}' has {n}",
                         column="itls")
    out = np.empty(n)
    for i, row in enumerate(itls):
        if not isinstance(row, list):
            raise InputError(path, f"'itls'[{i}] is not a list: {row!r}", column="itls")
        out[i] = _numbers(path, f"itls[{i}]", row, None).sum()
    return out


def _arrival_key(path: Path, doc: dict) -> str:
    """The arrival-time key of the log; a log without one gets an error saying what to add."""
    key = next((k for k in ARRIVAL_KEYS if k in doc), None)
    if key is not None:
        return key
    if "input_lens" not in doc and any(k in doc for k in ("completed", "total_input_tokens")):
        raise InputError(path, "a benchmark result without per-request arrays (saved without "
                         "--save-detailed): re-run the benchmark with --save-result "
                         "--save-detailed", column="input_lens")
    raise InputError(path, f"no per-request arrival times: none of the keys {list(ARRIVAL_KEYS)}; "
                     f"keys found: {sorted(doc)}. A result that records only its 'date' and "
                     f"'request_rate' / 'burstiness' / seed cannot give them (the seed fixes "
                     f"the sequence of gaps, not the start instant or the client's delays): "
                     f"use `vllm bench serve --save-result --save-detailed` (it writes "
                     f"'start_times') or add 'request_timestamps' [Unix epoch s]",
                     column=ARRIVAL_KEYS[0])


def read_requests(path: Path, *, epoch_offset_s: float = 0.0,
                  basis: str = "unix_epoch") -> RequestLog:
    """Read a request log into a :class:`RequestLog`, sorted by arrival.

    Parameters
    ----------
    path : a request log (module docstring); needs an arrival key (:data:`ARRIVAL_KEYS`),
        ``input_lens`` and ``output_lens``.
    epoch_offset_s : [s] added to the arrival times (``clock.request_epoch_offset_s``); with
        ``basis = "monotonic"`` it is the Unix-epoch time of the client clock's zero.
    basis : ``"unix_epoch"`` or ``"monotonic"`` (``clock.request_timestamp_basis``).

    Returns
    -------
    RequestLog; ``ttft_s`` is None without ``ttfts``; ``latency_s`` is ``latencies`` when
    present, else ttft + sum(itls), else None; ``cached_tokens`` zeros without a cached-token
    key; ``turn_index`` None without ``turn_idx``. Requests with a non-empty ``errors`` entry
    (failed) are dropped.

    Raises
    ------
    InputError
        naming the key (and index) of a missing, misaligned or invalid array, cached tokens
        above the prompt length, or arrival times that are not on the Unix-epoch clock
        although ``basis`` says so.
    """
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise InputError(path, "the request log must be a JSON object")
    when = _arrival_key(path, doc)
    for key in ("input_lens", "output_lens"):
        if key not in doc:
            raise InputError(path, f"missing key '{key}'; keys found: {sorted(doc)}", column=key)
    arrival = _numbers(path, when, doc[when], None)
    n = arrival.size
    if n == 0:
        raise InputError(path, f"no requests ('{when}' is empty)", column=when)
    inputs = _tokens(path, "input_lens", doc["input_lens"], n, when)
    outputs = _tokens(path, "output_lens", doc["output_lens"], n, when)
    ttft = (_numbers(path, "ttfts", doc["ttfts"], n, when)
            if doc.get("ttfts") is not None else None)
    latency = None
    if doc.get("latencies") is not None:
        latency = _numbers(path, "latencies", doc["latencies"], n, when)
    elif ttft is not None and doc.get("itls") is not None:
        decode = _decode_s(path, doc["itls"], n, when)
        latency = None if decode is None else ttft + decode
    cached_key = next((k for k in CACHED_KEYS if doc.get(k) is not None), None)
    cached = None
    if cached_key is not None:
        cached = _tokens(path, cached_key, doc[cached_key], n, when)
        over = np.flatnonzero(cached > inputs)
        if over.size:
            i = int(over[0])
            raise InputError(path, f"'{cached_key}'[{i}] = {cached[i]} is more than the "
                             f"prompt's {inputs[i]} tokens ('input_lens'[{i}])", column=cached_key)
    turn = (_tokens(path, "turn_idx", doc["turn_idx"], n, when)
            if doc.get("turn_idx") is not None else None)

    ok = np.ones(n, bool)
    if doc.get("errors") is not None:
        errors = doc["errors"]
        if not isinstance(errors, list) or len(errors) != n:
            raise InputError(path, f"'errors' must be a list of {n} entries", column="errors")
        ok = np.array([not e for e in errors], bool)
        if not ok.any():
            raise InputError(path, f"every request failed ('errors'[0] = {errors[0]!r})",
                             column="errors")

    if basis == "unix_epoch" and arrival[ok].min() < _EPOCH_MIN_S:
        i = int(np.flatnonzero(ok)[np.argmin(arrival[ok])])
        raise InputError(path, f"'{when}'[{i}] = {arrival[i]:.3f} is not a Unix-epoch time "
                         f"(before 2001): on a monotonic client clock (vllm bench serve "
                         f"writes time.perf_counter()), set clock.request_timestamp_basis = "
                         f"\"monotonic\" and clock.request_epoch_offset_s (epoch minus that "
                         f"clock at one instant) in manifest.json", column=when)
    order = np.flatnonzero(ok)[np.argsort(arrival[ok], kind="stable")]
    pick = (lambda a: None if a is None else a[order])
    return RequestLog(arrival[order] + epoch_offset_s, inputs[order], outputs[order],
                      pick(ttft), pick(latency), pick(cached), pick(turn))
