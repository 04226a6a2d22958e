#!/usr/bin/env python3
"""Independent reference ("oracle") for seamless: run a seamless model file with ONNX Runtime.

It needs only numpy, onnx, onnxruntime and safetensors -- no torch, and none of the other tools'
code -- so that a mistake shared by the PyTorch definitions and the Rust engine cannot hide here.
The network is rebuilt from docs/model-format.md as a plain ONNX graph (Conv, BatchNormalization,
Relu, MaxPool, ConvTranspose, Slice, Resize, Concat, Softmax) and run on the CPU with graph
optimisations off, so every operator is computed as written.

Reference run (the exactness contract of docs/design.md): the whole image, zero-padded at the
bottom/right to a multiple of the alignment A, every conv with its own zero "same" padding, output
cropped back.

    reference_onnx.py --model M.safetensors --input IN.npy --output OUT.npy
    reference_onnx.py --model M.safetensors --input IN.npy --compare SEAMLESS_OUT.npy [--tol 1e-4]
    reference_onnx.py --random-model OUT.safetensors --arch unet --config '{...}' --seed 1

IN.npy is (H, W) or (H, W, C), float, already normalised (no normalisation is applied unless
--zscore is given). OUT.npy is float32 (H, W, classes) softmax probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
FORMAT = "seamless-model"
FORMAT_VERSION = "1"


class ModelError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Config and expected tensors, derived from docs/model-format.md
# ---------------------------------------------------------------------------------------------


def parse_config(arch: str, cfg: dict) -> dict:
    """Check a config and fill defaults. Unknown keys are only warned about (a consumer should be
    lenient; the exporter is the strict side)."""
    def req_int(key, minimum=1):
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ModelError(f"config: {key!r} must be an integer >= {minimum}, got {v!r}")
        return v

    if not isinstance(cfg, dict):
        raise ModelError("config must be a JSON object")
    if arch == "unet":
        known = {"in_channels", "classes", "base_filters", "depth", "batch_norm", "up_mode", "bn_eps", "norm"}
        c = {k: req_int(k) for k in ("in_channels", "classes", "base_filters", "depth")}
        norm = cfg.get("norm")
        if norm in ("instance", "group"):
            raise ModelError(f"config: norm {norm!r} cannot be tiled exactly (whole-image statistics); refused")
        if norm not in (None, "batch", "none"):
            raise ModelError(f"config: unknown norm {norm!r}")
        bn = cfg.get("batch_norm", None if norm is None else norm == "batch")
        if not isinstance(bn, bool):
            raise ModelError(f"config: 'batch_norm' must be true or false, got {bn!r}")
        if norm is not None and (norm == "batch") != bn:
            raise ModelError(f"config: norm={norm!r} disagrees with batch_norm={bn}")
        c["batch_norm"] = bn
        up = cfg.get("up_mode")
        if up == "bilinear_align_corners":
            raise ModelError("config: up_mode 'bilinear_align_corners' cannot be tiled exactly; refused")
        if up not in ("transpose", "bilinear", "nearest"):
            raise ModelError(f"config: up_mode must be transpose, bilinear or nearest, got {up!r}")
        c["up_mode"] = up
    elif arch == "fcdensenet":
        known = {"in_channels", "classes", "first_conv_filters", "growth_rate", "down_blocks",
                 "bottleneck_layers", "up_blocks", "bn_eps"}
        c = {k: req_int(k) for k in ("in_channels", "classes", "first_conv_filters", "growth_rate",
                                     "bottleneck_layers")}
        for k in ("down_blocks", "up_blocks"):
            v = cfg.get(k)
            if not isinstance(v, list) or not v or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                       for n in v):
                raise ModelError(f"config: {k!r} must be a non-empty list of integers >= 1, got {v!r}")
            c[k] = v
        if len(c["down_blocks"]) != len(c["up_blocks"]):
            raise ModelError("config: up_blocks and down_blocks must have the same number of entries")
    else:
        raise ModelError(f"unknown architecture {arch!r}")
    eps = cfg.get("bn_eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ModelError(f"config: bn_eps must be a positive number, got {eps!r}")
    c["bn_eps"] = float(eps)
    unknown = sorted(set(cfg) - known)
    if unknown:
        print(f"reference_onnx: warning: ignoring unknown config key(s) {unknown}", file=sys.stderr)
    return c


def alignment(arch: str, c: dict) -> int:
    return 2 ** (c["depth"] if arch == "unet" else len(c["down_blocks"]))


def _unet_channels(c: dict):
    """Per level channel counts of the U-Net: (down outputs, [(up in, up mid, up out)])."""
    f, d = c["base_filters"], c["depth"]
    factor = 1 if c["up_mode"] == "transpose" else 2
    down = [f * 2 ** i // (factor if i == d else 1) for i in range(1, d + 1)]
    ups = []
    for i in range(1, d + 1):
        cin = f * 2 ** (d - i + 1)
        out = f * 2 ** (d - i) // (1 if i == d else factor)
        mid = out if c["up_mode"] == "transpose" else cin // 2
        ups.append((cin, mid, out))
    return down, ups


def _double_conv_tensors(prefix: str, cin: int, mid: int, out: int, bn: bool):
    t = OrderedDict()
    if bn:
        t[f"{prefix}.double_conv.0.weight"] = (mid, cin, 3, 3)
        for s in ("weight", "bias", "running_mean", "running_var"):
            t[f"{prefix}.double_conv.1.{s}"] = (mid,)
        t[f"{prefix}.double_conv.3.weight"] = (out, mid, 3, 3)
        for s in ("weight", "bias", "running_mean", "running_var"):
            t[f"{prefix}.double_conv.4.{s}"] = (out,)
    else:
        t[f"{prefix}.double_conv.0.weight"] = (mid, cin, 3, 3)
        t[f"{prefix}.double_conv.0.bias"] = (mid,)
        t[f"{prefix}.double_conv.2.weight"] = (out, mid, 3, 3)
        t[f"{prefix}.double_conv.2.bias"] = (out,)
    return t


def _bn_tensors(prefix: str, ch: int):
    return OrderedDict((f"{prefix}.{s}", (ch,)) for s in ("weight", "bias", "running_mean", "running_var"))


def _dense_block_tensors(prefix: str, cin: int, g: int, n: int):
    t = OrderedDict()
    for j in range(n):
        t.update(_bn_tensors(f"{prefix}.layers.{j}.norm", cin + j * g))
        t[f"{prefix}.layers.{j}.conv.weight"] = (g, cin + j * g, 3, 3)
        t[f"{prefix}.layers.{j}.conv.bias"] = (g,)
    return t


def expected_tensors(arch: str, c: dict) -> "OrderedDict[str, tuple]":
    """Every tensor name a model file must hold, with its shape, in state_dict order."""
    t = OrderedDict()
    if arch == "unet":
        f, bn = c["base_filters"], c["batch_norm"]
        down, ups = _unet_channels(c)
        t.update(_double_conv_tensors("inc", c["in_channels"], f, f, bn))
        prev = f
        for i, out in enumerate(down, 1):
            t.update(_double_conv_tensors(f"down{i}.maxpool_conv.1", prev, out, out, bn))
            prev = out
        for i, (cin, mid, out) in enumerate(ups, 1):
            if c["up_mode"] == "transpose":
                t[f"up{i}.up.weight"] = (cin, cin // 2, 2, 2)
                t[f"up{i}.up.bias"] = (cin // 2,)
            t.update(_double_conv_tensors(f"up{i}.conv", cin, mid, out, bn))
        t["outc.conv.weight"] = (c["classes"], f, 1, 1)
        t["outc.conv.bias"] = (c["classes"],)
        return t

    g = c["growth_rate"]
    ch = c["first_conv_filters"]
    t["firstconv.weight"] = (ch, c["in_channels"], 3, 3)
    t["firstconv.bias"] = (ch,)
    skips = []
    for i, n in enumerate(c["down_blocks"]):
        t.update(_dense_block_tensors(f"denseBlocksDown.{i}", ch, g, n))
        ch += g * n
        skips.append(ch)
    for i, _ in enumerate(c["down_blocks"]):
        ch_i = skips[i]
        t.update(_bn_tensors(f"transDownBlocks.{i}.norm", ch_i))
        t[f"transDownBlocks.{i}.conv.weight"] = (ch_i, ch_i, 1, 1)
        t[f"transDownBlocks.{i}.conv.bias"] = (ch_i,)
    t.update(_dense_block_tensors("bottleneck.bottleneck", ch, g, c["bottleneck_layers"]))
    prev = g * c["bottleneck_layers"]
    ups = []
    for i, n in enumerate(c["up_blocks"]):
        ups.append((prev, prev + skips[-1 - i], n))
        prev = g * n
    for i, (p, _, _) in enumerate(ups):
        t[f"transUpBlocks.{i}.convTrans.weight"] = (p, p, 3, 3)
        t[f"transUpBlocks.{i}.convTrans.bias"] = (p,)
    for i, (_, cin, n) in enumerate(ups):
        t.update(_dense_block_tensors(f"denseBlocksUp.{i}", cin, g, n))
    final_in = ups[-1][1] + g * ups[-1][2]
    t["finalConv.weight"] = (c["classes"], final_in, 1, 1)
    t["finalConv.bias"] = (c["classes"],)
    return t


# ---------------------------------------------------------------------------------------------
# Reading a model file
# ---------------------------------------------------------------------------------------------


def read_model(path: str | Path):
    """Return (arch, config, weights as float32 numpy arrays, metadata); validates everything the
    spec requires (format keys, every tensor present with its exact shape, dtype F32/F16)."""
    from safetensors import safe_open

    path = str(path)
    try:
        handle = safe_open(path, framework="np")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise ModelError(f"{path}: not a readable safetensors file: {e}") from e
    with handle as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ModelError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
        arch = meta.get("architecture")
        try:
            raw_cfg = json.loads(meta.get("config", ""))
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: metadata 'config' is not JSON: {e}") from e
        cfg = parse_config(arch, raw_cfg)
        expected = expected_tensors(arch, cfg)
        names = set(f.keys())
        problems = [f"missing tensor {k} {list(s)}" for k, s in expected.items() if k not in names]
        problems += [f"unexpected tensor {k}" for k in sorted(names - set(expected))]
        weights = {}
        for k in expected:
            if k not in names:
                continue
            try:
                a = f.get_tensor(k)
            except Exception as e:  # noqa: BLE001 - e.g. bf16, which numpy cannot hold
                problems.append(f"tensor {k}: cannot read ({e}); dtype must be F32 or F16")
                continue
            if a.dtype not in (np.float32, np.float16):
                problems.append(f"tensor {k}: dtype {a.dtype}, expected F32 or F16")
            elif tuple(a.shape) != expected[k]:
                problems.append(f"tensor {k}: shape {list(a.shape)}, expected {list(expected[k])}")
            else:
                weights[k] = a.astype(np.float32)  # F16 is widened on load, as seamless does
        if problems:
            raise ModelError(f"{path}: " + "; ".join(problems))
    return arch, cfg, weights, meta


# ---------------------------------------------------------------------------------------------
# ONNX graph
# ---------------------------------------------------------------------------------------------


class _Graph:
    """Small helper that names nodes and turns file tensors into initializers."""

    def __init__(self, weights: dict):
        self.w = weights
        self.nodes = []
        self.inits = {}
        self.n = 0

    def _name(self, op):
        self.n += 1
        return f"{op.lower()}_{self.n}"

    def init(self, name):
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(self.w[name]), name)
        return name

    def const(self, arr, hint):
        name = f"const_{hint}_{len(self.inits)}"
        self.inits[name] = numpy_helper.from_array(arr, name)
        return name

    def op(self, op_type, inputs, **attrs):
        out = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, prefix, k, bias=True):
        ins = [x, self.init(f"{prefix}.weight")] + ([self.init(f"{prefix}.bias")] if bias else [])
        p = k // 2  # zero "same" padding
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[p, p, p, p], strides=[1, 1])

    def bn(self, x, prefix, eps):
        # Inference form: (x - running_mean) / sqrt(running_var + eps) * weight + bias.
        return self.op("BatchNormalization",
                       [x] + [self.init(f"{prefix}.{s}") for s in ("weight", "bias", "running_mean", "running_var")],
                       epsilon=eps)

    def relu(self, x):
        return self.op("Relu", [x])

    def maxpool(self, x):
        return self.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])

    def concat(self, xs):
        return self.op("Concat", xs, axis=1)


def _unet(g: _Graph, x: str, c: dict) -> str:
    bn, eps = c["batch_norm"], c["bn_eps"]

    def double_conv(x, prefix):
        if bn:
            x = g.relu(g.bn(g.conv(x, f"{prefix}.double_conv.0", 3, bias=False), f"{prefix}.double_conv.1", eps))
            return g.relu(g.bn(g.conv(x, f"{prefix}.double_conv.3", 3, bias=False), f"{prefix}.double_conv.4", eps))
        x = g.relu(g.conv(x, f"{prefix}.double_conv.0", 3))
        return g.relu(g.conv(x, f"{prefix}.double_conv.2", 3))

    d = c["depth"]
    skips = [double_conv(x, "inc")]
    for i in range(1, d + 1):
        skips.append(double_conv(g.maxpool(skips[-1]), f"down{i}.maxpool_conv.1"))
    x = skips.pop()
    scales = g.const(np.array([1, 1, 2, 2], np.float32), "scales") if c["up_mode"] != "transpose" else None
    for i in range(1, d + 1):
        if c["up_mode"] == "transpose":
            x = g.op("ConvTranspose", [x, g.init(f"up{i}.up.weight"), g.init(f"up{i}.up.bias")],
                     kernel_shape=[2, 2], strides=[2, 2])
        elif c["up_mode"] == "bilinear":
            # PyTorch align_corners=False: source = (dst + 0.5) / 2 - 0.5, i.e. ONNX half_pixel; at
            # the border both clamp to the edge pixel (checked in check_oracle_vs_torch.py).
            x = g.op("Resize", [x, "", scales], mode="linear", coordinate_transformation_mode="half_pixel")
        else:
            # PyTorch 'nearest': source = floor(dst / 2) = ONNX asymmetric + floor.
            x = g.op("Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
        x = double_conv(g.concat([skips.pop(), x]), f"up{i}.conv")
    return g.conv(x, "outc.conv", 1)


def _fcdensenet(g: _Graph, x: str, c: dict) -> str:
    eps = c["bn_eps"]

    def dense_block(x, prefix, n, new_only):
        new = []
        for j in range(n):
            p = f"{prefix}.layers.{j}"
            out = g.conv(g.relu(g.bn(x, f"{p}.norm", eps)), f"{p}.conv", 3)
            new.append(out)
            x = g.concat([x, out])
        return (new[0] if len(new) == 1 else g.concat(new)) if new_only else x

    # Slice parameters for the transposed-conv crop: keep rows/columns [0, 2h) of the 2h+1.
    starts = g.const(np.array([0, 0], np.int64), "starts")
    ends = g.const(np.array([-1, -1], np.int64), "ends")
    axes = g.const(np.array([2, 3], np.int64), "axes")

    x = g.conv(x, "firstconv", 3)
    skips = []
    for i, n in enumerate(c["down_blocks"]):
        x = dense_block(x, f"denseBlocksDown.{i}", n, new_only=False)
        skips.append(x)
        x = g.conv(g.relu(g.bn(x, f"transDownBlocks.{i}.norm", eps)), f"transDownBlocks.{i}.conv", 1)
        x = g.maxpool(x)
    x = dense_block(x, "bottleneck.bottleneck", c["bottleneck_layers"], new_only=True)
    last = len(c["up_blocks"]) - 1
    for i, n in enumerate(c["up_blocks"]):
        p = f"transUpBlocks.{i}.convTrans"
        x = g.op("ConvTranspose", [x, g.init(f"{p}.weight"), g.init(f"{p}.bias")],
                 kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])
        x = g.op("Slice", [x, starts, ends, axes])
        x = g.concat([x, skips.pop()])
        x = dense_block(x, f"denseBlocksUp.{i}", n, new_only=i != last)
    return g.conv(x, "finalConv", 1)


def build_onnx(arch: str, cfg: dict, weights: dict) -> onnx.ModelProto:
    """The network as an ONNX model: input 'image' [N, C, H, W] (H, W multiples of A), output
    'probabilities' [N, classes, H, W]."""
    g = _Graph(weights)
    x = "image"
    logits = _unet(g, x, cfg) if arch == "unet" else _fcdensenet(g, x, cfg)
    probs = g.op("Softmax", [logits], axis=1)
    g.nodes.append(helper.make_node("Identity", [probs], ["probabilities"]))
    graph = helper.make_graph(
        g.nodes, f"seamless_{arch}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", cfg["in_channels"], "H", "W"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", cfg["classes"], "H", "W"])],
        list(g.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="seamless reference_onnx.py")
    model.ir_version = min(model.ir_version, 9)  # readable by older onnxruntime releases too
    onnx.checker.check_model(model)
    return model


def make_session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    # No fusions (Conv+BN folding etc.): the oracle computes each operator exactly as written.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Running on an image
# ---------------------------------------------------------------------------------------------


def zscore(image: np.ndarray) -> np.ndarray:
    """Per channel (x - mean) / std over the whole image in float64 (population std); a constant
    channel only has its mean removed. Returns float32."""
    x = image.astype(np.float64)
    x = x[..., None] if x.ndim == 2 else x
    mean = x.mean(axis=(0, 1))
    std = x.std(axis=(0, 1))
    std = np.where(std > 0, std, 1.0)
    out = ((x - mean) / std).astype(np.float32)
    return out[..., 0] if image.ndim == 2 else out


def to_nchw(image: np.ndarray, in_channels: int) -> np.ndarray:
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ModelError(f"input must be (H, W) or (H, W, C), got shape {image.shape}")
    if image.shape[2] != in_channels:
        raise ModelError(f"input has {image.shape[2]} channel(s), the model expects {in_channels}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ModelError(f"input dtype is {image.dtype}: the oracle expects an already normalised float image "
                         "(or pass --zscore)")
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None].astype(np.float32))


def run_reference(arch: str, cfg: dict, weights: dict, image: np.ndarray, pad_mode: str = "zero",
                  session: ort.InferenceSession | None = None) -> np.ndarray:
    """Whole-image reference run: pad bottom/right to a multiple of A, run, crop. Returns float32
    (H, W, classes)."""
    x = to_nchw(image, cfg["in_channels"])
    h, w = x.shape[2:]
    a = alignment(arch, cfg)
    ph, pw = (-h) % a, (-w) % a
    if ph or pw:
        np_mode = {"zero": "constant", "reflect": "reflect"}[pad_mode]
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=np_mode)
    sess = session or make_session(build_onnx(arch, cfg, weights))
    (probs,) = sess.run(["probabilities"], {"image": x})
    return np.ascontiguousarray(probs[0, :, :h, :w].transpose(1, 2, 0), dtype=np.float32)


def compare(reference: np.ndarray, other: np.ndarray, tol: float) -> bool:
    """Print the errors of `other` against `reference`; True when relative error <= tol.

    Float input: max abs error and rel = max|a - b| / max|reference|. Integer (H, W) input is
    taken as labels and compared with the reference's argmax."""
    if other.ndim == 2 and np.issubdtype(other.dtype, np.integer):
        ref_labels = reference.argmax(axis=2)
        wrong = other != ref_labels
        top2 = np.sort(reference, axis=2)[:, :, -2:]
        # A label may legitimately flip where the two best classes are (numerically) tied.
        clear = wrong & ((top2[:, :, 1] - top2[:, :, 0]) > tol)
        print(f"labels: {int(wrong.sum())} of {wrong.size} differ from the reference argmax; "
              f"{int(clear.sum())} where the reference margin exceeds {tol:g}")
        return not clear.any()
    if other.shape != reference.shape:
        if other.ndim == 3 and other.shape == (reference.shape[2],) + reference.shape[:2]:
            print("note: comparing a (classes, H, W) array; transposed to (H, W, classes)")
            other = other.transpose(1, 2, 0)
        else:
            print(f"shape mismatch: reference {reference.shape}, other {other.shape}")
            return False
    a = reference.astype(np.float64)
    b = other.astype(np.float64)
    if not np.isfinite(b).all():
        print(f"other holds {int((~np.isfinite(b)).sum())} non-finite value(s)")
        return False
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(a).max()) if a.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    rmse = float(np.sqrt((diff ** 2).mean())) if diff.size else 0.0
    where = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    labels_wrong = int((a.argmax(axis=2) != b.argmax(axis=2)).sum())
    print(f"max abs error {max_abs:.3e} at {tuple(int(i) for i in where)}; rel error {rel:.3e} "
          f"(tol {tol:g}); rmse {rmse:.3e}; argmax labels differing: {labels_wrong}")
    return rel <= tol


