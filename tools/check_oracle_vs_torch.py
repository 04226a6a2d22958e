#!/usr/bin/env python3
"""Check the ONNX oracle (reference_onnx.py) against the PyTorch definitions (seamless_models.py).

The two are written independently from docs/model-format.md; agreement to ~1e-6 on the same
weights is evidence that both read the spec the same way (names, shapes, concat orders, the
transposed-conv crop, the up-sampling semantics, batch norm in inference form).

For each configuration, on odd image sizes (so the bottom/right padding is exercised):
  1. torch -> file -> oracle: a torch model with randomised weights *and* BN statistics is written
     with export_torch.export(); the oracle reads the file and runs it; compared with torch in
     float32 and float64 on the same zero-padded input.
  2. oracle -> file -> torch: a random-weight file from reference_onnx.random_weights() is loaded
     into torch through export_torch's loader (names/shapes checked, strict load) and compared.
  3. the oracle's expected tensor list equals torch's state_dict (names, shapes, order).

    check_oracle_vs_torch.py                    # built-in configurations
    check_oracle_vs_torch.py --models models/*.safetensors   # also existing model files

Exits 1 if any difference exceeds --tol (default 1e-5, absolute, on probabilities).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_onnx as ref  # noqa: E402
from export_torch import check_state_dict, export, load_state_dict  # noqa: E402
from seamless_models import build_from_config, weight_state_dict  # noqa: E402

CASES = [
    # (name, arch, config, (H, W))
    ("unet transpose+bn", "unet",
     dict(in_channels=1, classes=2, base_filters=8, depth=3, batch_norm=True, up_mode="transpose"), (37, 53)),
    ("unet bilinear no-bn, 3 in / 3 classes", "unet",
     dict(in_channels=3, classes=3, base_filters=8, depth=2, batch_norm=False, up_mode="bilinear"), (45, 31)),
    ("unet nearest+bn, depth 4", "unet",
     dict(in_channels=1, classes=2, base_filters=4, depth=4, batch_norm=True, up_mode="nearest", bn_eps=1e-3),
     (50, 67)),
    ("unet bilinear+bn, depth 1", "unet",
     dict(in_channels=2, classes=2, base_filters=6, depth=1, batch_norm=True, up_mode="bilinear"), (9, 13)),
    ("fcdensenet small", "fcdensenet",
     dict(in_channels=1, classes=2, first_conv_filters=12, growth_rate=6, down_blocks=[2, 2, 2],
          bottleneck_layers=2, up_blocks=[2, 2, 2]), (41, 29)),
    ("fcdensenet uneven blocks, 2 in / 3 classes", "fcdensenet",
     dict(in_channels=2, classes=3, first_conv_filters=5, growth_rate=4, down_blocks=[1, 2, 3, 1],
          bottleneck_layers=1, up_blocks=[3, 1, 2, 1]), (35, 50)),
]


def randomise_torch(model: torch.nn.Module, seed: int) -> None:
    """Default init leaves BN as identity (mean 0, var 1, gamma 1, beta 0), which would hide BN
    mistakes, and gives near-uniform probabilities, which would hide almost anything. Use He-normal
    conv weights, random BN affine and statistics and non-zero conv biases instead."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.normal_(0, 0.1, generator=g)


def torch_reference(model: torch.nn.Module, image: np.ndarray, dtype: torch.dtype, pad_mode: str = "zero"):
    """Same reference run as the oracle: pad bottom/right to a multiple of A, run, crop; (H,W,classes)."""
    x = image[:, :, None] if image.ndim == 2 else image
    h, w = x.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(dtype)
    a = model.alignment
    mode = "constant" if pad_mode == "zero" else "reflect"
    x = F.pad(x, (0, (-w) % a, 0, (-h) % a), mode=mode)
    m = model.to(dtype).eval()
    with torch.no_grad():
        y = m(x)[0, :, :h, :w].permute(1, 2, 0).numpy()
    model.to(torch.float32)
    return y.astype(np.float64)


