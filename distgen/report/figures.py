"""Report figures (PNG, matplotlib's Agg backend; no display, no pyplot state).

Every function draws one figure from plain arrays, gives each axis its unit and the figure a
title saying what it shows, prints ``stamp`` (the run's config hash) in its footer, and writes
the PNG to ``path``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 110
_KW = 1e3
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _figure(title: str, stamp: str, *, width: float = 10.0, height: float = 5.5,
            rows: int = 1, cols: int = 1, sharex=False):
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    fig.suptitle(title, fontsize=12)
    fig.text(0.99, 0.005, stamp, ha="right", va="bottom", fontsize=7, color="#555")
    return fig, axes


_UNIT = re.compile(r"\[[^\]]+\]")


def check_axes(fig) -> None:
    """Every visible axes has a title or the figure has one, and both axis labels name a
    unit in brackets (a time axis may instead say it is local clock time)."""
    if not fig.get_suptitle():
        raise ValueError("figure without a title")
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        x, y = ax.get_xlabel(), ax.get_ylabel()
        if not x:  # a twin axes: the label of the axes it shares x with
            x = next((a.get_xlabel() for a in ax.get_shared_x_axes().get_siblings(ax)
                      if a.get_xlabel()), "")
        if not (_UNIT.search(x) or x.startswith("local time")):
            raise ValueError(f"x axis label {x!r} names no unit")
        if not _UNIT.search(y):
            raise ValueError(f"y axis label {y!r} names no unit")


def _save(fig, path: Path) -> Path:
    check_axes(fig)
    fig.tight_layout(rect=(0, 0.025, 1, 0.97))
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return Path(path)


def _clock(start: dt.datetime, time_s) -> np.ndarray:
    return np.datetime64(start, "ms") + np.round(np.asarray(time_s) * 1e3).astype(
        "timedelta64[ms]")


def _steps(ax, start, time_s, power_w, resolution_s, **kw):
    """Block means as a step line covering each block."""
    x = _clock(start, np.append(time_s, time_s[-1] + resolution_s))
    y = np.append(power_w, power_w[-1]) / _KW
    ax.step(x, y, where="post", **kw)


def _means_label(resolution_s: float) -> str:
    if resolution_s < 60:
        return f"{resolution_s:g} s means"
    if resolution_s < 3600:
        return f"{resolution_s / 60:g} min means"
    return f"{resolution_s / 3600:g} h means"


def site_power(path: Path, *, start: dt.datetime, series: list[tuple[float, np.ndarray,
               np.ndarray]], zoom: tuple[float, np.ndarray, np.ndarray] | None,
               zoom_coarse: tuple[float, np.ndarray, np.ndarray] | None, stamp: str) -> Path:
    """Site facility power at every resolution on one time axis, plus a zoom on the peak.

    series : (resolution_s, time_s, facility_power_w) per resolution, finest first.
    zoom : (resolution_s, time_s, power_w) of the finest series in the zoom window.
    zoom_coarse : the 1-minute (or next coarser) series in that window.
    """
    rows = 2 if zoom is not None else 1
    fig, axes = _figure("Site facility power at each output resolution", stamp, height=7.5,
                        rows=rows)
    ax = axes[0, 0]
    for k, (res, t, p) in enumerate(series):
        label = _means_label(res)
        style = dict(lw=0.5, alpha=0.45, color="#888") if k == 0 and len(series) > 1 else \
            dict(lw=1.4, color=_COLORS[k % len(_COLORS)])
        _steps(ax, start, t, p, res, label=label, **style)
    ax.set_xlabel(f"local time from {start.isoformat(sep=' ')}")
    ax.set_ylabel("facility power [kW]")
    ax.set_title("whole run", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    if zoom is not None:
        ax = axes[1, 0]
        res, t, p = zoom
        _steps(ax, start, t, p, res, lw=0.8, color="#444", label=_means_label(res))
        if zoom_coarse is not None:
            r2, t2, p2 = zoom_coarse
            _steps(ax, start, t2, p2, r2, lw=1.6, color=_COLORS[1], label=_means_label(r2))
        ax.set_xlabel("local time")
        ax.set_ylabel("facility power [kW]")
        ax.set_title(f"zoom: {len(t) * res / 60:g} minutes around the {res:g} s peak",
                     fontsize=10)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def load_duration(path: Path, *, panels: list[tuple[str, float, list[tuple[np.ndarray,
                  np.ndarray]], list[str]]], stamp: str) -> Path:
    """Load-duration curves, one panel per level.

    panels : (level label, resolution_s, [(exceedance share, power_w) per curve], curve
        labels (shown as a legend when there are at most 10 curves)).
    """
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = _figure("Load-duration curves per level (power sorted from highest to lowest)",
                        stamp, height=3.2 * rows + 1, rows=rows, cols=cols)
    for i, (label, res, curves, names) in enumerate(panels):
        ax = axes[i // cols, i % cols]
        alpha = 1.0 if len(curves) <= 3 else max(0.15, 3.0 / len(curves))
        for k, (share, p) in enumerate(curves):
            ax.plot(100 * share, p / _KW, lw=1.0 if len(curves) <= 3 else 0.7, alpha=alpha,
                    color=_COLORS[k % len(_COLORS)] if len(curves) <= 10 else "#1f77b4",
                    label=names[k] if len(curves) <= 10 else None)
        if len(curves) <= 10:
            ax.legend(fontsize=7, loc="best")
        ax.set_title(f"{label} ({len(curves)} curve{'s' if len(curves) > 1 else ''}, "
                     f"{res:g} s)", fontsize=10)
        ax.set_xlabel("share of time at or above [%]")
        ax.set_ylabel("power [kW]")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return _save(fig, path)


def ramp_distribution(path: Path, *, ramps: list[tuple[str, np.ndarray]], stamp: str) -> Path:
    """Histograms of changes between consecutive block means.

    ramps : (window label, differences [W]) per window, e.g. ("1 min", diffs).
    """
    fig, axes = _figure("Site facility ramp sizes: change between consecutive means", stamp,
                        rows=1, cols=len(ramps), height=4.5)
    for i, (label, d) in enumerate(ramps):
        ax = axes[0, i]
        d = np.asarray(d) / _KW
        bins = max(5, min(60, int(np.sqrt(max(d.size, 1))) * 2))
        ax.hist(d, bins=bins, color=_COLORS[i], alpha=0.8)
        ax.axvline(0, color="#444", lw=0.8)
        ax.set_title(f"{label} ramps ({d.size} changes; largest up {d.max():,.1f}, down "
                     f"{max(-d.min(), 0):,.1f} kW)", fontsize=9)
        ax.set_xlabel(f"change over {label} [kW]")
        ax.set_ylabel("number of intervals [-]")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def peaks_vs_limits(path: Path, *, panels: list[dict], stamp: str) -> Path:
    """Peak of each entity against the TDP and mean-power baselines (and a breaker limit).

    panels : dicts with ``level``, ``resolution_s``, ``ids``, ``peak_w``, ``tdp_w``,
        ``mean_w``, ``breaker_w`` (or None).
    """
    fig, axes = _figure("Peak power per row and rack against baselines"
                        + (" and the breaker limit" if any(p["breaker_w"] for p in panels)
                           else ""), stamp, rows=len(panels), height=3.6 * len(panels) + 0.6)
    for i, pnl in enumerate(panels):
        ax = axes[i, 0]
        x = np.arange(len(pnl["ids"]))
        ax.bar(x, np.asarray(pnl["peak_w"]) / _KW, color=_COLORS[0], alpha=0.8,
               label=f"generated peak ({pnl['resolution_s']:g} s)")
        ax.scatter(x, np.asarray(pnl["tdp_w"]) / _KW, marker="_", s=200, color=_COLORS[3],
                   label="TDP baseline", zorder=3)
        ax.scatter(x, np.asarray(pnl["mean_w"]) / _KW, marker="_", s=200, color=_COLORS[2],
                   label="mean-power baseline", zorder=3)
        if pnl["breaker_w"]:
            ax.axhline(pnl["breaker_w"] / _KW, color="#000", ls="--", lw=1.2,
                       label=f"breaker {pnl['breaker_w'] / _KW:,.1f} kW")
        step = max(1, len(x) // 30)
        ax.set_xticks(x[::step])
        ax.set_xticklabels([str(v) for v in np.asarray(pnl["ids"])[::step]], fontsize=7)
        ax.set_xlabel(f"{pnl['level'][:-1]} id [-]")
        ax.set_ylabel("power [kW]")
        ax.set_title(f"{pnl['level']}", fontsize=10)
        ax.legend(loc="lower right", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def aggregation(path: Path, *, points: list[dict], random_groups: dict | None,
                reference: dict, resolution_s: float, stamp: str) -> Path:
    """Coefficient of variation against the number of servers summed (log-log)."""
    fig, axes = _figure("Aggregation smoothing: variability of summed power against the number "
                        "of servers", stamp, height=5.5, width=8.5)
    ax = axes[0, 0]
    if random_groups:
        n = np.asarray(random_groups["n_members"])
        ax.fill_between(n, random_groups["cv_min"], random_groups["cv_max"], color=_COLORS[0],
                        alpha=0.15, label="random server groups (min-max)")
        ax.plot(n, random_groups["cv_mean"], "-", color=_COLORS[0], lw=1.2,
                label="random server groups (mean)")
    for k, pt in enumerate(points):
        ax.errorbar([pt["servers"]], [pt["cv_mean"]],
                    yerr=[[pt["cv_mean"] - pt["cv_min"]], [pt["cv_max"] - pt["cv_mean"]]],
                    fmt="o", color=_COLORS[(k + 1) % len(_COLORS)], capsize=3,
                    label=f"{pt['level']} ({pt['entities']}, N={pt['servers']})")
    anchor = min(points, key=lambda q: q["servers"]) if points else None
    if anchor is not None:
        n_max = max(q["servers"] for q in points)
        nn = np.logspace(0, np.log10(max(n_max, 2)), 50)
        ax.plot(nn, anchor["cv_mean"] * np.sqrt(anchor["servers"] / nn), "--", color="#444",
                lw=1, label="1/sqrt(N) from the smallest group (independent servers)")
    ax.plot([1, 240], [reference["one_server"], reference["site_240_servers"]], "s",
            mfc="none", color="#d62728", ms=8, label="reference (MODEL.md): 0.583, 0.127")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("servers summed, N [-]")
    ax.set_ylabel(f"coefficient of variation of {resolution_s:g} s IT power [-]")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def oversubscription(path: Path, *, curves: list[dict], limit_w: float, unit: str,
                     level: str, percentile: float, stamp: str) -> Path:
    """Group power against the number of units admitted, one panel per serving
    configuration: the trace model's percentile group peak and the constant assumptions.

    curves : dicts with ``label``, ``peak_w_by_n`` (N = 1..), ``unit_w`` {name: constant unit
        power [W]} and ``answers`` {name: units admitted}.
    """
    fig, axes = _figure(f"Oversubscription: {level[:-1]} power against {unit} admitted "
                        f"(trace model: P{percentile:g} of the {level[:-1]} peak)", stamp,
                        rows=1, cols=len(curves), width=6.5 * len(curves), height=5.5)
    for k, c in enumerate(curves):
        ax = axes[0, k]
        y = np.asarray(c["peak_w_by_n"], dtype=np.float64) / _KW
        n_max = max([y.size] + [c["answers"][name] + 2 for name in c["answers"]])
        n = np.arange(1, y.size + 1)
        ax.plot(n, y, "-", color=_COLORS[0], lw=2, label=f"trace model: {c['answers']['trace']}")
        nn = np.arange(0, n_max + 1)
        for m, (name, unit_w) in enumerate(c["unit_w"].items()):
            color = _COLORS[m + 1]
            ax.plot(nn, nn * unit_w / _KW, "--", color=color, lw=1.1,
                    label=f"{name} ({unit_w / _KW:,.1f} kW/{unit[:-1]}): {c['answers'][name]}")
            ax.plot([c["answers"][name]], [c["answers"][name] * unit_w / _KW], "o",
                    color=color, ms=5)
        t = c["answers"]["trace"]
        if 1 <= t <= y.size:
            ax.plot([t], [y[t - 1]], "o", color=_COLORS[0], ms=6)
        ax.axhline(limit_w / _KW, color="#000", lw=1.2, label=f"limit {limit_w / _KW:,.0f} kW")
        ax.set_ylim(0, 1.25 * limit_w / _KW)
        ax.set_xlim(0, n_max)
        ax.set_title(c["label"], fontsize=10)
        ax.set_xlabel(f"{unit} in the {level[:-1]}, N [-]")
        ax.set_ylabel(f"{level[:-1]} power [kW]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", title=f"{unit} admitted", title_fontsize=7)
    return _save(fig, path)


def capping(path: Path, *, start: dt.datetime, time_s: np.ndarray, before_w: np.ndarray,
            after_w: np.ndarray, backlog_j: np.ndarray, window_s: tuple[float, float],
            resolution_s: float, title: str, stamp: str) -> Path:
    """Power before/after a cap with the deferred-energy backlog on a second axis."""
    fig, axes = _figure(title, stamp, height=5.0)
    ax = axes[0, 0]
    x = _clock(start, time_s)
    ax.plot(x, before_w / _KW, lw=0.6, color="#888", label="uncapped")
    ax.plot(x, after_w / _KW, lw=0.8, color=_COLORS[0], label="capped (work deferred)")
    ax.axvspan(_clock(start, [window_s[0]])[0], _clock(start, [window_s[1]])[0],
               color=_COLORS[1], alpha=0.12, label="cap window")
    ax.set_xlabel(f"local time from {start.isoformat(sep=' ')} ({resolution_s:g} s means)")
    ax.set_ylabel("facility power [kW]")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, backlog_j / 3.6e6, color=_COLORS[3], lw=1.0, label="deferred work waiting")
    ax2.set_ylabel("deferred energy waiting [kWh]")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    return _save(fig, path)


def validation_run(path: Path, *, title: str, interval_s: float, measured_w: np.ndarray,
                   generated_w: np.ndarray, acf_lags: np.ndarray, acf_measured: np.ndarray,
                   acf_generated: np.ndarray, stamp: str) -> Path:
    """One held-out run: power over time, power CDFs and autocorrelation functions."""
    fig, axes = _figure(title, stamp, rows=1, cols=3, width=14, height=4.4)
    t = np.arange(measured_w.size) * interval_s
    ax = axes[0, 0]
    ax.plot(t, measured_w, lw=0.6, color="#333", label="measured")
    ax.plot(t, generated_w, lw=0.6, color=_COLORS[1], alpha=0.8, label="generated (seed 0)")
    ax.set_xlabel("time in the held-out window [s]")
    ax.set_ylabel("power [W]")
    ax.set_title("power over time", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    for y, label, color in ((measured_w, "measured", "#333"),
                            (generated_w, "generated", _COLORS[1])):
        s = np.sort(y)
        ax.plot(s, np.arange(1, s.size + 1) / s.size, color=color, label=label)
    ax.set_xlabel("power [W]")
    ax.set_ylabel("cumulative share of samples [-]")
    ax.set_title("power distribution (CDF)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[0, 2]
    ax.plot(acf_lags * interval_s, acf_measured, "o-", ms=2, color="#333", label="measured")
    ax.plot(acf_lags * interval_s, acf_generated, "o-", ms=2, color=_COLORS[1],
            label="generated")
    ax.set_xlabel("lag [s]")
    ax.set_ylabel("autocorrelation [-]")
    ax.set_title("autocorrelation", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
