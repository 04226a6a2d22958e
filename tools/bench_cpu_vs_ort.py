#!/usr/bin/env python3
"""seamless (CPU) against ONNX Runtime and OpenVINO (CPU) on the same architecture, side by side,
at f32 and bf16: forward passes and whole one-off processes.

For each model it writes a random-weight model file with `seamless random-model --preset ...`,
builds the same network as an ONNX graph with tools/reference_onnx.py's builder (saved to a .onnx
file) and a random size x size 8-bit RGB PNG, and sets up one cell per (engine, precision):

- seamless: `seamless --threads T bench MODEL --size S --runs 1 --warmup 1 --json
  [--precision bf16]`, a fresh process per timed pass; its forward time is the report's
  `median_seconds` (one pass after one warm-up pass). A binary that refuses `--precision bf16`
  (a usage error, exit code 2) leaves its bf16 cells "unavailable", with the error message.
- ONNX Runtime: CPUExecutionProvider, graph optimisations ENABLED (ORT_ENABLE_ALL: conv+BN
  folding, NCHWc layouts, fusions), intra-op threads = T, sequential. f32 only: its bf16 cells
  are "n/a", as ONNX Runtime's CPU provider has no bf16 convolution kernels (a bf16 graph would
  not run, or fall back to f32 through casts, which measures nothing of bf16).
- OpenVINO: `openvino.Core().compile_model(ONNX, "CPU", config)` with INFERENCE_PRECISION_HINT
  f32 or bf16, INFERENCE_NUM_THREADS = T, PERFORMANCE_HINT = LATENCY, NUM_STREAMS = 1. The
  precision it actually runs is read back from the compiled model (on a CPU without bf16 support
  it may run f32, which the table then says); a refused compilation leaves the cell unavailable.
  Whether the CPU has AMX (amx_bf16, amx_tile) and avx512_bf16 is recorded with the results.

Forward time: after one warm-up pass per in-process engine, each round times one forward pass per
cell on the same input (f32, batch 1), in an order rotated every round, with a short pause before
each pass so that the previous engine's idle worker threads have gone to sleep. Each round gives
throughput ratios seamless / peer (peer time / seamless time, > 1: seamless faster) measured
within seconds of each other on a machine whose load changes: seamless f32 against ONNX Runtime
f32 and OpenVINO f32, seamless bf16 against OpenVINO bf16 and, across precisions, seamless bf16
against the f32 peers and each engine's bf16 against its own f32. The report is the median of
each ratio over rounds and its range (min-max), plus each cell's median time.

Whole-process time: each round also times, per cell, a fresh process doing everything a user's
one-off run of one S x S window does (after one untimed run per cell, so the file cache is warm
for all alike): for seamless `seamless --threads T infer --model MODEL --input IN.png --output
OUT.png --whole --backend cpu [--precision bf16]` (read the PNG, z-score, one forward pass,
argmax, write the labels PNG); for ONNX Runtime and OpenVINO tools/bench_cpu_window.py in a fresh
Python (import the library, load the .onnx file and build the session or compile it, read and
z-score the same PNG, one forward pass, argmax, write the labels PNG). The wall time of the
subprocess is measured, interpreter or process start included, and ratios as above.
"whole - fwd" (for seamless: its fixed cost) is the median over rounds of whole-process time
minus forward time: start-up, model loading or compilation, input and output, and the first
(cold) pass's extra cost over a warm one.

Speed on a shared machine is only meaningful as such an interleaved ratio: an absolute time from
one side alone says as much about the neighbours as about the code.

    python tools/bench_cpu_vs_ort.py [--models unet-64,fcdensenet-103] [--size 512] [--rounds 5]
        [--threads 2] [--engines seamless,ort,openvino] [--precisions f32,bf16] [--no-whole]
        [--seamless target/release/seamless] [--workdir DIR] [--json OUT.json]

Needs the packages of tools/requirements-bench.txt (openvino only with --engines ...openvino) and
a release build of seamless. The exit status is 1 when an f32 cell could not be measured (bf16
cells may be unavailable by design). FC-DenseNet-103's exact halo is 1152 px, so a real tile is
larger than 512; the comparison is per 512 x 512 window all the same (every engine computes the
same window).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
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
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_cpu_window  # noqa: E402  (the ONNX Runtime / OpenVINO one-off process, its PNG writer)
import reference_onnx  # noqa: E402  (the ONNX graph builder the oracle uses)

ENGINES = {"seamless": "seamless", "ort": "onnxruntime", "openvino": "openvino"}
PRECISIONS = ("f32", "bf16")
ORT_BF16 = "ONNX Runtime's CPU execution provider has no bf16 convolution kernels"
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


class Unavailable(Exception):
    """A cell that cannot be measured (refused by its engine, or failed); the message says why."""


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_flag_set() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def seamless_identity(exe: str, tmp: Path) -> tuple[str, str]:
    """(version, commit) of the binary itself, from the --summary of a tiny run (6 ms): the binary
    may have been built from another commit than this checkout's."""
    version = "unknown"
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip() or version
        summary = tmp / "identity-summary.json"
        subprocess.run([exe, "--threads", "1", "infer", "--model", "unet-4-d1", "--input", "synth:32x32",
                        "--channels", "0,0,0", "--output", str(tmp / "identity.npy"), "--whole", "--backend",
                        "cpu", "--overwrite", "--quiet", "--summary", str(summary)], capture_output=True)
        return version, json.loads(summary.read_text())["seamless"]["commit"]
    except (OSError, ValueError, KeyError):
        return version, "unknown"


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        sys.exit(f"--engines openvino needs the openvino package (tools/requirements-bench.txt): {e}")
    return openvino


