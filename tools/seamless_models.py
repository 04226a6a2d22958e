"""PyTorch definitions of the two network families seamless runs.

The module layout follows docs/model-format.md exactly, so that ``model.state_dict()`` produces the
tensor names and shapes a seamless model file must hold:

* ``UNet``: the common milesial/Pytorch-UNet (DoubleConv / Down / Up / OutConv), generalised to any
  depth ``d`` and base width ``f``, with optional batch norm and three up-sampling modes.
* ``FCDenseNet``: Jégou et al.'s FC-DenseNet laid out like bfortuner/pytorch_tiramisu.

Both ``forward`` methods return softmax probabilities over the channel axis (seamless's output), and
both require the spatial size to be a multiple of the model's down-sampling factor ``A``
(``model.alignment``): seamless always zero-pads the whole image to such a size, so the networks
never need the size-fixing pads/crops some reference implementations insert (those would make the
result depend on the image size, which breaks exact tiling).

Only torch is needed here; the ONNX oracle (reference_onnx.py) deliberately re-derives everything
from the spec without importing this file.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURES = ("unet", "fcdensenet")

# ---------------------------------------------------------------------------------------------
# Configuration handling
# ---------------------------------------------------------------------------------------------

UNET_KEYS = {"in_channels", "classes", "base_filters", "depth", "batch_norm", "up_mode", "bn_eps", "norm"}
FCDENSENET_KEYS = {
    "in_channels", "classes", "first_conv_filters", "growth_rate", "down_blocks",
    "bottleneck_layers", "up_blocks", "bn_eps",
}

# FC-DenseNet presets from the paper (docs/model-format.md, "Presets").
FCDENSENET_PRESETS = {
    56: dict(first_conv_filters=48, growth_rate=12, down_blocks=[4] * 5, bottleneck_layers=4, up_blocks=[4] * 5),
    67: dict(first_conv_filters=48, growth_rate=16, down_blocks=[5] * 5, bottleneck_layers=5, up_blocks=[5] * 5),
    103: dict(first_conv_filters=48, growth_rate=16, down_blocks=[4, 5, 7, 10, 12], bottleneck_layers=15,
              up_blocks=[12, 10, 7, 5, 4]),
}


class ConfigError(ValueError):
    """A model configuration that the format does not describe or that seamless refuses."""


def _require_int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    if key not in cfg:
        raise ConfigError(f"config is missing required key {key!r}")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"config key {key!r} must be an integer >= {minimum}, got {v!r}")
    return v


def _bn_eps(cfg: Mapping[str, Any]) -> float:
    eps = cfg.get("bn_eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"config key 'bn_eps' must be a positive number, got {eps!r}")
    return float(eps)


def normalize_config(arch: str, config: Mapping[str, Any], strict: bool = True) -> dict:
    """Validate ``config`` against docs/model-format.md and return it with defaults filled in.

    The returned dict is what export writes into the file, so files always state every setting
    explicitly (``bn_eps`` included). With ``strict`` unknown keys are an error (they are almost
    always typos when a person writes a config by hand).
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(config).__name__}")
    known = UNET_KEYS if arch == "unet" else FCDENSENET_KEYS
    unknown = sorted(set(config) - known)
    if unknown and strict:
        raise ConfigError(f"unknown {arch} config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    if arch == "unet":
        out = {
            "in_channels": _require_int(config, "in_channels", 1),
            "classes": _require_int(config, "classes", 1),
            "base_filters": _require_int(config, "base_filters", 1),
            "depth": _require_int(config, "depth", 1),
        }
        norm = config.get("norm")
        if norm is not None and norm not in ("batch", "none"):
            if norm in ("instance", "group"):
                raise ConfigError(
                    f"norm {norm!r} is refused: its statistics are taken over the whole spatial extent, "
                    "so a tile cannot reproduce the whole-image result")
            raise ConfigError(f"unknown norm {norm!r}; expected 'batch' or 'none'")
        bn = config.get("batch_norm")
        if bn is None:
            if norm is None:
                raise ConfigError("config must give 'batch_norm' (true/false)")
            bn = norm == "batch"
        if not isinstance(bn, bool):
            raise ConfigError(f"config key 'batch_norm' must be true or false, got {bn!r}")
        if norm is not None and (norm == "batch") != bn:
            raise ConfigError(f"config keys disagree: norm={norm!r} but batch_norm={bn}")
        out["batch_norm"] = bn
        up = config.get("up_mode")
        if up == "bilinear_align_corners":
            raise ConfigError(
                "up_mode 'bilinear_align_corners' is refused: with align_corners=True the sampling "
                "positions depend on the size of the whole feature map, so tiles cannot be exact")
        if up not in ("transpose", "bilinear", "nearest"):
            raise ConfigError(f"config key 'up_mode' must be 'transpose', 'bilinear' or 'nearest', got {up!r}")
        out["up_mode"] = up
        out["bn_eps"] = _bn_eps(config)
        factor = 1 if up == "transpose" else 2
        f, d = out["base_filters"], out["depth"]
        # Channel counts are divided by 2 (bilinear/nearest mid) and by factor; refuse configs where
        # that would not be an integer instead of silently flooring like milesial's `//`.
        if factor == 2 and (f * 2 ** d) % 4 != 0:
            raise ConfigError(f"base_filters*2^depth = {f * 2 ** d} must be divisible by 4 for up_mode {up!r}")
        return out

    out = {
        "in_channels": _require_int(config, "in_channels", 1),
        "classes": _require_int(config, "classes", 1),
        "first_conv_filters": _require_int(config, "first_conv_filters", 1),
        "growth_rate": _require_int(config, "growth_rate", 1),
    }
    for key in ("down_blocks", "up_blocks"):
        v = config.get(key)
        if (not isinstance(v, list) or not v
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in v)):
            raise ConfigError(f"config key {key!r} must be a non-empty list of integers >= 1, got {v!r}")
        out[key] = list(v)
    if len(out["down_blocks"]) != len(out["up_blocks"]):
        raise ConfigError(
            f"up_blocks has {len(out['up_blocks'])} entries but down_blocks has {len(out['down_blocks'])}; "
            "they must match")
    out["bottleneck_layers"] = _require_int(config, "bottleneck_layers", 1)
    out["bn_eps"] = _bn_eps(config)
    # Key order as in docs/model-format.md, for readable metadata.
    order = ["in_channels", "classes", "first_conv_filters", "growth_rate", "down_blocks",
             "bottleneck_layers", "up_blocks", "bn_eps"]
    return {k: out[k] for k in order}


