"""`distgen` command line: fit, validate, inspect, generate, bench, sweep, analyze, report."""

from __future__ import annotations

import os

# Fitting runs many small matrix products where BLAS threads only add overhead, and distgen
# parallelises across processes (Ray); set before NumPy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

from distgen import __version__  # noqa: E402
from distgen.errors import DistgenError  # noqa: E402


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [["-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
                         for v in r] for r in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in width))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- fit

def cmd_fit(args) -> int:
    from distgen.analysis.validation import validate_configuration
    from distgen.ingest import read_runs
    from distgen.ingest.inspection import format_gap_lines
    from distgen.io.outdir import check_artifact_folder
    from distgen.model.artifact import FORMAT
    from distgen.model.fit import fit_power_model

    check_artifact_folder(args.out, artifact_format=FORMAT, overwrite=args.overwrite)
    runs = read_runs(*args.data, max_gap_s=args.max_gap_s)
    if format_gap_lines(runs):
        print(format_gap_lines(runs))
    by_config = defaultdict(list)
    for run in runs:
        by_config[run.config_id].append(run)
    out = Path(args.out)
    rows = []
    for config_id in sorted(by_config):
        group = sorted(by_config[config_id], key=lambda r: r.run_id)
        t0 = time.perf_counter()
        try:
            model = fit_power_model([(r, 0, r.n_steps) for r in group], seed=args.seed)
            if not args.no_scores:
                scores = validate_configuration(group, None, fit_seed=args.seed)
                model = type(model)(**{**model.__dict__, "scores": scores})
        except ValueError as exc:  # what the runs cannot support, said by the numerics
            runs_text = ", ".join(r.run_id for r in group)
            raise DistgenError(f"cannot fit {config_id} from {len(group)} run(s) ({runs_text}): "
                               f"{exc}") from exc
        path = model.save(out)
        ea = model.energy_account
        rows.append([config_id, len(group), model.provenance["n_samples"], ea["idle_w"],
                     ea["ceiling_w"], ea["j_per_iteration"], ea["j_per_decode_token"],
                     1e3 * ea["j_per_context_token"], ea["j_per_prefill_token"],
                     model.scores.get("energy_err_pct"), f"{time.perf_counter() - t0:.1f}s"])
        print(f"wrote {path}", file=sys.stderr)
    print(_table(rows, ["config", "runs", "samples", "idle W", "ceiling W", "J/iter",
                        "J/dec tok", "mJ/ctx tok", "J/pre tok", "held-out E%", "time"]))
    return 0


# ------------------------------------------------------------------------ validate

def format_validation(results: dict) -> str:
    rows = []
    for config_id, r in results.items():
        if r.get("status") == "no model":
            rows.append([config_id, r["runs"], "no model"] + [None] * 10)
            continue
        b = r["baselines"]
        rows.append([config_id, r["runs"], r["split"], r["energy_err_pct"], r["ks"], r["acf_r2"],
                     r["nrmse"], r["p95_err_pct"], r["p99_err_pct"],
                     b["tdp"]["energy_err_pct"], b["mean"]["energy_err_pct"],
                     b["lut"]["energy_err_pct"], b["lut"]["ks"]])
    return _table(rows, ["config", "runs", "split", "energy%", "KS", "ACF R2", "NRMSE", "P95%",
                         "P99%", "TDP E%", "mean E%", "LUT E%", "LUT KS"])


def format_validation_runs(results: dict) -> str:
    """Per held-out run: energy error and the share of steps outside the model's envelope."""
    rows = []
    for config_id, r in results.items():
        d = r.get("diagnostics") or {}
        outside = d.get("outside_envelope_share_per_run", {})
        for run_id, err in d.get("energy_err_pct_per_run", {}).items():
            rows.append([config_id, run_id, err, 100 * outside.get(run_id, 0.0)])
    return _table(rows, ["config", "held-out run", "energy%", "outside envelope %"])


def format_consistency(results: dict) -> str:
    """The physical-consistency panel per configuration (distgen.analysis.consistency)."""
    rows = []
    for config_id, r in results.items():
        c = r.get("consistency")
        if c is None:
            continue
        iso, sweep = c["isolated_request"], c["rate_sweep"]
        ratios = [p["ratio"] for p in c["account_panel"]]
        rows.append([config_id, f"{iso['energy_above_idle_j']:.1f} / {iso['bound_j']:.1f}",
                     f"{min(ratios):.3f}..{max(ratios):.3f}",
                     f"{sweep['mean_w'][0]:.0f}..{sweep['mean_w'][-1]:.0f}",
                     "yes" if sweep["monotone"] and sweep["bounded"] else "NO",
                     "yes" if c["drains"]["ok"] else "NO",
                     "pass" if c["passed"] else "FAIL"])
    return _table(rows, ["config", "isolated J / bound", "panel gen/account", "sweep W",
                         "monotone+bounded", "drains", "all"])


