"""The oversubscription reference setting of MODEL.md section 4: racks per 600 kW row.

    [scripts/loopback] python benchmarks/oversubscription_reference.py [--executor local|ray] [--out DIR]
        [--serving CONFIG_ID] [--racks N] [--hours H]

Generates a row-scale pool of DGX-class racks (4 servers of 8 H100 at 700 W board power, 1 kW
of constant non-GPU power per server, as the reference facility) under the reference
facility's traffic per deployment (configs/facility-240.yaml: 900 requests/s over 1,536
deployments, diurnal, peak at 15:00, trough 25 %), with rack traces written at 1 s, and
answers with ``distgen analyze``'s code: racks whose P95 row peak stays within 600 kW, by the
trace model and by the TDP, mean-power and phase-LUT assumptions, at 1 s and at 60 s rack
resolution. Prints a Markdown table for docs/PLANNING.md and the analysis as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: configs/facility-240.yaml: daily mean 900 requests/s over 1,536 deployments.
RPS_PER_DEPLOYMENT = 900.0 / 1536.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--executor", choices=("ray", "local"), default="local")
    p.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    p.add_argument("--serving", default="qwen3-30b-a3b_H100_tp2")
    p.add_argument("--racks", type=int, default=80, help="racks in the pool (2 rows)")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--repetitions", type=int, default=200)
    p.add_argument("--analyze-only", action="store_true",
                   help="reuse the finished run in --out instead of generating it")
    args = p.parse_args()

    from distgen.config import load_config
    from distgen.driver import generate
    from distgen.model.artifact import ModelLibrary
    from distgen.io.manifest import read_manifest
    from distgen.io.runoutput import RunOutput
    from distgen.planning.options import AnalysisOptions, OversubscriptionOptions
    from distgen.planning.run import analyze_run, load_library, oversubscribe, row_serving

    library = ModelLibrary.load()
    tp = library[args.serving].tp
    per_row = args.racks // 2
    deployments = 2 * per_row * 4 * (8 // tp)
    overrides = [
        f"duration_s={args.hours * 3600:g}", "facility.rows=2",
        f"facility.racks_per_row={per_row}", "facility.servers_per_rack=4",
        "facility.gpus_per_server=8", f"facility.row_serving=[{args.serving},{args.serving}]",
        "facility.non_gpu.idle_w=1000", "facility.non_gpu.activity_w=0",
        f"traffic.site_rate_rps={RPS_PER_DEPLOYMENT * deployments:.6g}", "shards=4",
        "output.site_resolutions_s=[1,60,900,3600]", "output.rows_resolution_s=60",
        "output.racks_resolution_s=1", "output.site_csv_resolution_s=900"]
    config = load_config(ROOT / "configs" / "facility-240.yaml", overrides)
    executor = None
    if args.executor == "ray":
        from distgen.distributed import make_executor
        executor = make_executor("ray", config)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "reference-row"
    t0 = time.perf_counter()
    if args.analyze_only:
        manifest = read_manifest(out)
    else:
        manifest = generate(config, out, library=library, executor=executor, overwrite=True)
    wall = time.perf_counter() - t0
    print(f"generated {out} in {wall:.0f} s: {manifest['topology']}", file=sys.stderr)

    opts = AnalysisOptions(write_exports=False, oversubscription=OversubscriptionOptions(
        repetitions=args.repetitions))
    analysis = analyze_run(out, opts)
    r1 = analysis.doc["oversubscription"]["by_serving"][args.serving]
    run = RunOutput.open(out)
    # the same search on 60 s rack means: a breaker that tolerates sub-minute peaks
    facts, _ = load_library(run)
    r60 = oversubscribe(run, facts, OversubscriptionOptions(
        repetitions=args.repetitions, resolution_s=60.0))["by_serving"][args.serving]
    assert row_serving(run) == [args.serving, args.serving]
    site = analysis.doc["levels"]["site"]["it"]
    lines = [
        "| assumption | rack power [kW] | racks within 600 kW | published |",
        "|---|---:|---:|---:|",
        f"| TDP (8 x 700 W + 1 kW per server) | {r1['unit_tdp_w'] / 1e3:.2f} | "
        f"{r1['units_tdp']} | 23 |",
        f"| mean power (training mean per deployment) | {r1['unit_mean_baseline_w'] / 1e3:.2f} | "
        f"{r1['units_mean']} | 42 |",
        f"| phase LUT, busiest phase | {r1['unit_lut_busiest_w'] / 1e3:.2f} | {r1['units_lut']} "
        "| 52 |",
        f"| trace model, P95 of the 1 s row peak | {_per_unit_kw(r1)} (P95 row peak / N) | "
        f"{r1['units_model']} | 57 |",
        f"| trace model, P95 of the 60 s row peak | {_per_unit_kw(r60)} (P95 row peak / N) | "
        f"{r60['units_model']} | |",
    ]
    print("\n".join(lines))
    print(f"\nrack mean in the run {r1['unit_run_mean_w'] / 1e3:.2f} kW, largest 1 s rack peak "
          f"{r1['unit_run_peak_max_w'] / 1e3:.2f} kW; pool {r1['pool_units']} racks; site IT "
          f"peak {site['peak_w'] / 1e3:.0f} kW, mean {site['mean_w'] / 1e3:.0f} kW; "
          f"{manifest['topology']['deployments']} deployments at "
          f"{config.traffic.site_rate_rps:g} requests/s daily mean; {wall:.0f} s to generate")
    print(json.dumps({"1s": r1, "60s": r60, "config_hash": manifest["config_hash"]}))


def _per_unit_kw(r: dict) -> str:
    n = r["units_model"]
    return f"{r['peak_percentile_w_by_n'][n - 1] / n / 1e3:.2f}" if n else "-"


if __name__ == "__main__":
    main()