def alignment(arch: str, config: Mapping[str, Any]) -> int:
    """Total down-sampling factor A: inputs must be a multiple of it in both dimensions."""
    if arch == "unet":
        return 2 ** config["depth"]
    return 2 ** len(config["down_blocks"])


# ---------------------------------------------------------------------------------------------
# U-Net (milesial/Pytorch-UNet, generalised)
# ---------------------------------------------------------------------------------------------


class DoubleConv(nn.Module):
    """(conv3x3 => [BN] => ReLU) * 2. With BN the convs have no bias (BN's shift replaces it)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 batch_norm: bool = True, bn_eps: float = 1e-5):
        super().__init__()
        mid = mid_channels or out_channels
        if batch_norm:
            layers = [
                nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),  # double_conv.0
                nn.BatchNorm2d(mid, eps=bn_eps),  # .1
                nn.ReLU(inplace=True),  # .2
                nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),  # .3
                nn.BatchNorm2d(out_channels, eps=bn_eps),  # .4
                nn.ReLU(inplace=True),  # .5
            ]
        else:
            layers = [
                nn.Conv2d(in_channels, mid, 3, padding=1),  # double_conv.0
                nn.ReLU(inplace=True),  # .1
                nn.Conv2d(mid, out_channels, 3, padding=1),  # .2
                nn.ReLU(inplace=True),  # .3
            ]
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    """MaxPool2d(2) then DoubleConv; names `maxpool_conv.1.double_conv.*`."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool, bn_eps: float):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, batch_norm=batch_norm, bn_eps=bn_eps))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Up-sample the deeper map, concatenate [skip, upsampled], DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, up_mode: str, batch_norm: bool, bn_eps: float):
        super().__init__()
        self.up_mode = up_mode
        if up_mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels, batch_norm=batch_norm, bn_eps=bn_eps)
        else:
            # No parameters; align_corners=False is the only bilinear variant that tiles exactly.
            if up_mode == "bilinear":
                self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            else:
                self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2, batch_norm=batch_norm, bn_eps=bn_eps)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        if x1.shape[-2:] != x2.shape[-2:]:
            # milesial pads here; we refuse instead, because the pad would depend on the image size.
            raise ValueError(f"up-sampled size {tuple(x1.shape[-2:])} != skip size {tuple(x2.shape[-2:])}: "
                             "input size must be a multiple of the model's alignment")
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class UNet(nn.Module):
    """U-Net of depth d and base width f; module names `inc`, `down{i}`, `up{i}`, `outc`."""

    def __init__(self, in_channels: int, classes: int, base_filters: int = 64, depth: int = 4,
                 batch_norm: bool = True, up_mode: str = "transpose", bn_eps: float = 1e-5):
        super().__init__()
        self.config = normalize_config("unet", dict(
            in_channels=in_channels, classes=classes, base_filters=base_filters, depth=depth,
            batch_norm=batch_norm, up_mode=up_mode, bn_eps=bn_eps))
        self.depth = depth
        self.alignment = 2 ** depth
        f = base_filters
        factor = 1 if up_mode == "transpose" else 2
        self.inc = DoubleConv(in_channels, f, batch_norm=batch_norm, bn_eps=bn_eps)
        for i in range(1, depth + 1):
            out = f * 2 ** i
            if i == depth:
                out //= factor
            self.add_module(f"down{i}", Down(f * 2 ** (i - 1), out, batch_norm, bn_eps))
        for i in range(1, depth + 1):
            cin = f * 2 ** (depth - i + 1)
            out = f * 2 ** (depth - i)
            if i != depth:
                out //= factor
            self.add_module(f"up{i}", Up(cin, out, up_mode, batch_norm, bn_eps))
        self.outc = OutConv(f, classes)

    def logits(self, x):
        _check_aligned(x, self.alignment)
        skips = [self.inc(x)]
        for i in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        x = skips.pop()
        for i in range(1, self.depth + 1):
            x = getattr(self, f"up{i}")(x, skips.pop())
        return self.outc(x)

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)