def short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Measure:
    """The timings of one cell for one kind of measurement (forward or whole process)."""

    def __init__(self):
        self.status, self.reason, self.times, self.details = "ok", None, [], []

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    def median(self) -> float | None:
        return statistics.median(self.times) if self.ok and self.times else None

    def to_json(self) -> dict:
        d = {"status": self.status, "reason": self.reason, "times_s": self.times}
        if self.ok and self.times:
            d.update(median_s=self.median(), min_s=min(self.times), max_s=max(self.times))
        if self.details:
            d["details"] = self.details
        return d


class Cell:
    def __init__(self, engine: str, precision: str):
        self.engine, self.precision = engine, precision
        self.fwd, self.whole = Measure(), Measure()
        self.precision_ran = None  # what the engine reported it ran
        self.forward = None  # () -> (seconds, detail dict)
        self.seamless_layers = None

    def measure(self, kind: str) -> Measure:
        return self.fwd if kind == "forward" else self.whole

    @property
    def label(self) -> str:
        return f"{ENGINES[self.engine]} {self.precision}"

    def to_json(self) -> dict:
        d = {"engine": ENGINES[self.engine], "precision": self.precision, "precision_ran": self.precision_ran,
             "forward": self.fwd.to_json(), "whole_process": self.whole.to_json()}
        if self.seamless_layers is not None:
            d["seamless_layers"] = self.seamless_layers
        return d


def seamless_bench(exe: str, model_path: Path, size: int, threads: int, precision: str) -> tuple[float, dict]:
    """One timed forward pass (after one warm-up pass) in a fresh `seamless bench` process."""
    cmd = [exe, "--threads", str(threads), "bench", str(model_path), "--size", str(size), "--runs", "1",
           "--warmup", "1", "--json"]
    if precision != "f32":
        cmd += ["--precision", precision]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise Unavailable(f"seamless bench{' --precision ' + precision if precision != 'f32' else ''} exited "
                          f"{out.returncode}: {short(out.stderr)}")
    rep = json.loads(out.stdout)
    return rep["median_seconds"], rep


