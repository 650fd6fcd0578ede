"""`distgen` command line: fit, validate, generate, bench, sweep."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from distgen import __version__
from distgen.errors import DistgenError


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
    from distgen.model.fit import fit_power_model

    runs = read_runs(*args.data)
    by_config = defaultdict(list)
    for run in runs:
        by_config[run.config_id].append(run)
    out = Path(args.out)
    rows = []
    for config_id in sorted(by_config):
        group = sorted(by_config[config_id], key=lambda r: r.run_id)
        t0 = time.perf_counter()
        model = fit_power_model([(r, 0, r.n_steps) for r in group], seed=args.seed)
        if not args.no_scores:
            scores = validate_configuration(group, None, fit_seed=args.seed)
            model = type(model)(**{**model.__dict__, "scores": scores})
        path = model.save(out)
        ea = model.energy_account
        rows.append([config_id, len(group), model.states.n_samples, model.k,
                     model.transitions.ridge_lambda, ea["idle_w"], ea["j_per_iteration"],
                     ea["j_per_decode_token"], ea["j_per_prefill_token"],
                     model.scores.get("energy_err_pct"), f"{time.perf_counter() - t0:.1f}s"])
        print(f"wrote {path}", file=sys.stderr)
    print(_table(rows, ["config", "runs", "samples", "K", "lambda", "idle W", "J/iter",
                        "J/dec tok", "J/pre tok", "held-out E%", "time"]))
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


def cmd_validate(args) -> int:
    from distgen.analysis.validation import validate
    from distgen.ingest import read_runs
    from distgen.model.artifact import ModelLibrary

    library = ModelLibrary.load(args.models)
    results = validate(read_runs(*args.data), library, seeds=args.seeds)
    print(format_validation(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- main

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
    f.set_defaults(func=cmd_fit)

    v = sub.add_parser("validate", help="held-out fidelity against measured runs")
    v.add_argument("--models", default=None, help="model library folder (default: bundled)")
    v.add_argument("--data", nargs="+", required=True, help="measured run folders")
    v.add_argument("--json", default=None, help="also write the results as JSON")
    v.add_argument("--seeds", type=int, default=5)
    v.set_defaults(func=cmd_validate)

    _add_generation_commands(sub)
    return p


def _add_generation_commands(sub) -> None:
    try:
        from distgen.commands import add_commands
    except ImportError:  # generation commands arrive with the engine
        return
    add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DistgenError as exc:
        print(f"distgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
