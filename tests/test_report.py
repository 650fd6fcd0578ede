"""Reports and figures (issue #9): ``distgen report`` and ``distgen validate --report``.

The report must render: files exist, images decode as PNG with non-trivial content, every
figure the Markdown names is present and embedded in the HTML, and every caption carries the
run's config hash. Figures must have a title and units on both axes (checked when saving).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from test_planning import write_hand_run

from distgen.cli import main
from distgen.planning.options import AnalysisOptions, CappingOptions
from distgen.planning.run import analyze_run
from distgen.report import figures
from distgen.report.document import Document
from distgen.report.run_report import write_run_report
from distgen.report.validation_report import write_validation_report

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIG_RE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def check_rendered(md_path: Path, html_path: Path, stamp: str) -> list[Path]:
    """Every figure named in the Markdown exists, is a decodable PNG with content, and is
    embedded in the HTML; each figure's caption names ``stamp``. Returns the figure paths."""
    md = md_path.read_text()
    names = FIG_RE.findall(md)
    assert names, "the report shows no figure"
    paths = []
    for name in names:
        path = md_path.parent / name
        assert path.is_file(), name
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (name, img.shape)
        rgb = (img[..., :3].reshape(-1, 3) * 255).astype(np.int64)
        assert rgb.std() > 10, name                                   # not a blank canvas
        colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
        assert colours.size > 20, name                                # lines, text, colours
        paths.append(path)
    captions = [ln for ln in md.splitlines() if ln.startswith("*Figure ")]
    assert len(captions) == len(names)
    assert all(stamp in c for c in captions), captions
    page = html_path.read_text()
    assert page.count('src="data:image/png;base64,') == len(names)
    assert page.count("<figcaption>") == len(names)
    return paths


# =============================================================================================
# the run report


def test_report_on_a_hand_made_run(tmp_path):
    """Hand-made 24 h run (3 identical racks, 60 s): a rack breaker of 30 kW is exceeded by
    all three racks (33 kW peaks); with a demand-response window the capping figure appears."""
    run = tmp_path / "run"
    write_hand_run(run)
    analysis = analyze_run(run, AnalysisOptions(exports_dir=tmp_path / "ex", capping=CappingOptions(
        dr_start="14:00", dr_duration_s=7200.0, dr_reduction_pct=50.0, gpu_cap_w=1000.0)))
    out = write_run_report(analysis, tmp_path / "report", breaker_w=30e3, breaker_level="racks")
    figs = check_rendered(out["markdown"], out["html"], "config `f00dfeedf00d`")
    names = {p.name for p in figs}
    assert {"site_power.png", "load_duration.png", "ramps.png", "peaks.png", "aggregation.png",
            "oversubscription.png", "demand_response.png"} == names
    assert sorted(out["figures"]) == sorted(figs)
    md = out["markdown"].read_text()
    assert "3 of 3 racks peak above the 30.0 kW breaker: 0, 1, 2." in md
    # the report's numbers are the JSON's numbers
    doc = json.loads(out["json"].read_text())
    assert doc == analysis.doc
    r = doc["oversubscription"]["by_serving"]["qwen3-30b-a3b_H100_tp2"]
    assert f"| {r['units_tdp']} | {r['units_mean']} | {r['units_lut']} | {r['units_model']}*" in md
    site = doc["levels"]["site"]["facility"]
    assert f"{site['peak_w'] / 1e3:,.1f}" in md and f"{site['load_factor']:.3f}" in md


def test_report_cli_on_a_generated_run(tmp_path, capsys):
    """A tiny generated run (site at 1 s: the site figure has a zoom panel) through the CLI."""
    from distgen.config import load_config
    from distgen.driver import generate

    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        "duration_s=1800", "warmup_s=0", "facility.rows=1", "facility.racks_per_row=2",
        "facility.servers_per_rack=2", "shards=1", "traffic.site_rate_rps=20",
        "facility.row_serving=[qwen3-8b_A100_tp1]", "output.site_resolutions_s=[1,60,900]",
        "output.racks_resolution_s=1", "output.rows_resolution_s=1"])
    manifest = generate(cfg, out)
    rc = main(["report", str(out), "--breaker-w", "9000", "--breaker-level", "racks",
               "--repetitions", "10"])
    assert rc == 0
    assert "report.html" in capsys.readouterr().out
    folder = out / "report"
    figs = check_rendered(folder / "report.md", folder / "report.html",
                          f"config `{manifest['config_hash'][:12]}`")
    assert "demand_response.png" not in {p.name for p in figs}
    assert "10 minutes around the 1 s peak" in (folder / "report.md").read_text()
    # a report folder elsewhere
    rc = main(["report", str(out), "--report-dir", str(tmp_path / "elsewhere"),
               "--repetitions", "5"])
    assert rc == 0 and (tmp_path / "elsewhere" / "report.html").is_file()


