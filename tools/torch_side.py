"""The PyTorch side of the GPU comparisons (bench_gpu_vs_torch.py, gpu_memory_vs_torch.py).

Builds, from a seamless model file, the same network in PyTorch (tools/seamless_models.py defines
both families with seamless's tensor names) with the file's weights, in inference mode, fp32 or
fp16, channels_last, cudnn.benchmark on and TF32 off unless asked for. Reads the .safetensors file
itself (a JSON header and raw little-endian data), so the GPU host needs only torch.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import seamless_models  # noqa: E402

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_model_file(path: str | Path) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(architecture, config, state_dict) of a seamless model file."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    sd = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        dtype = DTYPES[t["dtype"]]
        sd[name] = torch.frombuffer(bytearray(data[start:end]), dtype=dtype).reshape(t["shape"]).clone()
    return meta["architecture"], json.loads(meta["config"]), sd


def configure(tf32: bool = False) -> None:
    """cudnn picks its fastest algorithms; TF32 only when asked (seamless's f32 is true f32)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def build(path: str | Path, device: str, precision: str) -> tuple[torch.nn.Module, int, int]:
    """The network of `path` on `device` in `precision` ('f32' or 'f16'), eval mode, channels_last.
    Returns (model, input channels, alignment)."""
    arch, config, sd = read_model_file(path)
    model = seamless_models.build_from_config(arch, config)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    model.eval()
    dtype = torch.float16 if precision == "f16" else torch.float32
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    cfg = seamless_models.normalize_config(arch, config)
    return model, cfg["in_channels"], seamless_models.alignment(arch, config)


def random_input(channels: int, size: int, device: str, precision: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, size, size, generator=g)
    dtype = torch.float16 if precision == "f16" else torch.float32
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def time_forward(model: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int) -> list[float]:
    """Seconds per forward pass (input already on the device), CUDA events on a GPU."""
    import time

    cuda = x.is_cuda
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(runs):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                model(x)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) * 1e-3)
            else:
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    return times
