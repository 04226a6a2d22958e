#!/usr/bin/env python3
"""One user's one-off run of one window with ONNX Runtime or OpenVINO, as a fresh process.

tools/bench_cpu_vs_ort.py times this script's whole process (interpreter start included) against
`seamless infer --whole` on the same PNG: both read an 8-bit PNG, z-score every channel over the
whole image (population std, in float64, as seamless's default `--normalize zscore`), run the
network once, take the argmax over classes and write the labels as an 8-bit greyscale PNG. Here
the network is the ONNX file tools/bench_cpu_vs_ort.py wrote; the engine library is imported,
the file loaded and the session built (ONNX Runtime) or the model compiled (OpenVINO) inside the
timed process, as a user's script would.

    python tools/bench_cpu_window.py --engine ort|openvino --onnx MODEL.onnx --input IN.png
        --output OUT.png [--threads 2] [--precision f32|bf16]

It prints one JSON line: the time of each phase and the precision the engine ran. PNGs are read
and written with Pillow. Needs numpy, Pillow and the engine's package
(tools/requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402  (after T_START: numpy's import is part of the run)

from PIL import Image  # noqa: E402  (the same: a user's script decodes with a library too)

# Channels a PNG of this tool holds: grey or RGB.
PNG_CHANNELS = (1, 3)


def write_png(path, image: np.ndarray) -> None:
    """An (H, W) or (H, W, 3) uint8 array as an 8-bit PNG."""
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")


def read_png(path) -> np.ndarray:
    """An 8-bit grey or RGB PNG as (H, W) or (H, W, 3) uint8."""
    with Image.open(path) as im:
        if im.mode not in ("L", "RGB"):
            raise ValueError(f"{path}: mode {im.mode}; this tool reads 8-bit grey or RGB PNGs")
        return np.asarray(im)


def zscore_nchw(image: np.ndarray) -> np.ndarray:
    """Per channel (x - mean) / std over the whole image in float64 (population std; a constant
    channel only loses its mean), as float32 (1, C, H, W)."""
    x = image.astype(np.float64)
    x = x[..., None] if x.ndim == 2 else x
    std = x.std(axis=(0, 1))
    x = (x - x.mean(axis=(0, 1))) / np.where(std > 0, std, 1.0)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, choices=["ort", "openvino"])
    p.add_argument("--onnx", required=True, help="the ONNX file (input 'image', output 'probabilities')")
    p.add_argument("--input", required=True, help="8-bit grey or RGB PNG")
    p.add_argument("--output", required=True, help="labels PNG to write")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                   help="OpenVINO's INFERENCE_PRECISION_HINT (ONNX Runtime: f32 only)")
    args = p.parse_args(argv)
    phases = {}

    t = time.perf_counter()
    if args.engine == "ort":
        if args.precision != "f32":
            sys.exit("bench_cpu_window: ONNX Runtime's CPU provider runs f32 only")
        import onnxruntime as ort
        phases["import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
        ran = "f32"

        def run(x):
            return sess.run(["probabilities"], {"image": x})[0]
    else:
        import openvino as ov
        phases["import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        compiled = ov.Core().compile_model(args.onnx, "CPU", {
            "INFERENCE_PRECISION_HINT": args.precision, "INFERENCE_NUM_THREADS": args.threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        request = compiled.create_infer_request()

        def run(x):
            request.infer({"image": x})
            return request.get_output_tensor(0).data
    phases["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    x = zscore_nchw(read_png(args.input))
    phases["read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    probs = run(x)
    phases["forward_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_png(args.output, np.argmax(probs[0], axis=0).astype(np.uint8))
    phases["write_s"] = time.perf_counter() - t
    phases["total_in_process_s"] = time.perf_counter() - T_START
    print(json.dumps({"engine": args.engine, "precision_requested": args.precision, "precision_ran": ran,
                      "phases": phases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