# ---------------------------------------------------------------------------------------------
# FC-DenseNet (bfortuner/pytorch_tiramisu layout)
# ---------------------------------------------------------------------------------------------


class DenseLayer(nn.Sequential):
    """BN -> ReLU -> conv3x3 (in -> growth, bias) -> dropout (identity at inference)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_eps: float, dropout: float):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels, eps=bn_eps))
        self.add_module("relu", nn.ReLU(True))
        self.add_module("conv", nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=True))
        self.add_module("drop", nn.Dropout2d(dropout))


class DenseBlock(nn.Module):
    """Each layer sees [block input, outputs so far]. `upsample=True` returns only the new features
    (bottleneck and all up blocks but the last); otherwise the input and new features."""

    def __init__(self, in_channels: int, growth_rate: int, n_layers: int, upsample: bool, bn_eps: float,
                 dropout: float):
        super().__init__()
        self.upsample = upsample
        self.layers = nn.ModuleList(
            [DenseLayer(in_channels + i * growth_rate, growth_rate, bn_eps, dropout) for i in range(n_layers)])

    def forward(self, x):
        new_features = []
        for layer in self.layers:
            out = layer(x)
            x = torch.cat([x, out], 1)
            new_features.append(out)
        return torch.cat(new_features, 1) if self.upsample else x


class TransitionDown(nn.Sequential):
    """BN -> ReLU -> conv1x1 (c -> c, bias) -> dropout -> MaxPool2d(2)."""

    def __init__(self, in_channels: int, bn_eps: float, dropout: float):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels, eps=bn_eps))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=True))
        self.add_module("drop", nn.Dropout2d(dropout))
        self.add_module("maxpool", nn.MaxPool2d(2))


class TransitionUp(nn.Module):
    """ConvTranspose2d 3x3 stride 2 padding 0 (output 2h+1), crop to [0, 2h), concat [up, skip].

    tiramisu's center_crop computes the offset as (2h+1 - 2h) // 2 = 0, i.e. exactly rows/columns
    [0, 2h); we write that crop directly."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convTrans = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=3, stride=2, padding=0, bias=True)

    def forward(self, x, skip):
        out = self.convTrans(x)
        h, w = skip.shape[-2:]
        if out.shape[-2] != h + 1 or out.shape[-1] != w + 1:
            raise ValueError(f"transposed-conv output {tuple(out.shape[-2:])} does not match skip {(h, w)}: "
                             "input size must be a multiple of the model's alignment")
        return torch.cat([out[:, :, :h, :w], skip], 1)


