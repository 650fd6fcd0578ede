"""The reference facility (configs/facility-240.yaml) against TDP and mean-power baselines.

    scripts/loopback python benchmarks/facility_report.py [--executor ray|local] [--write]

Generates the 24 h facility, then prints MODEL.md's facility table: peak and average facility
power, peak-to-average ratio and the largest 15-minute ramp, for the TDP baseline (every GPU at
nameplate), the mean-power baseline (every deployment at its training mean power) and the
model. With --write, the table goes to docs/FACILITY.md and the timing to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_engine import machine  # noqa: E402


def baseline_power_w(plan, library, per_deployment: str) -> float:
    """Constant IT power [W]: each deployment at its TDP or its training mean, plus non-GPU."""
    t = plan.topology
    f = plan.config.facility
    fleet = t.fleet()
    models = [library[c] for c in t.row_serving]  # per row; indexed by each deployment's row
    row = fleet.deployment_row
    gpu = np.array([m.tdp_w if per_deployment == "tdp" else m.baselines["mean_w"]
                    for m in models])[row]
    idle = np.array([m.idle_w for m in models])[row]
    tdp = np.array([m.tdp_w for m in models])[row]
    activity = np.clip((gpu - idle) / np.maximum(tdp - idle, 1e-9), 0, 1).mean()
    return float(gpu.sum() + t.n_servers * (f.non_gpu.idle_w + f.non_gpu.activity_w * activity))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--executor", choices=("ray", "local"), default="ray")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()

    from distgen.assembly import pue_per_block
    from distgen.config import load_config
    from distgen.driver import generate
    from distgen.io.series import read_series
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import plan_run

    config = load_config(ROOT / "configs" / "facility-240.yaml")
    library = ModelLibrary.load()
    plan = plan_run(config, library)
    from distgen.distributed import make_executor
    executor = make_executor(args.executor, config)
    out = Path(tempfile.mkdtemp()) / "facility"
    t0 = time.perf_counter()
    manifest = generate(config, out, library=library, executor=executor)
    wall = time.perf_counter() - t0

    site_1s, _ = read_series(out / "site_1s.parquet")
    quarter, _ = read_series(out / "site_900s.parquet")
    model_fac = site_1s["facility_power_w"]
    rows = []
    pue = pue_per_block(plan, 4, model_fac.size)
    for name, kind in (("TDP", "tdp"), ("mean power", "mean")):
        fac = baseline_power_w(plan, library, kind) * pue
        rows.append((name, fac.max(), fac.mean(), fac.max() / fac.mean(), 0.0))
    q = quarter["facility_power_w"]
    rows.append(("distgen model", model_fac.max(), model_fac.mean(),
                 model_fac.max() / model_fac.mean(), float(np.abs(np.diff(q)).max())))
    t = manifest["topology"]
    lines = ["| facility power | peak [MW] | average [MW] | peak-to-average | max 15-min ramp [MW] |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {pk / 1e6:.3f} | {av / 1e6:.3f} | {par:.2f} | {rp / 1e6:.3f} |"
              for n, pk, av, par, rp in rows]
    text = "\n".join(lines)
    print(text)
    steps = plan.deployment_steps
    timing = (f"{t['servers']} servers, {t['deployments']} deployments, 24 h at 0.25 s: "
              f"{steps / 1e6:.0f} M deployment-steps in {wall:.1f} s wall "
              f"({args.executor} executor, {executor.info.get('ray_cpus', 1)} CPUs)")
    print(timing)
    if args.write:
        doc = ROOT / "docs" / "FACILITY.md"
        doc.write_text(
            "# The reference facility\n\n"
            "`configs/facility-240.yaml`: 10 rows x 6 racks x 4 servers of 8 GPUs (1,920 GPUs),\n"
            "six rows of Qwen3-8B on A100 (TP1) and four of Qwen3-30B-A3B on H100 (TP2), 24 h of\n"
            "diurnal traffic (daily mean 900 requests/s, trough 25 % of peak at 03:00, peak at\n"
            "15:00, shared rate fluctuations), 1 kW non-GPU per server, PUE 1.3. Made with\n"
            "`scripts/loopback python benchmarks/facility_report.py --write`.\n\n"
            f"{text}\n\n"
            "TDP puts every GPU at its datasheet board power; mean power puts every deployment at\n"
            "the mean power of its training runs; both are flat. Peak and average are of the 1 s\n"
            "facility series; the ramp is the largest change between consecutive 15-minute means.\n\n"
            f"Against the trace-based peak, TDP overstates the facility peak by "
            f"{100 * (rows[0][1] / rows[2][1] - 1):.0f} % (MODEL.md's reference facility: 60 %, "
            "1.19 vs 0.75 MW), and the flat baselines show none of the diurnal shape: the model's\n"
            f"peak-to-average is {rows[2][3]:.2f} and its largest 15-minute ramp "
            f"{rows[2][4] / 1e6:.3f} MW (reference: 1.19 and 0.11 MW on a different fleet and "
            "trace).\n\n"
            f"Run: {timing}.\n")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Reference facility day ({time.strftime('%Y-%m-%d')})\n\n"
                     f"Machine: {machine()}\n\nCommand: `scripts/loopback python "
                     f"benchmarks/facility_report.py --executor {args.executor} --write`\n\n"
                     f"{timing} (target: under 60 s on 2 cores for a 240-server day, about "
                     f"165 M deployment-steps at TP4).\n")


if __name__ == "__main__":
    main()
