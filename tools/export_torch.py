#!/usr/bin/env python3
"""Export PyTorch U-Net / FC-DenseNet weights to a seamless model file (docs/model-format.md).

    export_torch.py --arch unet --config '{"in_channels":1,"classes":2,"base_filters":64,"depth":4,
        "batch_norm":true,"up_mode":"transpose"}' --state-dict unet.pt --out unet.safetensors

Beware: milesial/Pytorch-UNet's ``bilinear=True`` uses ``align_corners=True``, which seamless refuses
(it cannot be tiled exactly); such weights are NOT equivalent to ``"up_mode": "bilinear"``
(align_corners=False) and exporting them under it would silently change the network's output.

The state_dict may be a plain state_dict or a checkpoint dict holding it under 'state_dict' or
'model'. Its names and shapes are checked against the network built from --config before anything
is written, so a file seamless receives is always complete and consistent.

Library use (tools/train_demo.py): ``export(model, arch, config, path, dtype, description)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seamless_models import ConfigError, build_from_config, normalize_config, weight_state_dict  # noqa: E402

FORMAT = "seamless-model"
FORMAT_VERSION = "1"
DTYPES = {"f32": torch.float32, "f16": torch.float16}
F16_MAX = 65504.0


class ExportError(Exception):
    pass


def _metadata(arch: str, config: Mapping[str, Any], description: str | None,
              extra_metadata: Mapping[str, Any] | None) -> dict[str, str]:
    meta: dict[str, str] = {}
    for k, v in (extra_metadata or {}).items():
        # safetensors metadata is string -> string; structured values are stored as JSON text.
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    # The format keys are written last so extra_metadata can never override them.
    meta.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "config": json.dumps(normalize_config(arch, config)),
    })
    if description:
        meta["description"] = description
    return meta


def export(model: torch.nn.Module, arch: str, config: Mapping[str, Any] | str, path: str | Path,
           dtype: str = "f32", description: str | None = None,
           extra_metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights as a seamless model file at ``path``.

    The model must have the layout ``build_from_config(arch, config)`` produces; this is checked.
    Batch-norm running statistics are written as they are, so call ``model.eval()`` first if the
    model was just trained (eval() does not change the buffers, it just stops further updates).
    """
    from safetensors.torch import save_file

    if isinstance(config, str):
        config = json.loads(config)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; expected f32 or f16")
    sd = weight_state_dict(model)
    check_state_dict(sd, arch, config)
    tensors = {}
    for name, t in sd.items():
        t = t.detach().to("cpu", torch.float32)
        if not torch.isfinite(t).all():
            raise ExportError(f"tensor {name} holds NaN or infinite values")
        if dtype == "f16" and t.abs().max() > F16_MAX:
            raise ExportError(f"tensor {name} has values beyond the f16 range (|x| <= {F16_MAX}); export as f32")
        tensors[name] = t.to(DTYPES[dtype]).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=_metadata(arch, config, description, extra_metadata))
    # safetensors creates the file 0600; give it the usual permissions (it is not a secret).
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
    return path


def check_state_dict(sd: Mapping[str, torch.Tensor], arch: str, config: Mapping[str, Any]) -> None:
    """Raise ExportError listing every missing, extra or mis-shaped tensor against the config."""
    expected = {k: tuple(v.shape) for k, v in weight_state_dict(build_from_config(arch, config)).items()}
    got = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    misshaped = [f"{k}: expected {list(expected[k])}, got {list(got[k])}"
                 for k in expected if k in got and expected[k] != got[k]]
    not_float = [f"{k}: {sd[k].dtype}" for k in expected if k in sd and not sd[k].is_floating_point()]
    problems = []
    for title, items in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped),
                         ("not floating point", not_float)):
        if items:
            problems.append(f"{len(items)} {title} tensor(s):\n  " + "\n  ".join(items))
    if problems:
        raise ExportError(f"state_dict does not match {arch} config {json.dumps(dict(config))}:\n"
                          + "\n".join(problems))


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a state_dict from a .pt/.pth file (plain or a checkpoint dict) or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        # weights_only refuses arbitrary pickled objects (a checkpoint can run code when unpickled).
        obj = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises several types here
        raise ExportError(f"cannot load {path}: {e}\n(if you trust this file and it pickles more than tensors, "
                          "pass --trust-pickle)") from e
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ExportError(f"{path} does not hold a state_dict (a name -> tensor map); top level: {keys}")
    sd = dict(obj)
    # torch.nn.DataParallel / DistributedDataParallel prefix every name with 'module.'.
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Export PyTorch weights to a seamless model file (safetensors, docs/model-format.md).",
        epilog="Note: milesial/Pytorch-UNet's bilinear=True means align_corners=True, which seamless refuses; "
               "do not export such weights as up_mode 'bilinear' (align_corners=False).")
    p.add_argument("--arch", required=True, choices=["unet", "fcdensenet"])
    p.add_argument("--config", required=True,
                   help="the architecture's config as JSON text, or @file.json (see docs/model-format.md)")
    p.add_argument("--state-dict", required=True, help=".pt/.pth state_dict or checkpoint, or .safetensors")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32", help="stored precision (default f32)")
    p.add_argument("--description", default=None, help="free text shown by `seamless info`")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow non-tensor objects in the checkpoint (unpickling can run code)")
    args = p.parse_args(argv)
    try:
        text = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ExportError(f"--config is not valid JSON: {e}") from e
        config = normalize_config(args.arch, config)
        sd = load_state_dict(args.state_dict, args.trust_pickle)
        check_state_dict(sd, args.arch, config)
        model = build_from_config(args.arch, config)
        model.load_state_dict(sd, strict=False)  # strict check done above; num_batches_tracked may be absent
        model.eval()
        out = export(model, args.arch, config, args.out, args.dtype, args.description)
    except (ExportError, ConfigError) as e:
        print(f"export_torch: error: {e}", file=sys.stderr)
        return 2
    n = sum(v.numel() for v in weight_state_dict(model).values())
    print(f"wrote {out} ({args.arch}, {n} weights, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
