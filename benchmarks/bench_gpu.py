"""GPU fleet kernel benchmark (issue #10): parity with the CPU kernel, throughput, RNG ceiling,
memory per deployment. One prepared script for a short GPU lease.

    python benchmarks/bench_gpu.py --json out.json            # needs CuPy and a CUDA device
    python benchmarks/bench_gpu.py --json out.json --quick    # fewer sizes and steps (~1 min)
    python benchmarks/bench_gpu.py --cpu-only --json out.json # host build vs Numba; no GPU
    ... --record                                              # append the table to RESULTS.md

On a GPU, in this order:

1. parity: the CuPy kernel against the Numba kernel (the reference of the golden runs) over two
   chunks for Poisson, gamma and replayed arrivals (two models packed together, cached tokens):
   every written array and every carried-state array compared bit for bit; then the pipeline's
   shard files of the golden configurations (tests/golden) through the GPU path against the
   CPU path;
2. throughput: deployment-steps/s of the kernel (launch to synchronisation) at 32 k / 128 k /
   512 k deployments and 0 / 0.25 / 1 / 4 req/s per deployment, after a warm-up that fills the
   queues; GPU memory per deployment (memory pool in use / deployments); SM cycles per
   deployment-step (SMs x clock x time / deployment-steps; instruction counts need Nsight
   Compute);
3. the raw RNG ceiling in the same run: CuPy's own float64 uniform generator, numbers/s;
4. registers and spills of the compiled kernel (CuPy's attributes of the entry point);
5. one CPU core with the Numba kernel on the same model and loads, for the ratio.

Without a GPU the script says so and exits with status 2, unless ``--cpu-only``: then it
compares the host build of fleet_kernel.cu with the Numba kernel on one core (interleaved runs,
best of each), and reports the NVRTC register count when the NVRTC wheel is installed.

On a machine with no package index, bring the wheels distgen needs beside what is there (for
the configuration loader: omegaconf and antlr4-python3-runtime) and run from the repository
root with ``PYTHONPATH=.``; any CuPy 13+ works (cupy-cuda12x or cupy-cuda13x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = (32_768, 131_072, 524_288)
LOADS_RPS = (0.0, 0.25, 1.0, 4.0)
THROUGHPUT_MODEL = "qwen3-8b_A100_tp1"
PARITY_MODELS = ("qwen3-8b_A100_tp1", "gemma-4-26b-a4b-it_A100_tp2")
TARGETS = {"idle": 3e10, "1 req/s": 1e10}  # deployment-steps/s on one H200 (issue #10)


def machine() -> str:
    from distgen.distributed.bench import machine_description  # no Ray import
    return f"{machine_description()}, NumPy {np.__version__}"


# ------------------------------------------------------------------ inputs

def _packed(names):
    from distgen.engine.deployments import PackedModels
    from distgen.model.artifact import ModelLibrary
    library = ModelLibrary.load()
    return PackedModels.pack([library[n] for n in names])


def _synthetic(n, rps, burstiness, steps_per_interval, n_intervals, seed=3):
    from distgen.engine.deployments import SyntheticArrivals, gamma_gap_quantiles
    mult = (0.5 + np.random.default_rng(seed).random((n, n_intervals))).astype(np.float32)
    return lambda step0: SyntheticArrivals(
        np.full(n, rps), mult[:, step0 // steps_per_interval:], step0 // steps_per_interval,
        steps_per_interval, gamma_gap_quantiles(burstiness))


def _replay(n, span_s, rps=2.0, seed=11):
    from distgen.engine.deployments import ReplayArrivals
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rps * span_s, n)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    arrival = np.concatenate([np.sort(rng.uniform(-1.0, span_s, c)) for c in counts])
    n_in = rng.integers(1, 6000, offsets[-1]).astype(np.int32)
    cached = (n_in * rng.choice([0.0, 0.5, 1.0], offsets[-1])).astype(np.int32)
    n_out = rng.integers(1, 900, offsets[-1]).astype(np.int32)
    replay = ReplayArrivals(offsets, arrival, n_in, cached, n_out)
    return lambda step0: replay


def _sync(device):
    if device is not None:
        device.synchronize()


# ------------------------------------------------------------------ 1. parity

def kernel_parity(device, n: int, steps: int) -> dict:
    """Numba kernel (host) against the device kernel, two chunks, bit for bit."""
    from distgen.engine.deployments import DeploymentBatch
    from distgen.engine.gpukernel import DeviceDeploymentBatch
    from distgen.engine.kernel import fleet_kernel

    packed = _packed(PARITY_MODELS)
    model, uid, target = np.arange(n) % 2, 5 + 7 * np.arange(n), np.arange(n) // 4
    cases = {"poisson-1rps": (_synthetic(n, 1.0, 1.0, 16, 2 * steps // 16 + 2), False),
             "gamma-0.3-2rps": (_synthetic(n, 2.0, 0.3, 16, 2 * steps // 16 + 2), False),
             "replay-cached": (_replay(n, 2 * steps * 0.25), True)}
    out = {}
    for name, (arrivals, replay) in cases.items():
        cpu = DeploymentBatch(packed, model, uid, target, 20260718, kernel=fleet_kernel)
        gpu = DeviceDeploymentBatch(packed, model, uid, target, 20260718, device=device)
        differing, compared = [], 0
        for c in range(2):
            kw = {"replay" if replay else "synthetic": arrivals(c * steps),
                  "count_from_step": 40}
            t_cpu, d_cpu = np.zeros((n // 4, steps), np.int64), np.zeros((n, steps), np.int32)
            t_gpu = device.zeros((n // 4, steps), np.int64)
            d_gpu = device.zeros((n, steps), np.int32)
            cpu.advance(c * steps, steps, t_cpu, deployment_mw=d_cpu, **kw)
            gpu.advance(c * steps, steps, t_gpu, deployment_mw=d_gpu, **kw)
            for what, a, b in ((f"target_mw[{c}]", t_cpu, t_gpu), (f"deployment_mw[{c}]", d_cpu,
                                                                  d_gpu)):
                compared += 1
                if a.tobytes() != device.to_host(b).tobytes():
                    differing.append(what)
        ref = {f"serving.{k}": v for k, v in cpu.state.serving._asdict().items()}
        ref.update({k: v for k, v in cpu.state._asdict().items() if k != "serving"})
        got = {f"serving.{k}": v for k, v in gpu.state.serving._asdict().items()}
        got.update({k: v for k, v in gpu.state._asdict().items() if k != "serving"})
        ref["stats"], got["stats"] = cpu.stats, gpu.device_stats
        for key, a in ref.items():
            compared += 1
            if a.tobytes() != device.to_host(got[key]).tobytes():
                differing.append(key)
        out[name] = {"identical": not differing, "arrays_compared": compared,
                     "differing": differing, "deployments": n, "steps": 2 * steps,
                     "requests": int(cpu.stats[:, 0].sum())}
    return out


def pipeline_parity(device) -> dict:
    """The golden configurations' shard files through the GPU path against the CPU path."""
    from distgen.config import load_config
    from distgen.model.artifact import ModelLibrary
    from distgen.pipeline import ReplayRequests, plan_run, run_shard

    golden = ROOT / "tests" / "golden"
    trace = ROOT / "tests" / "data" / "workloads" / "AzureLLMInferenceTrace_code_prefix38982.csv"
    library = ModelLibrary.load()
    out = {}
    for name in ("synthetic", "replay"):
        overrides = ["output.servers_resolution_s=1", "output.deployments_resolution_s=0.25"]
        if name == "replay":
            overrides.append(f"traffic.replay.path={trace}")
        plan = plan_run(load_config(golden / f"{name}.yaml", overrides), library)
        replay = ReplayRequests.build(plan, library) if name == "replay" else None
        differing, compared = [], 0
        with tempfile.TemporaryDirectory() as tmp:
            for shard in plan.shards:
                cpu, gpu = Path(tmp) / f"cpu{shard.index}", Path(tmp) / f"gpu{shard.index}"
                a = run_shard(plan, shard, library, cpu, replay_requests=replay)
                b = run_shard(plan, shard, library, gpu, replay_requests=replay, device=device)
                if a.workload != b.workload:
                    differing.append(f"shard {shard.index} workload")
                for f in sorted(p.name for p in cpu.glob("*.npy")):
                    compared += 1
                    if np.load(cpu / f).tobytes() != np.load(gpu / f).tobytes():
                        differing.append(f)
        out[name] = {"identical": not differing, "files_compared": compared,
                     "differing": differing}
    return out


