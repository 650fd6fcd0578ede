"""Request-trace CSVs (arrival time, prompt tokens, generated tokens, optionally cached
prompt tokens) for replay workloads.

Two layouts are read, with column names matched case-insensitively:

* the Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``, timestamps like
  ``2023-11-16 18:17:03.9799600``, CRLF line ends);
* a plain one: ``timestamp`` (ISO date/time or seconds) or ``arrival_time_s`` [s], and
  ``input_tokens`` / ``prompt_tokens`` / ``input_lens``, ``output_tokens`` /
  ``completion_tokens`` / ``output_lens``; optionally ``cached_tokens`` /
  ``cached_prompt_tokens`` / ``num_cached_tokens`` (prompt tokens served from the prefix cache).

Parsing is done by ``pyarrow.csv`` (millions of rows in seconds); when something is wrong,
a slower pass finds the file line so the :class:`~distgen.errors.InputError` can name it.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from distgen.errors import InputError

TIME_COLUMNS = ("timestamp", "arrival_time_s", "arrival_s", "arrival_time")
INPUT_COLUMNS = ("contexttokens", "context_tokens", "input_tokens", "prompt_tokens",
                 "input_lens", "input_len")
OUTPUT_COLUMNS = ("generatedtokens", "generated_tokens", "output_tokens", "completion_tokens",
                  "output_lens", "output_len")
CACHED_COLUMNS = ("cached_tokens", "cached_prompt_tokens", "num_cached_tokens")
_ROLES = (("arrival time", TIME_COLUMNS), ("input tokens", INPUT_COLUMNS),
          ("output tokens", OUTPUT_COLUMNS))
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NS_PER_S = 1e9


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = next(csv.reader(fh), None)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, expected a CSV file") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason})", line=1) from None
    if not first or not any(c.strip() for c in first):
        raise InputError(path, "empty trace: no header line and no requests", line=1)
    return [c.strip() for c in first]


@dataclass(frozen=True)
class RequestTrace:
    """A request trace, sorted by arrival (arrays aligned).

    Attributes
    ----------
    arrival_s : float64 (n,) [s] arrival time relative to the first request (first = 0.0).
    input_tokens : int64 (n,) [tokens] prompt length.
    output_tokens : int64 (n,) [tokens] generated length.
    cached_tokens : int64 (n,) [tokens] prompt tokens served from the prefix cache
        (``<= input_tokens``); zeros when the trace has no cached-tokens column.
    """

    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    cached_tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])


def _pick_columns(path: Path, header: list[str]) -> list[str]:
    """The header names of (time, input, output[, cached]), matched case-insensitively."""
    picked = []
    for role, accepted in _ROLES + (("cached tokens", CACHED_COLUMNS),):
        hits = [c for c in header if c.lower() in accepted]
        if not hits and accepted is CACHED_COLUMNS:
            break  # optional
        if not hits:
            raise InputError(path, f"no {role} column; columns found: {header}; accepted "
                             f"names (any case): {list(accepted)}", line=1)
        if len(hits) > 1:
            raise InputError(path, f"more than one {role} column: {hits}; keep one", line=1)
        picked.append(hits[0])
    return picked


def _file_line(path: Path, row: int) -> int | None:
    """1-based file line where data row ``row`` (0-based, blank lines skipped) starts."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        i = 0
        start = reader.line_num + 1
        for rec in reader:
            if rec and any(f.strip() for f in rec):
                if i == row:
                    return start
                i += 1
            start = reader.line_num + 1
    return None