def cmd_validate(args) -> int:
    from distgen.analysis.validation import validate
    from distgen.ingest import read_runs
    from distgen.ingest.inspection import format_gap_lines
    from distgen.io.outdir import check_output_file, check_writable_folder
    from distgen.model.artifact import ModelLibrary

    if args.json:
        check_output_file(args.json, what="--json file")
    if args.report:
        check_writable_folder(args.report, what="--report folder")
    library = ModelLibrary.load(args.models)
    collect = [] if args.report else None
    runs = read_runs(*args.data, max_gap_s=args.max_gap_s)
    if format_gap_lines(runs):
        print(format_gap_lines(runs))
    results = validate(runs, library, seeds=args.seeds, collect=collect)
    from distgen.analysis.consistency import consistency_panel, passed
    for config_id, r in results.items():
        if config_id in library:
            panel = consistency_panel(library[config_id])
            r["consistency"] = {**panel, "passed": passed(panel)}
    print(format_validation(results))
    print()
    print(format_validation_runs(results))
    print()
    print("physical consistency (model alone; distgen/analysis/consistency.py):")
    print(format_consistency(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        from distgen.report.validation_report import write_validation_report
        paths = write_validation_report(args.report, results, collect,
                                        library_version=library.version)
        print(f"wrote {paths['markdown']}, {paths['html']} and {len(paths['figures'])} figures",
              file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- inspect

def cmd_inspect(args) -> int:
    from distgen.ingest.inspection import Unreadable, format_inspections, inspect_paths
    from distgen.model.artifact import ModelLibrary
    from distgen.model.envelope import share_outside

    try:
        library = ModelLibrary.load(args.models)
    except DistgenError as exc:
        library = None
        print(f"distgen: error: {exc} (no model coverage shown)", file=sys.stderr)
    items = inspect_paths(args.runs, max_gap_s=args.max_gap_s,
                          models=None if library is None else library.models,
                          envelope_share=share_outside)
    print(format_inspections(items, models_known=library is not None))
    if args.json:
        doc = {"max_gap_s": args.max_gap_s,
               "library": None if library is None else {"source": library.source,
                                                        "version": library.version},
               "runs": [r.to_dict() for r in items]}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    failed = library is None or any(isinstance(r, Unreadable) for r in items)
    return 2 if failed else 0


# ------------------------------------------------------------------------ generate

_ENERGY_UNITS = (("GWh", 3.6e12), ("MWh", 3.6e9), ("kWh", 3.6e6), ("Wh", 3.6e3))
_POWER_UNITS = (("GW", 1e9), ("MW", 1e6), ("kW", 1e3), ("W", 1.0))


def _unit_for(values, units) -> tuple[str, float]:
    """The largest unit in which the largest of ``values`` is at least 1 (one unit per column)."""
    top = max((abs(v) for v in values if v is not None), default=0.0)
    for name, scale in units:
        if top >= scale:
            return name, scale
    return units[-1]


def _fmt_power(w: float) -> str:
    name, scale = _unit_for([w], _POWER_UNITS)
    return f"{w / scale:.3f} {name}"


def _fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


def format_summary(manifest: dict, out: Path) -> str:
    """The run in a few lines; every figure says its resolution, and each column of the table
    has one unit."""
    from distgen.results import RunSummary, resolution_label

    t = manifest["topology"]
    grid = manifest["grid"]
    s = RunSummary.from_dict(manifest["summary"])
    duration = float(grid["duration_s"])
    offset_h = float(grid.get("utc_offset_s", 0.0)) / 3600
    mix = (t.get("serving_mix") or {}).get("rows") or {}
    lines = [f"site: {t['rows']:,} rows, {t['racks']:,} racks, {t['servers']:,} servers, "
             f"{t['gpus']:,} GPUs, {t['deployments']:,} deployments",
             "serving mix (rows): " + ", ".join(f"{c} {n:,}" for c, n in mix.items()),
             f"time: {_fmt_hours(duration)} from {grid['start_time']} (UTC{offset_h:+g} h) "
             f"on a {grid['interval_s']:g} s grid"]
    if manifest.get("estimate"):
        from distgen.footprint import Capacity, Footprint, describe_footprint
        ex = manifest["execution"]
        ray = ex.get("executor") == "ray"
        tasks = min(int(ex.get("ray_cpus") or 1), ex["shards"]) if ray else 1
        capacity = Capacity(tasks, 0.0, tasks_share_machine=ex.get("ray_started_here", True),
                            in_process=not ray)
        lines.append("estimate before the run: " +
                     describe_footprint(Footprint(**manifest["estimate"]), capacity))
    lines.append("")
    table = []
    for st in s.site:
        for v, name in ((st.it, "site IT"), (st.facility, "site facility")):
            table.append([name, st.resolution_s, v.energy_j, v.mean_w, v.peak_w,
                          v.peak_to_average])
    for v in s.levels:
        mean_w = v.energy_j / duration / max(v.entities, 1)
        table.append([f"{v.level} ({v.entities:,}, per entity)",
                      v.resolution_s, v.energy_j, mean_w, v.max_peak_w, None])
    e_unit, e_scale = _unit_for([r[2] for r in table], _ENERGY_UNITS)
    p_unit, p_scale = _unit_for([r[3] for r in table] + [r[4] for r in table], _POWER_UNITS)
    rows = [[name, resolution_label(res), f"{e / e_scale:.3f}", f"{m / p_scale:.3f}",
             f"{pk / p_scale:.3f}", "" if par is None else f"{par:.2f}"]
            for name, res, e, m, pk, par in table]
    lines.append(_table(rows, ["level", "resolution", f"energy [{e_unit}]", f"mean [{p_unit}]",
                               f"peak [{p_unit}]", "peak/mean"]))
    if s.levels:
        lines.append("(per entity: energy of all, mean of one entity, largest entity peak)")
    lines.append("")
    if s.max_15min_ramp_w is not None:
        lines.append(f"largest facility ramp between consecutive 15-minute (900 s) means: "
                     f"{_fmt_power(s.max_15min_ramp_w)}")
    w = s.workload
    lines.append(f"requests over the {_fmt_hours(duration)}: {w.requests_arrived:,} served or "
                 f"queued, {w.requests_dropped:,} dropped (queue full); "
                 f"{w.mean_running_per_deployment:.2f} running per deployment on average over "
                 f"the {grid['interval_s']:g} s steps")
    envelope = ", ".join(f"{c} {100 * cw.outside_envelope_share:.1f} %"
                         for c, cw in s.by_config.items())
    lines.append(f"{grid['interval_s']:g} s deployment-steps outside the models' operating "
                 f"envelope (extrapolated): {envelope}")
    lines.append("")
    lines.append(f"wrote {len(manifest['files'])} files and manifest.json to {out}/")
    return "\n".join(lines)


def _option_overrides(args) -> list[str]:
    """``--backend`` / ``--address`` as config overrides (after the KEY=VALUE ones)."""
    overrides = []
    if getattr(args, "backend", None):
        overrides.append(f"backend={args.backend}")
    if getattr(args, "address", None):
        overrides.append(f"ray.address={args.address}")
    return overrides


def _load_run_config(args):
    from distgen.config import load_config
    return load_config(args.config, list(args.overrides) + _option_overrides(args))


def _note(message: str) -> None:
    """A notice for the user: one line on stderr."""
    print(f"distgen: {message}", file=sys.stderr)


def cmd_generate(args) -> int:
    from distgen.distributed import make_executor
    from distgen.distributed.cluster import resolve_address
    from distgen.driver import generate, local_capacity, preflight
    from distgen.model.artifact import ModelLibrary
    from distgen.progress import Progress

    config = _load_run_config(args)
    library = ModelLibrary.load(config.model_library)
    if args.executor == "local" or resolve_address(config.ray.address) is None:
        # this machine runs the shards: judge the run before starting anything (a joined
        # cluster is judged once its size is known, inside generate)
        preflight(config, library, args.out, local_capacity(args.executor, config, args.out),
                  resume=args.resume)
    progress = Progress(enabled=not args.quiet)
    executor = make_executor(args.executor, config,
                             on_start=None if args.quiet else _note)
    _catch_sigterm()  # Ray installs its own handler while it starts
    manifest = generate(config, args.out, library=library, overwrite=args.overwrite,
                        resume=args.resume, executor=executor, progress=progress, log=_note)
    if not args.quiet:
        print(format_summary(manifest, Path(args.out)))
    return 0


# ------------------------------------------------------------------ sweep / bench

def cmd_sweep(args) -> int:
    from distgen.sweep import format_sweep, load_sweep, run_sweep

    spec = load_sweep(args.sweep)
    out = args.out or spec.out or str(Path("sweeps") / Path(args.sweep).stem)
    rows, _ = run_sweep(spec, out, resume=args.resume, executor=args.executor,
                        address=args.address, log=None if args.quiet else sys.stderr)
    if not args.quiet:
        print(format_sweep(rows, spec))
    return 0


def cmd_bench(args) -> int:
    from distgen.distributed.bench import bench_config, format_bench, run_bench

    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        config_path, overrides = None, [config_path, *overrides]  # only overrides were given
    config = bench_config(config_path, overrides + _option_overrides(args), args.seconds)
    result = run_bench(config, executor=args.executor, num_cpus=args.num_cpus,
                       warmup=not args.no_warmup)
    print(format_bench(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------ analyze / report

def cmd_analyze(args) -> int:
    from distgen.planning.options import options_from_args
    from distgen.planning.run import analyze_run, format_analysis

    analysis = analyze_run(args.out_dir, options_from_args(args), library_dir=args.models)
    print(format_analysis(analysis.doc))
    if args.json:
        Path(args.json).write_text(json.dumps(analysis.doc, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from distgen.planning.options import options_from_args
    from distgen.planning.run import analyze_run
    from distgen.report.run_report import write_run_report

    analysis = analyze_run(args.out_dir, options_from_args(args), library_dir=args.models)
    folder = Path(args.report_dir) if args.report_dir else analysis.run.path / "report"
    paths = write_run_report(analysis, folder, breaker_w=args.breaker_w,
                             breaker_level=args.breaker_level)
    print(f"wrote {paths['markdown']}, {paths['html']}, {paths['json']} and "
          f"{len(paths['figures'])} figures")
    return 0


# --------------------------------------------------------------------------- main

def _add_max_gap_argument(parser: argparse.ArgumentParser) -> None:
    from distgen.ingest.runs import DEFAULT_MAX_GAP_S

    def seconds(text: str) -> float:
        value = float(text)
        if not (value > 0 and value < float("inf")):
            raise ValueError(text)
        return value

    parser.add_argument("--max-gap-s", type=seconds, default=DEFAULT_MAX_GAP_S, metavar="S",
                        help="refuse a run with a power-sampling gap longer than S seconds "
                        f"(default {DEFAULT_MAX_GAP_S:g}); shorter gaps are masked, never "
                        "interpolated into fitting or scoring")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distgen", description=(
        "Compositional power traces of LLM-inference fleets, from one GPU server to a site."))
    p.add_argument("--version", action="version", version=f"distgen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="fit a power model per serving configuration")
    f.add_argument("data", nargs="+", help="measured run folders (searched recursively)")
    f.add_argument("--out", required=True, help="model library folder to write")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-scores", action="store_true",
                   help="skip the held-out scoring stored in each artifact")
    f.add_argument("--overwrite", action="store_true",
                   help="allow writing into a folder that holds files other than power models")
    _add_max_gap_argument(f)
    f.set_defaults(func=cmd_fit)

    v = sub.add_parser("validate", help="held-out fidelity against measured runs")
    v.add_argument("--models", default=None, help="model library folder (default: bundled)")
    v.add_argument("--data", nargs="+", required=True, help="measured run folders")
    v.add_argument("--json", default=None, help="also write the results as JSON")
    v.add_argument("--seeds", type=_positive_int, default=5,
                   help="generated traces per held-out window (default 5)")
    v.add_argument("--report", default=None, metavar="DIR",
                   help="also write a report with figures per held-out run into DIR")
    _add_max_gap_argument(v)
    v.set_defaults(func=cmd_validate)

    ins = sub.add_parser("inspect", help="what distgen reads in measured runs, before fitting")
    ins.add_argument("runs", nargs="+", metavar="RUN_DIRS",
                     help="measured run folders (searched recursively)")
    ins.add_argument("--json", default=None, metavar="FILE", help="also write it as JSON")
    ins.add_argument("--models", default=None,
                     help="model library folder for the coverage lines (default: bundled)")
    _add_max_gap_argument(ins)
    ins.set_defaults(func=cmd_inspect)

    g = sub.add_parser("generate", help="generate site / row / rack power traces")
    g.add_argument("config", help="run configuration (YAML)")
    g.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. seed=3 facility.rows=10 duration_s=86400")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--overwrite", action="store_true",
                   help="allow writing into a non-empty folder that is not a distgen output")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in OUT, redoing only unfinished shards")
    g.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="run shards as Ray tasks (default) or one by one in this process")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--backend", choices=("numpy", "cupy", "auto"), default=None)
    g.add_argument("--quiet", action="store_true", help="no progress line and no summary")
    g.set_defaults(func=cmd_generate)

    sw = sub.add_parser("sweep", help="run a parameter sweep (one generation per point)")
    sw.add_argument("sweep", help="sweep file (YAML): base, grid, samples, concurrency")
    sw.add_argument("--out", default=None,
                    help="sweep folder (default: the file's 'out', else sweeps/<name>)")
    sw.add_argument("--resume", action="store_true",
                    help="keep finished points, continue interrupted ones")
    sw.add_argument("--executor", choices=("ray", "local"), default="ray",
                    help="one Ray task per point (default) or points one by one here")
    sw.add_argument("--address", default=None,
                    help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    sw.add_argument("--quiet", action="store_true", help="no progress lines and no table")
    sw.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench", help="measure generation throughput on this backend/executor")
    b.add_argument("config", nargs="?", default=None,
                   help="run configuration (default: built-in 512-GPU facility, 10 min)")
    b.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    b.add_argument("--executor", choices=("ray", "local"), default="ray")
    b.add_argument("--seconds", type=float, default=None,
                   help="simulated duration_s of the run (default: 600, or the config's)")
    b.add_argument("--address", default=None, help="Ray cluster to join")
    b.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of a local Ray started for the bench (default: all)")
    b.add_argument("--backend", choices=("numpy", "cupy", "auto"), default=None)
    b.add_argument("--no-warmup", action="store_true",
                   help="include worker start-up and kernel loading in the measurement")
    b.add_argument("--json", default=None, help="also write the figures as JSON")
    b.set_defaults(func=cmd_bench)

    from distgen.planning.options import add_analysis_arguments
    an = sub.add_parser("analyze", help="planner figures of a run: peaks, ramps, load factor, "
                        "exports (15-min CSV, 8760-h, OpenDSS), oversubscription, capping")
    an.add_argument("out_dir", metavar="OUT_DIR", help="a finished distgen run folder")
    an.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    add_analysis_arguments(an)
    an.set_defaults(func=cmd_analyze)

    rp = sub.add_parser("report", help="figures and a Markdown + HTML report of a run")
    rp.add_argument("out_dir", metavar="OUT_DIR", help="a finished distgen run folder")
    rp.add_argument("--report-dir", default=None, metavar="DIR",
                    help="where to write the report (default: OUT_DIR/report)")
    rp.add_argument("--breaker-w", type=float, default=None,
                    help="breaker limit [W] drawn against the per-entity peaks")
    rp.add_argument("--breaker-level", choices=("racks", "rows"), default="racks",
                    help="level the breaker limit applies to (default: racks)")
    add_analysis_arguments(rp)
    rp.set_defaults(func=cmd_report)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (what timeout, Slurm, docker and systemd send), raised in the main thread like
    Ctrl-C so that every ``finally`` runs: Ray tasks are cancelled, temporary files removed."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _catch_sigterm() -> None:
    """Route SIGTERM to :class:`Terminated` (from the main thread only, where Python delivers
    signals)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def _release_sigterm() -> None:
    """Back to the default (end the process) once the command is done: a SIGTERM while Ray
    shuts down at exit must not raise into its clean-up."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _interrupted(args, exc: KeyboardInterrupt) -> int:
    """One line on how to go on; exit status 128 + signal number (130 Ctrl-C, 143 SIGTERM)."""
    terminated = isinstance(exc, Terminated)
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    if getattr(args, "command", None) in ("generate", "sweep") and getattr(args, "out", None):
        again = "distgen " + " ".join(
            a for a in (sys.argv[1:] if sys.argv[1:2] == [args.command] else [args.command])
            if a != "--resume")
        print(f"distgen: {what}; the finished work in {args.out} is kept: finish the run with "
              f"--resume ({again} --resume)", file=sys.stderr)
    else:
        print(f"distgen: {what}", file=sys.stderr)
    return 143 if terminated else 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come after options; anything else left over is an error
    if extra:
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    _catch_sigterm()
    try:
        return args.func(args)
    except DistgenError as exc:
        print(f"distgen: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the user's files and disks: a full disk, a read-only folder
        from distgen.errors import os_error_text
        print(f"distgen: error: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    finally:
        _release_sigterm()


if __name__ == "__main__":
    sys.exit(main())