# ------------------------------------------------------------------ 2.-4. throughput, RNG

def device_throughput(device, sizes, loads, warmup_steps: int, steps: int, repeats: int):
    from distgen.engine.gpukernel import DeviceDeploymentBatch, bytes_per_deployment

    packed = _packed([THROUGHPUT_MODEL])
    props = device.xp.cuda.runtime.getDeviceProperties(device.xp.cuda.Device().id)
    sm_hz = props["multiProcessorCount"] * props["clockRate"] * 1e3
    rows = []
    for n in sizes:
        for load in loads:
            device.pool.free_all_blocks()
            used0 = device.pool.used_bytes()
            batch = DeviceDeploymentBatch(packed, np.zeros(n), np.arange(n), np.arange(n) // 8,
                                          7, device=device)
            state_bytes = device.pool.used_bytes() - used0
            total = warmup_steps + repeats * steps
            arrivals = _synthetic(n, load, 1.0, steps, total // steps + 2)
            target = device.zeros((n // 8, max(steps, warmup_steps)), np.int64)
            batch.advance(0, warmup_steps, target, synthetic=arrivals(0))
            _sync(device)
            best = float("inf")
            for r in range(repeats):
                step0 = warmup_steps + r * steps
                syn = arrivals(step0)
                t = time.perf_counter()
                batch.advance(step0, steps, target, synthetic=syn)
                _sync(device)
                best = min(best, time.perf_counter() - t)
            rate = n * steps / best
            rows.append({"deployments": n, "load_rps": load, "deployment_steps_per_s": rate,
                         "sm_cycles_per_deployment_step": sm_hz / rate,
                         "gpu_bytes_per_deployment": state_bytes / n,
                         "computed_bytes_per_deployment":
                             bytes_per_deployment(packed.seq_capacity(), 2048),
                         "requests_per_deployment": float(batch.stats[:, 0].sum()) / n,
                         "seconds": best, "steps": steps})
            del batch, target
    return rows


def rng_ceiling(device, n: int = 1 << 27, repeats: int = 5) -> float:
    """CuPy's own float64 uniforms per second (the raw random-number ceiling)."""
    rng = device.xp.random.default_rng(0)
    out = device.zeros(n, np.float64)
    rng.random(n, dtype=np.float64, out=out)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        rng.random(n, dtype=np.float64, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del out
    return n / best


# ------------------------------------------------------------------ CPU

def _pin_one_core():
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass


def cpu_kernels(loads, n: int, steps: int, repeats: int, names=("numba", "c")) -> list[dict]:
    """Kernel throughput on one core per implementation, runs interleaved, best of each."""
    from distgen.engine.deployments import DeploymentBatch
    from distgen.engine.hostkernel import cpu_kernel

    _pin_one_core()
    packed = _packed([THROUGHPUT_MODEL])
    kernels = {name: cpu_kernel(name) for name in names}

    def run(kernel, load):
        batch = DeploymentBatch(packed, np.zeros(n), np.arange(n), np.arange(n) // 8, 7,
                                kernel=kernel)
        arrivals = _synthetic(n, load, 1.0, steps, 4)
        target = np.zeros((n // 8, steps), np.int64)
        t = time.perf_counter()
        batch.advance(0, steps, target, synthetic=arrivals(0))
        return n * steps / (time.perf_counter() - t)

    for kernel in kernels.values():  # compile / build outside the timing
        run(kernel, 1.0)
    rows = []
    for load in loads:
        best = dict.fromkeys(kernels, 0.0)
        for _ in range(repeats):
            for name, kernel in kernels.items():
                best[name] = max(best[name], run(kernel, load))
        rows.append({"load_rps": load, "deployments": n, "steps": steps,
                     **{f"{k}_deployment_steps_per_s": v for k, v in best.items()}})
    return rows


def nvrtc_report() -> dict:
    from distgen.engine import gpukernel
    if gpukernel.nvrtc_library_path() is None:
        return {"available": False}
    report = gpukernel.register_report("sm_90")
    report.pop("log")
    report["ptx_violations"] = len(gpukernel.ptx_violations(gpukernel.compile_ptx()))
    report["nvrtc_version"] = ".".join(map(str, gpukernel.nvrtc_version()))
    return {"available": True, **report}


# ------------------------------------------------------------------ report

def _m(x: float) -> str:
    return f"{x / 1e9:.2f} G" if x >= 1e9 else f"{x / 1e6:.1f} M"


def table(result: dict) -> list[str]:
    lines = []
    if "cpu_kernels" in result:
        lines += ["| load [req/s per deployment] | Numba [deployment-steps/s] | host C build | "
                  "C / Numba |", "|---:|---:|---:|---:|"]
        for r in result["cpu_kernels"]:
            a, b = r["numba_deployment_steps_per_s"], r["c_deployment_steps_per_s"]
            lines.append(f"| {r['load_rps']:g} | {_m(a)} | {_m(b)} | {b / a:.2f} |")
        lines.append("")
    nv = result.get("nvrtc", {})
    if nv.get("available"):
        lines += [f"NVRTC {nv['nvrtc_version']} (--fmad=false), sm_90: {nv['registers']} "
                  f"registers, {nv['spill_stores_bytes']} bytes spill stores; "
                  f"fma/.approx/call in the PTX: {nv['ptx_violations']}", ""]
    if "throughput" in result:
        ceiling = result["rng_uniforms_per_s"]
        lines += [f"GPU: {result['gpu']}; CuPy float64 uniforms: {_m(ceiling)}/s", "",
                  "| deployments | load [req/s] | deployment-steps/s | of RNG ceiling | "
                  "SM cycles per deployment-step | GPU bytes per deployment |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in result["throughput"]:
            rate = r["deployment_steps_per_s"]
            lines.append(f"| {r['deployments']:,} | {r['load_rps']:g} | {_m(rate)} | "
                         f"{rate / ceiling:.3f} | {r['sm_cycles_per_deployment_step']:.1f} | "
                         f"{r['gpu_bytes_per_deployment']:,.0f} |")
        lines += [""] + [f"target {k}: {v}" for k, v in result["targets"].items()]
        for what in ("kernel_parity", "pipeline_parity"):
            for name, r in result[what].items():
                lines.append(f"{what} {name}: {'identical' if r['identical'] else 'DIFFERS'}"
                             f" ({r.get('arrays_compared', r.get('files_compared'))} arrays)")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    p.add_argument("--cpu-only", action="store_true",
                   help="host build vs Numba on one core (no GPU needed)")
    p.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = p.parse_args()

    from distgen import backend
    result: dict = {"machine": machine(), "command": " ".join(sys.argv),
                    "date": time.strftime("%Y-%m-%d")}
    result["nvrtc"] = nvrtc_report()
    if args.cpu_only:
        steps, repeats = (1200, 2) if args.quick else (7200, 5)
        result["cpu_kernels"] = cpu_kernels(LOADS_RPS, 512, steps, repeats)
    else:
        if backend.device_count() == 0:
            print(f"bench_gpu: no CUDA device ({backend.gpu_status()}); nothing measured. "
                  "Run it on a machine with a GPU and CuPy, or use --cpu-only.",
                  file=sys.stderr)
            return 2
        from distgen.engine.gpukernel import DEVICE_ENTRY, NVRTC_OPTIONS, SOURCE
        device = backend.make_device("cupy", SOURCE.read_text(), NVRTC_OPTIONS)
        result["gpu"] = device.description
        t = time.perf_counter()
        device.module.get_function(DEVICE_ENTRY)
        result["compile_s"] = time.perf_counter() - t
        attrs = device.kernel_attributes(DEVICE_ENTRY)
        result["kernel_attributes"] = {k: attrs[k] for k in ("num_regs", "local_size_bytes",
                                                             "max_threads_per_block")
                                       if k in attrs}
        print("parity ...", flush=True)
        result["kernel_parity"] = kernel_parity(device, 2048 if args.quick else 8192, 400)
        result["pipeline_parity"] = pipeline_parity(device)
        sizes = SIZES[:1] + SIZES[-1:] if args.quick else SIZES
        warm, steps, repeats = (240, 240, 2) if args.quick else (1200, 1200, 3)
        print("throughput ...", flush=True)
        result["rng_uniforms_per_s"] = rng_ceiling(device)
        result["throughput"] = device_throughput(device, sizes, LOADS_RPS, warm, steps, repeats)
        result["rng_uniforms_per_s_after"] = rng_ceiling(device)
        result["cpu_numba_one_core"] = cpu_kernels(LOADS_RPS, 512, 1200, 2, names=("numba",))
        big = [r for r in result["throughput"] if r["deployments"] == max(sizes)]
        rate = {r["load_rps"]: r["deployment_steps_per_s"] for r in big}
        result["targets"] = {
            "idle": f"{_m(rate[0.0])} deployment-steps/s (target {_m(TARGETS['idle'])}): "
                    f"{'met' if rate[0.0] >= TARGETS['idle'] else 'not met'}",
            "1 req/s": f"{_m(rate[1.0])} deployment-steps/s (target "
                       f"{_m(TARGETS['1 req/s'])}): "
                       f"{'met' if rate[1.0] >= TARGETS['1 req/s'] else 'not met'}"}
    text = "\n".join(table(result))
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.record:
        what = "host build vs Numba, one core" if args.cpu_only else "GPU"
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## GPU kernel: {what} ({result['date']})\n\nMachine: "
                     f"{result['machine']}\n\nCommand: `python benchmarks/bench_gpu.py "
                     f"{' '.join(sys.argv[1:])}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