def _bad_field_count_line(path: Path, n_fields: int) -> tuple[int, int] | None:
    """(line, field count) of the first data row whose field count differs from the header."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        start = reader.line_num + 1
        for rec in reader:
            if rec and any(f.strip() for f in rec) and len(rec) != n_fields:
                return start, len(rec)
            start = reader.line_num + 1
    return None


def _read_table(path: Path, header: list[str], names: list[str]) -> list[pa.Array]:
    """The named columns as string arrays, in the order of ``names``."""
    keys = [f"c{i}" for i in range(len(header))]
    wanted = [keys[header.index(n)] for n in names]
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(encoding="utf8", column_names=keys, skip_rows=1),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=True),
            convert_options=pcsv.ConvertOptions(
                include_columns=wanted, column_types={k: pa.string() for k in wanted},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        bad = _bad_field_count_line(path, len(header))
        if bad is not None:
            line, got = bad
            raise InputError(path, f"has {got} fields, the header has {len(header)}",
                             line=line) from None
        raise InputError(path, f"cannot parse as CSV: {exc}") from None
    return [table.column(k).combine_chunks() for k in wanted]


def _first_bad(mask_ok: pa.Array) -> int | None:
    ok = np.asarray(mask_ok.to_numpy(zero_copy_only=False), dtype=bool)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def _tokens(path: Path, name: str, col: pa.Array) -> np.ndarray:
    """A token-count column as int64; errors name the line of the first bad value."""
    text = pc.utf8_trim_whitespace(col)
    row = _first_bad(pc.match_substring_regex(text, _NUMBER_RE))
    if row is not None:
        raise InputError(path, f"{text[row].as_py()!r} is not a number of tokens",
                         line=_file_line(path, row), column=name)
    values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((values < 0) | (values != np.floor(values)) | ~np.isfinite(values))
    if bad.size:
        row = int(bad[0])
        what = "negative" if values[row] < 0 else "not a whole number"
        raise InputError(path, f"{text[row].as_py()!r} tokens is {what}",
                         line=_file_line(path, row), column=name)
    return values.astype(np.int64)


def _parses(value: str, target: pa.DataType) -> bool:
    try:
        pc.cast(pa.array([value], pa.string()), target)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def _arrival_s(path: Path, name: str, col: pa.Array) -> np.ndarray:
    """[s] Arrival times: seconds as given, or date/times as seconds since their minimum."""
    text = pc.utf8_trim_whitespace(col)
    bad = _first_bad(pc.match_substring_regex(text, _NUMBER_RE))
    if bad is None:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    if bad > 0 and re.match(_NUMBER_RE, text[0].as_py() or ""):
        # a column of seconds with one bad value ("nan", "", "inf", text): blame that line
        value = text[bad].as_py()
        raise InputError(path, f"{value!r} is not a number of seconds (the rows before it "
                         f"are)", line=_file_line(path, bad), column=name)
    for target in (pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
        try:
            stamps = pc.cast(text, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        ns = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return (ns - ns.min()).astype(np.float64) / _NS_PER_S
    # Errors only: find the first row that does not parse like the first parsable one.
    targets = (pa.timestamp("ns"), pa.timestamp("ns", tz="UTC"))
    first = text[0].as_py()
    zone = next((t for t in targets if _parses(first, t)), targets[0])
    chunk = 8192
    for start in range(0, len(text), chunk):
        piece = text.slice(start, chunk)
        try:
            pc.cast(piece, zone)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        for offset, value in enumerate(piece.to_pylist()):
            if _parses(value, zone):
                continue
            line = _file_line(path, start + offset)
            if not value:
                raise InputError(path, "empty timestamp", line=line, column=name)
            if any(_parses(value, t) for t in targets):
                raise InputError(path, f"timestamp {value!r} mixes times with and without a "
                                 f"UTC offset", line=line, column=name)
            if re.match(_NUMBER_RE, value):
                raise InputError(path, f"{value!r} is a number of seconds but other rows are "
                                 f"date/times", line=line, column=name)
            raise InputError(path, f"cannot parse timestamp {value!r}; use ISO 8601 "
                             f"(2023-11-16 18:17:03.97996) or seconds", line=line, column=name)
    raise InputError(path, "cannot parse the timestamps", column=name)  # not reached


def read_request_trace(path: str | Path) -> RequestTrace:
    """Read a request-arrival trace, sorted by arrival.

    Parameters
    ----------
    path : CSV with an arrival-time column, input/output token-count columns and optionally a
        cached-tokens column (see the module docstring for the accepted names and formats).

    Returns
    -------
    :class:`RequestTrace` (cached tokens zero without that column).

    Raises
    ------
    InputError : missing file, missing column (listing those found and those accepted),
        non-numeric or negative token counts, cached tokens above the prompt length,
        unparsable timestamps, wrong field counts or an empty trace, naming the file and
        (where it applies) the line and column.
    """
    path = Path(path)
    header = _header(path)
    names = _pick_columns(path, header)
    cols = _read_table(path, header, names)
    if len(cols[0]) == 0:
        raise InputError(path, "empty trace: the header has no requests under it")
    arrival = _arrival_s(path, names[0], cols[0])
    bad = np.flatnonzero(~np.isfinite(arrival))
    if bad.size:
        raise InputError(path, "arrival time is not finite", line=_file_line(path, int(bad[0])),
                         column=names[0])
    input_tokens = _tokens(path, names[1], cols[1])
    output_tokens = _tokens(path, names[2], cols[2])
    if len(names) > 3:
        cached_tokens = _tokens(path, names[3], cols[3])
        over = np.flatnonzero(cached_tokens > input_tokens)
        if over.size:
            row = int(over[0])
            raise InputError(path, f"{cached_tokens[row]} cached tokens is more than the "
                             f"prompt's {input_tokens[row]}", line=_file_line(path, row),
                             column=names[3])
    else:
        cached_tokens = np.zeros(arrival.size, np.int64)
    if np.any(np.diff(arrival) < 0):
        order = np.argsort(arrival, kind="stable")
        arrival, input_tokens, output_tokens, cached_tokens = (
            arrival[order], input_tokens[order], output_tokens[order], cached_tokens[order])
    arrival = arrival - arrival[0]
    return RequestTrace(arrival, input_tokens, output_tokens, cached_tokens)