def ort_session(onnx_model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def openvino_compile(ov, onnx_path: Path, precision: str, threads: int):
    """The compiled model and the precision it runs (read back, e.g. f32 where bf16 is unsupported)."""
    try:
        compiled = ov.Core().compile_model(str(onnx_path), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError or its own types
        raise Unavailable(f"OpenVINO compile_model with INFERENCE_PRECISION_HINT={precision} failed: "
                          f"{short(str(e))}") from e
    return compiled, compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def whole_process(cell: Cell, args, model_path: Path, onnx_path: Path, png: Path, out_dir: Path) -> tuple[float, dict]:
    """Wall time of one fresh process doing a user's one-off run of the window."""
    out = out_dir / f"{cell.engine}-{cell.precision}-labels.png"
    if cell.engine == "seamless":
        cmd = [args.seamless, "--threads", str(args.threads), "infer", "--model", str(model_path), "--input", str(png),
               "--output", str(out), "--whole", "--backend", "cpu", "--overwrite"]
        if cell.precision != "f32":
            cmd += ["--precision", cell.precision]
    else:
        cmd = [sys.executable, str(HERE / "bench_cpu_window.py"), "--engine", cell.engine, "--onnx", str(onnx_path),
               "--input", str(png), "--output", str(out), "--threads", str(args.threads),
               "--precision", cell.precision]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        what = "seamless infer" if cell.engine == "seamless" else "bench_cpu_window.py"
        raise Unavailable(f"{what} ({cell.label}) exited {res.returncode}: {short(res.stderr)}")
    if cell.engine == "seamless":
        return wall, {}
    detail = json.loads(res.stdout.strip().splitlines()[-1])
    return wall, detail


def ratio_pairs(cells: dict) -> list[tuple[str, str, str]]:
    """(name, numerator cell key, denominator cell key): throughput of the first / the second."""
    peers = ("ort", "openvino")
    pairs = []
    for p in PRECISIONS:
        for e in peers:
            pairs.append((f"seamless {p} / {ENGINES[e]} {p}", ("seamless", p), (e, p)))
    for e in peers:
        pairs.append((f"seamless bf16 / {ENGINES[e]} f32", ("seamless", "bf16"), (e, "f32")))
    for e in ("seamless", "openvino"):
        pairs.append((f"{ENGINES[e]} bf16 / {ENGINES[e]} f32", (e, "bf16"), (e, "f32")))
    return [(n, a, b) for n, a, b in pairs if a in cells and b in cells]


def ratio_stats(rounds: list[dict], kind: str, cells: dict) -> dict:
    """Per-round ratios of every pair both of whose cells were measured in that round, with median
    and range."""
    out = {}
    for name, a, b in ratio_pairs(cells):
        if not (cells[a].measure(kind).ok and cells[b].measure(kind).ok):
            continue
        la, lb = cells[a].label, cells[b].label
        per_round = [r[kind][lb] / r[kind][la] for r in rounds if la in r[kind] and lb in r[kind]]
        if per_round:
            out[name] = {"of": la, "over": lb, "median": statistics.median(per_round), "min": min(per_round),
                         "max": max(per_round), "rounds": per_round}
    return out


def fmt_ratio(r: dict | None) -> str:
    return "-" if r is None else f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})"


