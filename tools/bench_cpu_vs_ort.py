#!/usr/bin/env python3
"""seamless (CPU) against ONNX Runtime (CPU) on the same architecture, side by side.

For each model it writes a random-weight model file with `seamless random-model --preset ...`,
builds the same network as an ONNX graph with tools/reference_onnx.py's builder, and then runs,
round after round, one `seamless bench` forward pass and one ONNX Runtime forward pass on a
size x size input (f32, batch 1). ONNX Runtime gets `--threads` intra-op threads, graph
optimisations ENABLED (ORT_ENABLE_ALL: conv+BN folding, NCHWc layouts, fusions) and the same
input size; seamless gets the same thread count. Each round gives a throughput ratio
(seamless / ONNX Runtime) measured within seconds on a machine whose load changes; the report is
the median over rounds, plus each side's median throughput and the environment.

Speed on a shared machine is only meaningful as such an interleaved ratio: an absolute time from
one side alone says as much about the neighbours as about the code.

    python tools/bench_cpu_vs_ort.py [--models unet-64,fcdensenet-103] [--size 512] [--rounds 5]
        [--threads 2] [--seamless target/release/seamless] [--json OUT.json]

Needs the packages of tools/requirements-oracle.txt and a release build of seamless.
FC-DenseNet-103's exact halo is 1152 px, so a real tile is larger than 512; the comparison is per
512 x 512 window all the same (both engines compute the same window).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import reference_onnx  # noqa: E402  (the ONNX graph builder the oracle uses)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                f = set(line.split(":", 1)[1].split())
                return " ".join(x for x in ("avx2", "fma", "avx512f") if x in f)
    except OSError:
        pass
    return "unknown"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def ort_session(model_path: Path, threads: int) -> tuple[ort.InferenceSession, dict]:
    arch, cfg, weights, _ = reference_onnx.read_model(model_path)
    onnx_model = reference_onnx.build_onnx(arch, cfg, weights)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, cfg


def seamless_run(exe: str, model_path: Path, size: int, threads: int) -> tuple[float, dict]:
    """One timed forward pass (after one warm-up pass) in a fresh `seamless bench` process."""
    cmd = [exe, "--threads", str(threads), "bench", str(model_path), "--size", str(size), "--runs", "1",
           "--warmup", "1", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"seamless bench failed ({out.returncode}): {out.stderr.strip()}")
    rep = json.loads(out.stdout)
    return rep["median_seconds"], rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="unet-64,fcdensenet-103", help="comma-separated presets")
    p.add_argument("--size", type=int, default=512, help="square input window side (default 512)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for both engines (default 2)")
    p.add_argument("--seamless", default=str(HERE.parent / "target" / "release" / "seamless"),
                   help="the seamless binary (default target/release/seamless)")
    p.add_argument("--workdir", default=None, help="where to write the model files (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results here as JSON")
    args = p.parse_args(argv)

    env = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "simd": cpu_flags(),
        "onnxruntime": ort.__version__,
        "seamless_commit": git_rev(),
        "threads": args.threads,
        "size": args.size,
        "rounds": args.rounds,
        "loadavg_before": os.getloadavg(),
    }
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for preset in [m for m in args.models.split(",") if m]:
            path = workdir / f"{preset}.safetensors"
            subprocess.run([args.seamless, "random-model", "--preset", preset, "--seed", "0", "--out", str(path)],
                           check=True, capture_output=True)
            sess, cfg = ort_session(path, args.threads)
            x = np.random.default_rng(1).standard_normal((1, cfg["in_channels"], args.size, args.size))
            x = x.astype(np.float32)
            sess.run(None, {"image": x})  # warm-up (allocations, layout packing)
            rounds = []
            for r in range(args.rounds):
                ts, rep = seamless_run(args.seamless, path, args.size, args.threads)
                t0 = time.perf_counter()
                sess.run(None, {"image": x})
                to = time.perf_counter() - t0
                rounds.append({"seamless_s": ts, "ort_s": to, "ratio": to / ts})
                print(f"{preset} round {r + 1}/{args.rounds}: seamless {ts:.3f} s, onnxruntime {to:.3f} s, "
                      f"throughput ratio {to / ts:.3f}", flush=True)
            px = args.size * args.size
            med_s = statistics.median(x["seamless_s"] for x in rounds)
            med_o = statistics.median(x["ort_s"] for x in rounds)
            res = {
                "model": preset,
                "flop_per_pixel": rep["flop_per_pixel"],
                "seamless_mpx_per_s": px / med_s / 1e6,
                "ort_mpx_per_s": px / med_o / 1e6,
                "seamless_gflop_per_s": rep["flop_per_pixel"] * px / med_s / 1e9,
                "ort_gflop_per_s": rep["flop_per_pixel"] * px / med_o / 1e9,
                "median_ratio": statistics.median(x["ratio"] for x in rounds),
                "min_ratio": min(x["ratio"] for x in rounds),
                "max_ratio": max(x["ratio"] for x in rounds),
                "rounds": rounds,
            }
            results.append(res)
            del sess
    env["loadavg_after"] = os.getloadavg()
    print()
    print(f"{'model':<16} {'seamless Mpx/s':>15} {'ORT Mpx/s':>10} {'seamless GFLOP/s':>17} {'ORT GFLOP/s':>12} "
          f"{'ratio (median)':>15} {'range':>14}")
    for r in results:
        print(f"{r['model']:<16} {r['seamless_mpx_per_s']:>15.4f} {r['ort_mpx_per_s']:>10.4f} "
              f"{r['seamless_gflop_per_s']:>17.1f} {r['ort_gflop_per_s']:>12.1f} {r['median_ratio']:>15.3f} "
              f"{r['min_ratio']:>6.3f}-{r['max_ratio']:.3f}")
    print(f"(ratio = seamless throughput / ONNX Runtime throughput, per interleaved round; "
          f"load average before {env['loadavg_before'][0]:.2f}, after {env['loadavg_after'][0]:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
