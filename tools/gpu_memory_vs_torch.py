#!/usr/bin/env python3
"""Device memory of one window: seamless's plan, what its CUDA backend allocated, what the driver
saw it use, and PyTorch's torch.cuda.max_memory_allocated for the same model, weights and window
(inference mode, no grad, cudnn.benchmark on). Prints a markdown table for docs/memory.md.

    python tools/gpu_memory_vs_torch.py [--models unet-64,fcdensenet-56,fcdensenet-103]
        [--windows 512,1024,2048] [--precisions f32,f16] [--seamless target/release/seamless]

seamless columns come from `seamless bench --backend cuda --json` (memory: planned = arena +
parameters + staging for the graph the backend runs; allocated = the backend's own count;
driver = cuMemGetInfo used after the runs minus before the model was uploaded, which also holds
the stream-ordered allocator's rounding). PyTorch's peak includes its weights, the input and
cuDNN's workspace; its reserved column is what its caching allocator held.
--device cpu only checks that the script runs (no memory numbers on the CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MIB = 1 << 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="unet-64,fcdensenet-56,fcdensenet-103")
    p.add_argument("--windows", default="512,1024,2048", help="window sides in px (multiples of A)")
    p.add_argument("--precisions", default="f32,f16")
    p.add_argument("--seamless", default="target/release/seamless")
    p.add_argument("--device", default="cuda:0", help="cuda:N, or cpu for a dry run of the script")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    import torch_side

    torch_side.configure()
    dev = args.device
    dry = dev == "cpu"
    if not dry and not torch.cuda.is_available():
        raise SystemExit("PyTorch sees no GPU (use --device cpu for a dry run)")
    ordinal = dev.split(":")[1] if ":" in dev else "0"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models.split(","):
            path = Path(tmp) / f"{preset}.safetensors"
            subprocess.run([args.seamless, "random-model", "--preset", preset, "--seed", "0", "--out", str(path)],
                           check=True, capture_output=True)
            for prec in args.precisions.split(","):
                if dry and prec != "f32":
                    continue
                for win in (int(w) for w in args.windows.split(",")):
                    row = {"model": preset, "precision": prec, "window": win}
                    if not dry:
                        cmd = [args.seamless, "bench", str(path), "--backend", "cuda", "--precision", prec,
                               "--size", str(win), "--runs", "1", "--warmup", "1", "--no-peak", "--json",
                               "--device", ordinal]
                        out = subprocess.run(cmd, capture_output=True, text=True)
                        if out.returncode != 0:
                            row["seamless_error"] = out.stderr.strip().splitlines()[-1:]
                        else:
                            mem = json.loads(out.stdout)["memory"]
                            row["planned"] = mem["planned_total_bytes"]
                            row["planned_arena"] = mem["planned"]["arena_bytes"]
                            row["allocated"] = mem["allocated_total_bytes"]
                            row["driver"] = mem["used_after_bytes"] - mem["used_before_bytes"]
                    model, cin, align = torch_side.build(path, dev, prec)
                    if win % align:
                        raise SystemExit(f"window {win} is not a multiple of {preset}'s A = {align}")
                    x = torch_side.random_input(cin, win, dev, prec)
                    try:
                        with torch.inference_mode():
                            model(x)  # cudnn.benchmark picks its algorithms (and workspaces) here
                            if not dry:
                                torch.cuda.synchronize()
                                torch.cuda.reset_peak_memory_stats()
                            model(x)
                            if not dry:
                                torch.cuda.synchronize()
                                row["torch_peak"] = torch.cuda.max_memory_allocated()
                                row["torch_reserved"] = torch.cuda.max_memory_reserved()
                    except torch.cuda.OutOfMemoryError:
                        row["torch_peak"] = None
                    del model, x
                    if not dry:
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    def mib(v):
        return "—" if v is None else f"{v / MIB:,.0f}"

    print()
    print("| model | precision | window | seamless planned MiB | seamless allocated MiB | seamless driver MiB "
          "| PyTorch max_memory_allocated MiB | PyTorch reserved MiB | PyTorch / planned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (f"{r['torch_peak'] / r['planned']:.2f}x" if r.get("torch_peak") and r.get("planned") else "—")
        print(f"| {r['model']} | {r['precision']} | {r['window']} | {mib(r.get('planned'))} "
              f"| {mib(r.get('allocated'))} | {mib(r.get('driver'))} | {mib(r.get('torch_peak'))} "
              f"| {mib(r.get('torch_reserved'))} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