def maxdiff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def check_case(name, arch, cfg, size, seed, tol, tmp: Path, pad_mode="zero", dtype="f32") -> bool:
    ok = True
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 1, size + ((cfg["in_channels"],) if cfg["in_channels"] > 1 else ())).astype(np.float32)

    # 3. expected tensors agree with torch's state_dict, in order.
    torch_model = build_from_config(arch, cfg)
    sd_shapes = [(k, tuple(v.shape)) for k, v in weight_state_dict(torch_model).items()]
    exp_shapes = list(ref.expected_tensors(arch, ref.parse_config(arch, cfg)).items())
    if sd_shapes != exp_shapes:
        print(f"  FAIL {name}: oracle's expected tensors differ from torch's state_dict")
        print("   only torch:", sorted(set(sd_shapes) - set(exp_shapes))[:10])
        print("   only oracle:", sorted(set(exp_shapes) - set(sd_shapes))[:10])
        return False

    # 1. torch -> file -> oracle.
    torch.manual_seed(seed)
    torch_model = build_from_config(arch, cfg)
    randomise_torch(torch_model, seed)
    torch_model.eval()
    path = tmp / f"case{seed}.safetensors"
    export(torch_model, arch, cfg, path, dtype=dtype, description=name)
    if dtype == "f16":
        # Compare against the weights as stored: round torch's own copy to f16 as well.
        with torch.no_grad():
            for t in torch_model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
    a, c, w, _ = ref.read_model(path)
    oracle = ref.run_reference(a, c, w, image, pad_mode)
    t32 = torch_reference(torch_model, image, torch.float32, pad_mode)
    t64 = torch_reference(torch_model, image, torch.float64, pad_mode)
    d32, d64, d_tt = maxdiff(oracle, t32), maxdiff(oracle, t64), maxdiff(t32, t64)
    spread = float(oracle.max() - oracle.min())
    good = d32 <= tol and d64 <= tol
    ok &= good
    print(f"  {'ok  ' if good else 'FAIL'} torch->oracle {name} {size[0]}x{size[1]} pad={pad_mode} {dtype}: "
          f"|oracle-torch32| {d32:.2e}  |oracle-torch64| {d64:.2e}  |torch32-torch64| {d_tt:.2e}  "
          f"(prob range {spread:.2f})")

    # 2. oracle random file -> torch.
    cfg_n = ref.parse_config(arch, cfg)
    path2 = tmp / f"random{seed}.safetensors"
    ref.write_model(path2, arch, cfg_n, ref.random_weights(arch, cfg_n, seed))
    sd = load_state_dict(path2)
    check_state_dict(sd, arch, cfg)
    m2 = build_from_config(arch, cfg)
    missing, unexpected = m2.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    a, c, w, _ = ref.read_model(path2)
    oracle2 = ref.run_reference(a, c, w, image, pad_mode)
    t64b = torch_reference(m2, image, torch.float64, pad_mode)
    d2 = maxdiff(oracle2, t64b)
    good = d2 <= tol
    ok &= good
    print(f"  {'ok  ' if good else 'FAIL'} oracle->torch {name}: |oracle-torch64| {d2:.2e} "
          f"(prob range {float(oracle2.max() - oracle2.min()):.2f})")
    return ok


def check_file(path: str, tol: float) -> bool:
    arch, cfg, weights, meta = ref.read_model(path)
    model = build_from_config(arch, {k: v for k, v in cfg.items()})
    sd = {k: torch.from_numpy(v.copy()) for k, v in weights.items()}
    check_state_dict(sd, arch, cfg)
    model.load_state_dict(sd, strict=False)
    model.eval()
    rng = np.random.default_rng(7)
    shape = (77, 101) + ((cfg["in_channels"],) if cfg["in_channels"] > 1 else ())
    image = rng.normal(0, 1, shape).astype(np.float32)
    oracle = ref.run_reference(arch, cfg, weights, image)
    d32 = maxdiff(oracle, torch_reference(model, image, torch.float32))
    d64 = maxdiff(oracle, torch_reference(model, image, torch.float64))
    good = d32 <= tol and d64 <= tol
    print(f"  {'ok  ' if good else 'FAIL'} file {path} ({arch}) 77x101: |oracle-torch32| {d32:.2e}  "
          f"|oracle-torch64| {d64:.2e}")
    return good


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tol", type=float, default=1e-5, help="max abs difference allowed (default 1e-5)")
    p.add_argument("--models", nargs="*", default=[], help="also check these model files")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ok = True
    print(f"torch {torch.__version__}, onnxruntime {ref.ort.__version__}, onnx {ref.onnx.__version__}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for seed, (name, arch, cfg, size) in enumerate(CASES, 1):
            ok &= check_case(name, arch, cfg, size, seed, args.tol, tmp)
        # Reflect padding and f16 storage, once each.
        name, arch, cfg, size = CASES[0]
        ok &= check_case(name, arch, cfg, size, 101, args.tol, tmp, pad_mode="reflect")
        name, arch, cfg, size = CASES[4]
        ok &= check_case(name, arch, cfg, size, 102, args.tol, tmp, dtype="f16")
    for path in args.models:
        ok &= check_file(path, args.tol)
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
