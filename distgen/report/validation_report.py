"""``distgen validate --report DIR``: measured against generated, per held-out run.

The series come from :func:`distgen.analysis.validation.validate` through its ``collect``
argument: one ``(config_id, run_id, measured_w, generated_w_seed0, interval_s)`` per held-out
window. The scores table is the validation result itself (the same numbers as ``--json``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from distgen import __version__
from distgen.analysis.metrics import autocorrelation
from distgen.io.outdir import write_json_atomic
from distgen.report import figures
from distgen.report.document import Document

MAX_LAG = 50


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "run"


def _f(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def write_validation_report(folder: str | Path, results: dict, collected: list,
                            *, library_version: str | None = None) -> dict:
    """Figures (one per held-out run: overlay, CDFs, ACFs), ``validation.md``,
    ``validation.html`` and ``validation.json`` in ``folder``.

    Parameters
    ----------
    results : :func:`distgen.analysis.validation.validate`'s result.
    collected : the tuples its ``collect`` argument gathered.
    library_version : the model library's version, printed in every caption.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"model library {library_version}" if library_version else "model library"
    stamp = f"{tag} | distgen {__version__}"
    doc = Document("distgen validation report")
    doc.para(f"Held-out fidelity of the power model ({tag}) against measured runs (MODEL.md "
             "section 4). Each held-out run is regenerated from its request log alone; the "
             "figures show seed 0, the table the median over seeds.")
    rows = []
    for cid, r in results.items():
        if r.get("status") == "no model":
            rows.append([cid, r["runs"], "no model"] + ["-"] * 7)
            continue
        b = r["baselines"]
        rows.append([cid, r["runs"], r["split"], _f(r["energy_err_pct"], "{:.2f}"), _f(r["ks"]),
                     _f(r["acf_r2"]), _f(r["nrmse"]), _f(r["p99_err_pct"], "{:.2f}"),
                     _f(b["tdp"]["energy_err_pct"], "{:.1f}"),
                     _f(b["mean"]["energy_err_pct"], "{:.1f}")])
    doc.table(["config", "runs", "split", "energy err [%]", "KS [-]", "ACF R2 [-]", "NRMSE [-]",
               "P99 err [%]", "TDP energy err [%]", "mean energy err [%]"], rows)
    seen: dict[str, int] = {}
    for config_id, run_id, measured, generated, interval_s in collected:
        y = np.asarray(measured, dtype=np.float64)
        g = np.asarray(generated, dtype=np.float64)
        name = _slug(f"{config_id}__{run_id}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name += f"_{seen[name]}"
        lag = min(MAX_LAG, y.size - 1, g.size - 1)
        lags = np.arange(lag + 1)
        path = figures.validation_run(
            folder / f"validation_{name}.png",
            title=f"Held-out run {run_id} ({config_id}): measured against generated",
            interval_s=float(interval_s), measured_w=y, generated_w=g, acf_lags=lags,
            acf_measured=autocorrelation(y, lag), acf_generated=autocorrelation(g, lag),
            stamp=stamp)
        doc.heading(f"{config_id}: {run_id}", 3)
        energy = 100 * abs(g.sum() - y.sum()) / y.sum() if y.sum() else float("nan")
        doc.figure(path, f"Measured and generated (seed 0) power of held-out run `{run_id}` of "
                   f"`{config_id}` over {y.size * interval_s:g} s: time series, power CDFs and "
                   f"autocorrelation up to {lag * interval_s:g} s (energy error of this seed "
                   f"{energy:.2f} %). {tag}.")
    js = write_json_atomic(folder / "validation.json", results)
    md, page = doc.write(folder, "validation")
    return {"markdown": md, "html": page, "json": js, "figures": doc.figures()}
