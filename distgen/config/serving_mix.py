"""Which serving configuration each row of the site runs (standard library only).

A facility gives its serving mix in one of three forms (``facility.*``):

* ``row_serving``: one id for every row, or exactly one id per row;
* ``row_serving_pattern``: a list of ids repeated over the rows (row ``r`` runs
  ``pattern[r % len(pattern)]``), e.g. a 10-row block of a 500-row site;
* ``row_serving_shares``: ``{id: share}``, relative weights (normalised to sum 1). Rows are
  assigned deterministically: each id gets its quota ``share x rows`` rounded down, the rows
  left go to the largest remainders (ties: the order the ids are listed in), and the ids are
  then spread evenly over the site (id ``i`` with ``n_i`` rows sits at the rows nearest to
  ``(j + 1/2) x rows / n_i``, j = 0..n_i-1). The counts are reported in the manifest.

None given means :data:`DEFAULT_ROW_SERVING` for every row. :func:`row_counts` needs only the
mix (a few entries), never one entry per row, so the size of a site can be judged before its
rows are laid out (:func:`row_serving_ids`).
"""

from __future__ import annotations

import math

#: The serving configuration of every row when a facility names none.
DEFAULT_ROW_SERVING = ("qwen3-8b_A100_tp1",)

FORMS = ("row_serving", "row_serving_pattern", "row_serving_shares")


def mix_form(facility) -> str:
    """Which key gives the mix: one of :data:`FORMS`, or ``"default"``."""
    given = [k for k in FORMS if getattr(facility, k) is not None]
    return given[0] if given else "default"


def mix_ids(facility) -> tuple[str, ...]:
    """The serving ids the mix names, in the order given (duplicates kept)."""
    form = mix_form(facility)
    if form == "default":
        return DEFAULT_ROW_SERVING
    value = getattr(facility, form)
    return tuple(value) if form != "row_serving_shares" else tuple(value.keys())


def share_row_counts(shares: dict, rows: int) -> dict[str, int]:
    """Rows per id for relative ``shares`` over ``rows`` rows (largest remainders; ties go to
    the id listed first). The counts sum to ``rows``."""
    total = math.fsum(shares.values())
    quotas = {k: rows * v / total for k, v in shares.items()}
    counts = {k: int(math.floor(q)) for k, q in quotas.items()}
    left = rows - sum(counts.values())
    order = list(shares)
    by_remainder = sorted(order, key=lambda k: (-(quotas[k] - counts[k]), order.index(k)))
    for k in by_remainder[:left]:
        counts[k] += 1
    return counts


def row_counts(facility) -> dict[str, int]:
    """Rows per serving id over ``facility.rows`` rows, in the order of first appearance;
    computed from the mix alone (O(entries), whatever the number of rows)."""
    rows = facility.rows
    form = mix_form(facility)
    if form == "row_serving_shares":
        return share_row_counts(dict(facility.row_serving_shares), rows)
    ids = mix_ids(facility)
    counts: dict[str, int] = {}
    if form == "row_serving_pattern":
        whole, rest = divmod(rows, len(ids))
        for i, sid in enumerate(ids):
            counts[sid] = counts.get(sid, 0) + whole + (1 if i < rest else 0)
        return counts
    if len(ids) == 1:
        return {ids[0]: rows}
    for sid in ids:
        counts[sid] = counts.get(sid, 0) + 1
    return counts


def spread_rows(counts: dict[str, int]) -> tuple[str, ...]:
    """The row order of :func:`share_row_counts`: each id's rows evenly spaced over the site
    (deterministic; ties in position go to the id listed first)."""
    rows = sum(counts.values())
    order = list(counts)
    keys = [((j + 0.5) * rows / n, order.index(sid), sid)
            for sid, n in counts.items() for j in range(n)]
    keys.sort()
    return tuple(k[2] for k in keys)


def row_serving_ids(facility) -> tuple[str, ...]:
    """The serving id of every row (``facility.rows`` entries)."""
    rows = facility.rows
    form = mix_form(facility)
    if form == "row_serving_shares":
        return spread_rows(share_row_counts(dict(facility.row_serving_shares), rows))
    ids = mix_ids(facility)
    if form == "row_serving_pattern":
        return tuple(ids[r % len(ids)] for r in range(rows))
    return ids * rows if len(ids) == 1 else ids


def mix_report(facility) -> dict:
    """What the manifest records of the mix: the form it was given in and the rows per id."""
    counts = row_counts(facility)
    doc = {"form": mix_form(facility), "rows": counts}
    if doc["form"] == "row_serving_shares":
        total = math.fsum(facility.row_serving_shares.values())
        doc["requested_shares"] = {k: v / total for k, v in facility.row_serving_shares.items()}
    return doc