def fmt_s(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def bench_model(preset: str, args, engines: list[str], precisions: list[str], workdir: Path, ov) -> dict:
    path = workdir / f"{preset}.safetensors"
    subprocess.run([args.seamless, "random-model", "--preset", preset, "--seed", "0", "--out", str(path),
                    "--overwrite"], check=True, capture_output=True)
    arch, cfg, weights, _ = reference_onnx.read_model(path)
    onnx_model = reference_onnx.build_onnx(arch, cfg, weights)
    onnx_path = workdir / f"{preset}.onnx"
    onnx.save(onnx_model, str(onnx_path))
    x = np.random.default_rng(1).standard_normal((1, cfg["in_channels"], args.size, args.size)).astype(np.float32)
    png = workdir / f"{preset}-input-{args.size}.png"
    pixels = np.random.default_rng(2).integers(0, 256, (args.size, args.size, cfg["in_channels"]), dtype=np.uint8)
    bench_cpu_window.write_png(png, pixels[:, :, 0] if cfg["in_channels"] == 1 else pixels)

    cells = {}
    for p in precisions:
        for e in engines:
            cell = cells[(e, p)] = Cell(e, p)
            if e == "seamless":
                cell.forward = lambda p=p: seamless_bench(args.seamless, path, args.size, args.threads, p)
            elif e == "ort" and p != "f32":
                cell.fwd.fail("n/a", ORT_BF16)
                cell.whole.fail("n/a", ORT_BF16)
            elif e == "ort":
                sess = ort_session(onnx_model, args.threads)
                sess.run(None, {"image": x})  # warm-up (allocations, layout packing)
                cell.precision_ran = "f32"
                cell.forward = lambda sess=sess: (timed(lambda: sess.run(None, {"image": x})), {})
            else:
                try:
                    compiled, cell.precision_ran = openvino_compile(ov, onnx_path, p, args.threads)
                except Unavailable as err:
                    cell.fwd.fail("unavailable", str(err))
                    continue
                request = compiled.create_infer_request()
                request.infer({"image": x})  # warm-up
                cell.forward = lambda request=request: (timed(lambda: request.infer({"image": x})), {})
    if cfg["in_channels"] not in bench_cpu_window.PNG_CHANNELS:
        for cell in cells.values():
            if cell.whole.ok:
                cell.whole.fail("unavailable", f"{cfg['in_channels']} input channels do not fit a PNG")
    if not args.whole:
        for cell in cells.values():
            if cell.whole.ok:
                cell.whole.fail("skipped", "--no-whole")
    # One untimed whole-process run per cell: warms the file cache (binary, libraries, model files)
    # for every engine alike, and finds the cells whose engine refuses the run.
    for cell in cells.values():
        if cell.whole.ok:
            try:
                whole_process(cell, args, path, onnx_path, png, workdir)
            except Unavailable as err:
                cell.whole.fail("unavailable", str(err))

    order = list(cells.values())
    rounds = []
    for r in range(args.rounds):
        k = r % len(order)
        rotated = order[k:] + order[:k]
        rec = {"order": [c.label for c in rotated], "forward": {}, "whole": {}}
        for kind, run in (("forward", lambda c: c.forward()),
                          ("whole", lambda c: whole_process(c, args, path, onnx_path, png, workdir))):
            for cell in rotated:
                m = cell.measure(kind)
                if not m.ok:
                    continue
                time.sleep(args.pause)
                try:
                    t, detail = run(cell)
                except Unavailable as err:
                    m.fail("unavailable", str(err))
                    continue
                m.times.append(t)
                rec[kind][cell.label] = t
                if cell.engine == "seamless" and kind == "forward":
                    cell.precision_ran = detail.get("precision", cell.precision)
                    cell.seamless_layers = detail.get("layers")
                    m.details.append({"median_compute_seconds": detail.get("median_compute_seconds"),
                                      "median_cpu_seconds": detail.get("median_cpu_seconds")})
                    rec.setdefault("flop_per_pixel", detail.get("flop_per_pixel"))
                elif detail:
                    if kind == "whole" and cell.engine != "seamless":
                        ran = detail.get("precision_ran")
                        if ran and cell.precision_ran and ran != cell.precision_ran:
                            print(f"note: {cell.label} whole process ran {ran}, in-process {cell.precision_ran}",
                                  file=sys.stderr)
                    m.details.append(detail)
        rounds.append(rec)
        line = "; ".join(f"{kind} " + ", ".join(f"{lab} {t:.3f} s" for lab, t in rec[kind].items())
                         for kind in ("forward", "whole") if rec[kind])
        print(f"{preset} round {r + 1}/{args.rounds}: {line}", flush=True)

    for cell in cells.values():
        for m, name in ((cell.fwd, "forward"), (cell.whole, "whole process")):
            if m.status == "unavailable":
                print(f"{preset}: {cell.label} {name} unavailable: {m.reason}", file=sys.stderr)
    flop = next((r["flop_per_pixel"] for r in rounds if r.get("flop_per_pixel")), None)
    px = args.size * args.size
    cell_json = []
    for cell in cells.values():
        d = cell.to_json()
        tf, tw = cell.fwd.median(), cell.whole.median()
        if tf:
            d["forward"]["mpx_per_s"] = px / tf / 1e6
            if flop:
                d["forward"]["gflop_per_s"] = flop * px / tf / 1e9
        diffs = [rd["whole"][cell.label] - rd["forward"][cell.label] for rd in rounds
                 if cell.label in rd["whole"] and cell.label in rd["forward"]]
        if tf and tw and diffs:
            d["whole_minus_forward_s"] = {"median": statistics.median(diffs), "min": min(diffs), "max": max(diffs)}
        cell_json.append(d)
    return {"model": preset, "flop_per_pixel": flop, "in_channels": cfg["in_channels"], "cells": cell_json,
            "ratios": {"forward": ratio_stats(rounds, "forward", cells),
                       "whole_process": ratio_stats(rounds, "whole", cells)},
            "rounds": rounds}


def print_table(results: list[dict]) -> None:
    head = (f"{'model':<15} {'prec':<5} {'engine':<12} {'forward s':>9} {'GFLOP/s':>8} {'whole s':>8} "
            f"{'whole-fwd':>9}  {'fwd ratio (range)':<21} {'whole ratio (range)':<21}")
    print(head)
    print("-" * len(head))
    for res in results:
        for c in res["cells"]:
            prefix = f"{res['model']:<15} {c['precision']:<5} {c['engine']:<12}"
            f, w = c["forward"], c["whole_process"]
            if f["status"] != "ok" and w["status"] != "ok":
                print(f"{prefix} {f['status']}: {short(f['reason'] or '', 110)}")
                continue
            fr = wr = None
            if c["engine"] != "seamless":
                name = f"seamless {c['precision']} / {c['engine']} {c['precision']}"
                fr, wr = res["ratios"]["forward"].get(name), res["ratios"]["whole_process"].get(name)
            note = ""
            if c["precision_ran"] and c["precision_ran"] != c["precision"]:
                note += f" ran {c['precision_ran']}!"
            for m, what in ((f, "forward"), (w, "whole process")):
                if m["status"] not in ("ok", "skipped"):
                    note += f" {what} {m['status']}: {short(m['reason'] or '', 80)}"
            wmf = c.get("whole_minus_forward_s", {}).get("median")
            print(f"{prefix} {fmt_s(f.get('median_s')):>9} {fmt_s(f.get('gflop_per_s'), '.1f'):>8} "
                  f"{fmt_s(w.get('median_s')):>8} {fmt_s(wmf):>9}  {fmt_ratio(fr):<21} {fmt_ratio(wr):<21}{note}")
        for kind, key in (("forward", "forward"), ("whole process", "whole_process")):
            for name, r in res["ratios"][key].items():
                a, b = r["of"].split(), r["over"].split()
                if a[0] != "seamless" or a[1] != b[1]:  # the same-precision ratios are in the rows above
                    print(f"{'':<15} {kind} {name}: {fmt_ratio(r)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="unet-64,fcdensenet-103", help="comma-separated presets")
    p.add_argument("--size", type=int, default=512, help="square input window side (default 512)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model (default 5)")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--engines", default="seamless,ort,openvino",
                   help="comma-separated: seamless, ort, openvino (default all three)")
    p.add_argument("--precisions", default="f32,bf16", help="comma-separated: f32, bf16 (default both)")
    p.add_argument("--no-whole", dest="whole", action="store_false",
                   help="skip the whole-process timings (forward passes only)")
    p.add_argument("--pause", type=float, default=0.3,
                   help="seconds of idle before each timed run, so the previous engine's threads sleep (default 0.3)")
    p.add_argument("--seamless", default=str(HERE.parent / "target" / "release" / "seamless"),
                   help="the seamless binary (default target/release/seamless)")
    p.add_argument("--workdir", default=None, help="where to write the model, ONNX and PNG files (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the results here as JSON")
    args = p.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    precisions = [q for q in args.precisions.split(",") if q]
    bad = [e for e in engines if e not in ENGINES] + [q for q in precisions if q not in PRECISIONS]
    if bad or not engines or not precisions:
        p.error(f"unknown or missing engine/precision {bad}: engines are {list(ENGINES)}, precisions {PRECISIONS}")
    engines = [e for e in ENGINES if e in engines]  # canonical order
    precisions = [q for q in PRECISIONS if q in precisions]
    ov = import_openvino() if "openvino" in engines else None

    flags = cpu_flag_set()
    env = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "simd": " ".join(f for f in SIMD_FLAGS if f in flags) or "unknown",
        "amx": "amx_bf16" in flags and "amx_tile" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "openvino": importlib.metadata.version("openvino") if ov else None,
        "openvino_build": ov.__version__ if ov else None,
        "threads": args.threads,
        "size": args.size,
        "rounds": args.rounds,
        "engines": engines,
        "precisions": precisions,
        "whole_process": args.whole,
        "pause_s": args.pause,
        "loadavg_before": os.getloadavg(),
    }
    if ov:
        try:
            env["openvino_cpu_capabilities"] = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception as e:  # noqa: BLE001
            env["openvino_cpu_capabilities"] = f"unknown ({e})"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env["seamless_version"], env["seamless_commit"] = seamless_identity(args.seamless, Path(tmp))
        env["tool_commit"] = git_rev()
        print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for preset in [m for m in args.models.split(",") if m]:
            results.append(bench_model(preset, args, engines, precisions, workdir, ov))
    env["loadavg_after"] = os.getloadavg()
    print()
    print_table(results)
    print(f"(ratio = seamless throughput / that engine's at the same precision, per interleaved round: > 1 means "
          f"seamless is faster; whole = a fresh process's wall time for one {args.size} x {args.size} window; "
          f"whole-fwd = whole minus forward, for seamless its fixed cost; load average before "
          f"{env['loadavg_before'][0]:.2f}, after {env['loadavg_after'][0]:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2))
    f32_failed = [f"{r['model']} {c['engine']} f32" for r in results for c in r["cells"] if c["precision"] == "f32"
                  and "unavailable" in (c["forward"]["status"], c["whole_process"]["status"])]
    if f32_failed:
        print(f"error: f32 cell(s) could not be measured: {', '.join(f32_failed)}", file=sys.stderr)
    return 1 if f32_failed else 0


if __name__ == "__main__":
    sys.exit(main())