class Bottleneck(nn.Sequential):
    def __init__(self, in_channels: int, growth_rate: int, n_layers: int, bn_eps: float, dropout: float):
        super().__init__()
        self.add_module("bottleneck", DenseBlock(in_channels, growth_rate, n_layers, True, bn_eps, dropout))


class FCDenseNet(nn.Module):
    def __init__(self, in_channels: int, classes: int, first_conv_filters: int = 48, growth_rate: int = 16,
                 down_blocks=(4, 5, 7, 10, 12), bottleneck_layers: int = 15, up_blocks=(12, 10, 7, 5, 4),
                 bn_eps: float = 1e-5, dropout: float = 0.2):
        super().__init__()
        # dropout is a training-time setting only; it is not part of the file's config.
        self.config = normalize_config("fcdensenet", dict(
            in_channels=in_channels, classes=classes, first_conv_filters=first_conv_filters,
            growth_rate=growth_rate, down_blocks=list(down_blocks), bottleneck_layers=bottleneck_layers,
            up_blocks=list(up_blocks), bn_eps=bn_eps))
        self.alignment = 2 ** len(down_blocks)
        g = growth_rate
        self.firstconv = nn.Conv2d(in_channels, first_conv_filters, kernel_size=3, padding=1, bias=True)
        c = first_conv_filters
        skip_channels = []
        self.denseBlocksDown = nn.ModuleList()
        self.transDownBlocks = nn.ModuleList()
        for n in down_blocks:
            self.denseBlocksDown.append(DenseBlock(c, g, n, False, bn_eps, dropout))
            c += g * n
            skip_channels.insert(0, c)
            self.transDownBlocks.append(TransitionDown(c, bn_eps, dropout))
        self.bottleneck = Bottleneck(c, g, bottleneck_layers, bn_eps, dropout)
        prev = g * bottleneck_layers  # the bottleneck passes on only its new features
        self.transUpBlocks = nn.ModuleList()
        self.denseBlocksUp = nn.ModuleList()
        for i, n in enumerate(up_blocks):
            last = i == len(up_blocks) - 1
            self.transUpBlocks.append(TransitionUp(prev, prev))
            c = prev + skip_channels[i]
            self.denseBlocksUp.append(DenseBlock(c, g, n, not last, bn_eps, dropout))
            prev = g * n
        c += g * up_blocks[-1]  # the last up block outputs its input and its new features
        self.finalConv = nn.Conv2d(c, classes, kernel_size=1, bias=True)

    def logits(self, x):
        _check_aligned(x, self.alignment)
        out = self.firstconv(x)
        skips = []
        for block, trans in zip(self.denseBlocksDown, self.transDownBlocks):
            out = block(out)
            skips.append(out)
            out = trans(out)
        out = self.bottleneck(out)
        for trans, block in zip(self.transUpBlocks, self.denseBlocksUp):
            out = block(trans(out, skips.pop()))
        return self.finalConv(out)

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)


# ---------------------------------------------------------------------------------------------


def _check_aligned(x, a: int):
    h, w = x.shape[-2:]
    if h % a or w % a:
        raise ValueError(f"input size {h}x{w} is not a multiple of the model's alignment {a}; "
                         "zero-pad it at the bottom/right first (see pad_to_alignment)")


def pad_to_alignment(x: torch.Tensor, a: int) -> torch.Tensor:
    """Zero-pad an NCHW tensor at the bottom/right to a multiple of ``a`` (seamless's reference run)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % a, 0, (-h) % a))


def build_from_config(arch: str, config: Mapping[str, Any] | str, **training_options) -> nn.Module:
    """Build the network a seamless model file describes.

    ``config`` is the file's config object (or its JSON text). ``training_options`` are settings
    not stored in the file (FC-DenseNet ``dropout``).
    """
    if isinstance(config, str):
        config = json.loads(config)
    cfg = normalize_config(arch, config)
    if arch == "unet":
        cfg.pop("norm", None)
        return UNet(**cfg)
    return FCDenseNet(**cfg, **training_options)


def weight_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without PyTorch's `num_batches_tracked` counters (not weights)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
