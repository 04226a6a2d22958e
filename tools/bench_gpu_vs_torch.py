#!/usr/bin/env python3
"""seamless (CUDA) against PyTorch (cuDNN) on the same architecture and weights, side by side.

For each model it writes a random-weight model file with `seamless random-model --preset ...`,
builds the same network in PyTorch from that file (tools/torch_side.py: fp32 or fp16,
channels_last, cudnn.benchmark on, TF32 off unless --tf32, inference mode), and then runs, round
after round, one `seamless bench --backend cuda --json` and one PyTorch timing on a size x size
window, for each precision. Both sides time the device compute of one window with CUDA events
(input already on the device). Each round gives a throughput ratio seamless / PyTorch; the report
is the median over rounds, each side's median Mpx/s and seconds per gigapixel.

    python tools/bench_gpu_vs_torch.py [--models unet-64,fcdensenet-103] [--precisions f32,f16]
        [--size 1024] [--rounds 5] [--runs 5] [--seamless target/release/seamless] [--json OUT]

--device cpu is a dry run of the PyTorch side on the CPU (f32 only) against `seamless bench
--backend cpu`, to check the script where there is no GPU; its numbers mean nothing for the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def seamless_bench(exe: str, model: Path, size: int, precision: str, runs: int, device: str) -> dict:
    backend = "cpu" if device == "cpu" else "cuda"
    cmd = [exe, "bench", str(model), "--backend", backend, "--size", str(size), "--runs", str(runs),
           "--warmup", "1", "--json"]
    if backend == "cuda":
        cmd += ["--precision", precision, "--no-peak", "--device", device.split(":")[1] if ":" in device else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    rep = json.loads(out.stdout)
    # Compute time by the backend's clock: CUDA events on a device, wall time on the CPU.
    rep["compute_seconds"] = rep["median_compute_seconds"]
    return rep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="unet-64,fcdensenet-103")
    p.add_argument("--precisions", default="f32,f16")
    p.add_argument("--size", type=int, default=1024, help="window side in px (multiple of every model's A)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=5, help="timed passes per side per round (median)")
    p.add_argument("--seamless", default="target/release/seamless")
    p.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for a dry run")
    p.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 for f32 (seamless never does)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    import torch
    import torch_side

    torch_side.configure(tf32=args.tf32)
    device = args.device
    precisions = args.precisions.split(",")
    if device == "cpu":
        precisions = [q for q in precisions if q == "f32"]
        print("dry run on the CPU: f32 only, seamless --backend cpu; not a GPU measurement")
    elif not torch.cuda.is_available():
        raise SystemExit("PyTorch sees no GPU (use --device cpu for a dry run)")
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(torch.device(device)) if device != "cpu" else platform.processor(),
        "tf32": args.tf32,
        "size": args.size,
        "rounds": args.rounds,
        "runs": args.runs,
    }
    print(json.dumps(env))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models.split(","):
            path = Path(tmp) / f"{preset}.safetensors"
            subprocess.run([args.seamless, "random-model", "--preset", preset, "--seed", "0", "--out", str(path)],
                           check=True, capture_output=True)
            for prec in precisions:
                model, cin, align = torch_side.build(path, device, prec)
                if args.size % align:
                    raise SystemExit(f"--size {args.size} is not a multiple of {preset}'s A = {align}")
                x = torch_side.random_input(cin, args.size, device, prec)
                px = args.size * args.size
                ratios, ours, theirs = [], [], []
                for r in range(args.rounds):
                    s = seamless_bench(args.seamless, path, args.size, prec, args.runs, device)
                    t = statistics.median(torch_side.time_forward(model, x, args.runs, warmup=2 if r == 0 else 1))
                    ours.append(px / s["compute_seconds"] / 1e6)
                    theirs.append(px / t / 1e6)
                    ratios.append(ours[-1] / theirs[-1])
                    print(f"{preset} {prec} round {r}: seamless {ours[-1]:.2f} Mpx/s, torch {theirs[-1]:.2f} Mpx/s, "
                          f"ratio {ratios[-1]:.3f}", flush=True)
                row = {
                    "model": preset,
                    "precision": prec,
                    "seamless_mpx_per_s": statistics.median(ours),
                    "torch_mpx_per_s": statistics.median(theirs),
                    "ratio_seamless_over_torch": statistics.median(ratios),
                    "seamless_s_per_gigapixel": 1e3 / statistics.median(ours),
                    "torch_s_per_gigapixel": 1e3 / statistics.median(theirs),
                    "rounds": ratios,
                }
                results.append(row)
                del model, x
                if device != "cpu":
                    torch.cuda.empty_cache()
    print()
    print(f"| model | precision | seamless Mpx/s | PyTorch Mpx/s | seamless / PyTorch (median of {args.rounds}) "
          "| seamless s/Gpx | PyTorch s/Gpx |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['precision']} | {r['seamless_mpx_per_s']:.2f} | {r['torch_mpx_per_s']:.2f} "
              f"| {r['ratio_seamless_over_torch']:.3f} | {r['seamless_s_per_gigapixel']:.1f} "
              f"| {r['torch_s_per_gigapixel']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