# ---------------------------------------------------------------------------------------------
# Random-weight models (so CI can test without trained weights)
# ---------------------------------------------------------------------------------------------


def random_weights(arch: str, cfg: dict, seed: int) -> "OrderedDict[str, np.ndarray]":
    """He-normal convs (the classifier 1/sqrt(fan_in)); BN gamma~U(0.5,1.5), beta~N(0,0.1), mean~N(0,0.1), var~U(0.5,1.5); conv
    biases ~N(0,0.1). Deterministic for a given numpy Generator (PCG64) stream."""
    rng = np.random.default_rng(seed)
    expected = expected_tensors(arch, cfg)
    out = OrderedDict()
    for name, shape in expected.items():
        prefix, _, leaf = name.rpartition(".")
        is_bn = f"{prefix}.running_mean" in expected
        if is_bn:
            if leaf == "weight":
                a = rng.uniform(0.5, 1.5, shape)
            elif leaf == "bias":
                a = rng.normal(0.0, 0.1, shape)
            elif leaf == "running_mean":
                a = rng.normal(0.0, 0.1, shape)
            else:
                a = rng.uniform(0.5, 1.5, shape)
        elif leaf == "weight":
            transposed = prefix.endswith(".up") or prefix.endswith("convTrans")
            if transposed:
                # ConvTranspose weight [in, out, k, k], stride 2: each output pixel sums
                # in * k*k / 4 terms on average.
                fan_in = shape[0] * shape[2] * shape[3] / 4
            else:
                fan_in = shape[1] * shape[2] * shape[3]
            # He-normal keeps activations at a steady scale through the ReLU layers; the 1x1
            # classifier (no ReLU after it) gets 1/sqrt(fan_in) instead, so that logits stay O(1)
            # and the softmax is not saturated (tests must see probabilities away from 0 and 1).
            gain = 1.0 if prefix in ("outc.conv", "finalConv") else 2.0
            a = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
        else:
            a = rng.normal(0.0, 0.1, shape)
        out[name] = a.astype(np.float32)
    return out