def test_report_refuses_a_breaker_level_the_run_lacks(tmp_path, capsys):
    run = tmp_path / "run"
    write_hand_run(run, hours=1)
    assert main(["report", str(run), "--breaker-w", "1000", "--breaker-level", "rows"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--breaker-level rows" in err


# =============================================================================================
# figures and the document


def test_figures_must_have_units_and_a_title(tmp_path):
    fig = Figure()
    ax = fig.subplots()
    ax.set_xlabel("time [s]")
    ax.set_ylabel("power")
    fig.suptitle("something")
    with pytest.raises(ValueError, match="y axis label 'power' names no unit"):
        figures.check_axes(fig)
    ax.set_ylabel("power [W]")
    figures.check_axes(fig)
    fig.suptitle("")
    with pytest.raises(ValueError, match="title"):
        figures.check_axes(fig)


def test_document_renders_markdown_and_self_contained_html(tmp_path):
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(tmp_path / "a.png")
    doc = Document("T <1>")
    doc.heading("Section")
    doc.para("text with `code` & <tag>")
    doc.table(["a", "b|c"], [["1", "2"]])
    doc.figure(tmp_path / "a.png", "caption of a")
    md, page = doc.write(tmp_path)
    text = md.read_text()
    assert "![Figure 1](a.png)" in text and "*Figure 1: caption of a*" in text
    assert "| a | b\\|c |" in text
    html = page.read_text()
    assert "T &lt;1&gt;" in html and "<code>code</code> &amp; &lt;tag&gt;" in html
    assert html.count("data:image/png;base64,") == 1 and "a.png" not in html


# =============================================================================================
# the validation report


def test_validation_report_from_collected_series(tmp_path):
    """Two held-out windows (synthetic series) give two figures; the table holds the scores."""
    rng = np.random.default_rng(0)
    y = 100 + 50 * (rng.random(400) > 0.5)
    g = 100 + 50 * (rng.random(400) > 0.5)
    results = {"cfg_A100_tp1": {"runs": 2, "split": "leave-one-run-out", "energy_err_pct": 1.5,
                                "ks": 0.1, "acf_r2": 0.9, "nrmse": 0.3, "p95_err_pct": 1.0,
                                "p99_err_pct": 2.0,
                                "baselines": {"tdp": {"energy_err_pct": 80.0},
                                              "mean": {"energy_err_pct": 10.0}}},
               "other_H100_tp2": {"runs": 1, "status": "no model"}}
    collected = [("cfg_A100_tp1", "run/1", y, g, 0.25), ("cfg_A100_tp1", "run 2", g, y, 0.25)]
    out = write_validation_report(tmp_path / "v", results, collected, library_version="abc123")
    figs = check_rendered(out["markdown"], out["html"], "model library abc123")
    assert len(figs) == 2 and all(p.name.startswith("validation_cfg_A100_tp1__run") for p in figs)
    md = out["markdown"].read_text()
    assert "| cfg_A100_tp1 | 2 | leave-one-run-out | 1.50 |" in md and "no model" in md
    assert json.loads(out["json"].read_text()) == results


def test_validate_cli_writes_a_report(tmp_path, measured_dir, capsys):
    """One measured fixture run, scored by the bundled library (1 seed)."""
    src = measured_dir / "arrival_rate_qwen3-8b_a100_r2p5"
    rc = main(["validate", "--data", str(src), "--seeds", "1", "--report", str(tmp_path / "v")])
    assert rc == 0
    capsys.readouterr()
    figs = check_rendered(tmp_path / "v" / "validation.md", tmp_path / "v" / "validation.html",
                          "model library")
    assert len(figs) == 1 and "qwen3-8b_A100_tp1" in figs[0].name