def write_model(path: str | Path, arch: str, cfg: dict, weights: dict, dtype: str = "f32",
                description: str | None = None, extra_metadata: dict | None = None) -> None:
    from safetensors.numpy import save_file

    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra_metadata or {}).items()}
    meta.update(format=FORMAT, format_version=FORMAT_VERSION, architecture=arch, config=json.dumps(cfg))
    if description:
        meta["description"] = description
    np_dtype = {"f32": np.float32, "f16": np.float16}[dtype]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in weights.items()}, str(path), metadata=meta)
    umask = os.umask(0)  # safetensors creates the file 0600; use the usual permissions
    os.umask(umask)
    Path(path).chmod(0o666 & ~umask)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Independent ONNX Runtime reference for seamless model files (numpy/onnx/onnxruntime/safetensors).")
    p.add_argument("--model", help="seamless model file (.safetensors)")
    p.add_argument("--input", help="(H,W) or (H,W,C) float .npy, already normalised")
    p.add_argument("--output", help="write the reference probabilities here, float32 (H,W,classes)")
    p.add_argument("--compare", metavar="NPY",
                   help="seamless output to check: float (H,W,classes) probabilities, or integer (H,W) labels")
    p.add_argument("--tol", type=float, default=1e-4, help="relative error tolerance for --compare (default 1e-4)")
    p.add_argument("--zscore", action="store_true",
                   help="z-score each channel over the whole image first (float64, population std), "
                        "as `seamless infer` does by default")
    p.add_argument("--pad-mode", choices=["zero", "reflect"], default="zero",
                   help="bottom/right padding to a multiple of A (reflect = numpy 'reflect', no edge repeat)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    p.add_argument("--save-onnx", metavar="PATH", help="also write the ONNX graph (for inspection)")
    g = p.add_argument_group("random model")
    g.add_argument("--random-model", metavar="OUT", help="write a model file with random weights and exit")
    g.add_argument("--arch", choices=["unet", "fcdensenet"])
    g.add_argument("--config", help="architecture config JSON (docs/model-format.md)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    g.add_argument("--description", default=None)
    args = p.parse_args(argv)

    try:
        if args.random_model:
            if not args.arch or not args.config:
                p.error("--random-model needs --arch and --config")
            cfg = parse_config(args.arch, json.loads(args.config))
            write_model(args.random_model, args.arch, cfg, random_weights(args.arch, cfg, args.seed), args.dtype,
                        args.description or f"random weights, seed {args.seed} (for tests)",
                        {"random_seed": str(args.seed)})
            print(f"wrote {args.random_model} ({args.arch}, random weights, seed {args.seed}, {args.dtype})")
            return 0
        if not args.model or not args.input:
            p.error("--model and --input are required (or use --random-model)")
        arch, cfg, weights, _ = read_model(args.model)
        model = build_onnx(arch, cfg, weights)
        if args.save_onnx:
            onnx.save(model, args.save_onnx)
        image = np.load(args.input)
        if args.zscore:
            image = zscore(image)
        ref = run_reference(arch, cfg, weights, image, args.pad_mode, make_session(model, args.threads))
        if args.output:
            np.save(args.output, ref)
            print(f"wrote {args.output} {ref.shape} float32")
        if args.compare:
            ok = compare(ref, np.load(args.compare), args.tol)
            print("PASS" if ok else "FAIL")
            return 0 if ok else 1
    except (ModelError, OSError, ValueError) as e:  # bad model, missing/unreadable .npy, bad JSON
        print(f"reference_onnx: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
