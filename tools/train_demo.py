#!/usr/bin/env python3
"""Train the two small demo models in models/ on synthetic cell images (CPU, a few minutes).

    cargo build --release
    python tools/train_demo.py                      # writes models/{unet,fcdensenet}-demo.safetensors

Training data come from `seamless synth` (procedural cell-like images with exact masks): 1024x1024
images for seeds 1..N, random 128x128 crops with flips/rotations, each image z-scored over all its
pixels (float64 mean and population std) -- the normalisation `seamless infer` applies by default,
so the models see at inference exactly what they saw in training. Held-out seeds (1000-1003) are
evaluated on whole images (pixel accuracy and foreground IoU), and those numbers go into the file's
"training" metadata and models/README.md.

Everything is seeded (numpy, torch) and single-process; with the same torch version and thread count
a rerun reproduces the weights.

--stand-in uses a numpy imitation of the generator instead of the binary (for developing this
script without a Rust build; the shipped models are trained on the real generator).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_torch import export  # noqa: E402
from seamless_models import build_from_config, weight_state_dict  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

DEMO_CONFIGS = {
    "unet": dict(in_channels=1, classes=2, base_filters=8, depth=3, batch_norm=True, up_mode="transpose"),
    "fcdensenet": dict(in_channels=1, classes=2, first_conv_filters=12, growth_rate=6, down_blocks=[2, 2, 2],
                       bottleneck_layers=2, up_blocks=[2, 2, 2]),
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def synth(binary: Path, seed: int, size: int, workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8, labels uint8) pair from `seamless synth`."""
    img, lab = workdir / f"img{seed}.npy", workdir / f"lab{seed}.npy"
    cmd = [str(binary), "synth", "--width", str(size), "--height", str(size), "--seed", str(seed),
           "--image", str(img), "--labels", str(lab)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    image, labels = np.load(img), np.load(lab)
    if image.shape != (size, size) or labels.shape != (size, size):
        raise SystemExit(f"seamless synth wrote shapes {image.shape}, {labels.shape}; expected ({size}, {size})")
    return image, labels


def stand_in_synth(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A numpy imitation of `seamless synth` (ellipses on a jittered 32-px grid, darker nucleus,
    soft edge, uneven illumination, noise). Only for developing this script."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    v = 40.0 + 15.0 * (np.sin(xx / 377.0) + np.cos(yy / 291.0))
    labels = np.zeros((size, size), np.uint8)
    for gy in range(-1, size // 32 + 1):
        for gx in range(-1, size // 32 + 1):
            if rng.uniform() < 0.35:
                continue
            a = 5 + 9 * rng.uniform()
            b = a * (0.55 + 0.45 * rng.uniform())
            t = np.pi * rng.uniform()
            cx, cy = gx * 32 + 4 + 24 * rng.uniform(), gy * 32 + 4 + 24 * rng.uniform()
            bright = 110 + 90 * rng.uniform()
            y0, y1 = max(int(cy) - 16, 0), min(int(cy) + 17, size)
            x0, x1 = max(int(cx) - 16, 0), min(int(cx) + 17, size)
            if y0 >= y1 or x0 >= x1:
                continue
            dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
            u = (dx * np.cos(t) + dy * np.sin(t)) / a
            w = (-dx * np.sin(t) + dy * np.cos(t)) / b
            d = np.sqrt(u * u + w * w)
            edge = 1 / (1 + np.exp(np.clip((d - 1) * a / 0.8, -50, 50)))
            nucleus = np.where(d < 0.45, 0.7, 1.0)
            v[y0:y1, x0:x1] = np.maximum(v[y0:y1, x0:x1], 40 + (bright - 40) * edge * nucleus)
            labels[y0:y1, x0:x1] |= (d < 1).astype(np.uint8)
    noise = (rng.uniform(size=(3, size, size)).sum(0) - 1.5) * 24
    return np.clip(np.round(v + noise), 0, 255).astype(np.uint8), labels


def zscore(image: np.ndarray) -> np.ndarray:
    """Whole-image z-score: float64 mean and population std over all pixels, result float32."""
    x = image.astype(np.float64)
    std = x.std()
    return ((x - x.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def load_set(seeds, size, binary, stand_in, workdir):
    images, labels = [], []
    for s in seeds:
        img, lab = stand_in_synth(s, size) if stand_in else synth(binary, s, size, workdir)
        images.append(zscore(img))
        labels.append(lab.astype(np.int64))
    return np.stack(images), np.stack(labels)


def random_batch(rng: np.random.Generator, images, labels, batch: int, crop: int):
    """Random crops with a random one of the 8 flips/rotations (cells have no orientation)."""
    n, h, w = images.shape
    xs, ys = [], []
    for _ in range(batch):
        i = rng.integers(n)
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        im, lb = images[i, y:y + crop, x:x + crop], labels[i, y:y + crop, x:x + crop]
        k, flip = rng.integers(4), rng.integers(2)
        im, lb = np.rot90(im, k), np.rot90(lb, k)
        if flip:
            im, lb = im[:, ::-1], lb[:, ::-1]
        xs.append(np.ascontiguousarray(im))
        ys.append(np.ascontiguousarray(lb))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(model, images, labels) -> dict:
    """Whole-image inference (sizes are multiples of A) -> pixel accuracy and foreground IoU."""
    model.eval()
    correct = inter = union = total = 0
    with torch.no_grad():
        for im, lb in zip(images, labels):
            pred = model.logits(torch.from_numpy(im)[None, None]).argmax(1)[0].numpy()
            correct += int((pred == lb).sum())
            total += lb.size
            inter += int(((pred == 1) & (lb == 1)).sum())
            union += int(((pred == 1) | (lb == 1)).sum())
    return {"pixel_accuracy": correct / total, "foreground_iou": inter / union if union else 1.0}


def train(arch: str, cfg: dict, data, eval_data, steps: int, batch: int, crop: int, lr: float, seed: int,
          log_every: int = 100):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Dropout off: these models are tiny and trained briefly, so they underfit rather than overfit.
    model = build_from_config(arch, cfg, **({"dropout": 0.0} if arch == "fcdensenet" else {}))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay to 5% of lr: settles the weights (and BN running statistics) at the end.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    images, labels = data
    t0 = time.time()
    running = 0.0
    for step in range(1, steps + 1):
        model.train()
        x, y = random_batch(rng, images, labels, batch, crop)
        loss = F.cross_entropy(model.logits(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            print(f"  [{arch}] step {step}/{steps} loss {running / n:.4f} ({time.time() - t0:.0f}s)", flush=True)
            running = 0.0
    model.eval()  # freeze BN running statistics for export and evaluation
    metrics = evaluate(model, *eval_data)
    return model, metrics, time.time() - t0


def parse_seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth-bin", default=str(ROOT / "target" / "release" / "seamless"),
                   help="the seamless binary providing `synth` (default target/release/seamless)")
    p.add_argument("--stand-in", action="store_true", help="use the numpy stand-in generator (development only)")
    p.add_argument("--out-dir", default=str(ROOT / "models"))
    p.add_argument("--only", choices=sorted(DEMO_CONFIGS), help="train only this architecture")
    p.add_argument("--train-seeds", default="1-8", help="synth seeds for training (default 1-8)")
    p.add_argument("--eval-seeds", default="1000-1003", help="held-out synth seeds (default 1000-1003)")
    p.add_argument("--size", type=int, default=1024, help="synth image size (default 1024)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps-unet", type=int, default=1000)
    p.add_argument("--steps-fcdensenet", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="torch/numpy seed")
    p.add_argument("--threads", type=int, default=2, help="torch threads (fixed for reproducibility)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train_seeds, eval_seeds = parse_seeds(args.train_seeds), parse_seeds(args.eval_seeds)
    if set(train_seeds) & set(eval_seeds):
        raise SystemExit("training and held-out seeds overlap")
    binary = Path(args.synth_bin)
    if not args.stand_in and not binary.exists():
        raise SystemExit(f"{binary} not found: run `cargo build --release` first (or --stand-in for development)")

    with tempfile.TemporaryDirectory() as d:
        print(f"generating {len(train_seeds)} training and {len(eval_seeds)} held-out {args.size}^2 images "
              f"({'stand-in' if args.stand_in else binary})", flush=True)
        data = load_set(train_seeds, args.size, binary, args.stand_in, Path(d))
        eval_data = load_set(eval_seeds, args.size, binary, args.stand_in, Path(d))
    fg = float(data[1].mean())
    print(f"foreground fraction in training images: {fg:.3f}")

    archs = [args.only] if args.only else ["unet", "fcdensenet"]
    for arch in archs:
        cfg = DEMO_CONFIGS[arch]
        steps = args.steps_unet if arch == "unet" else args.steps_fcdensenet
        model, metrics, secs = train(arch, cfg, data, eval_data, steps, args.batch, args.crop, args.lr, args.seed)
        n_params = sum(v.numel() for k, v in weight_state_dict(model).items())
        print(f"{arch}: held-out pixel accuracy {metrics['pixel_accuracy']:.4f}, foreground IoU "
              f"{metrics['foreground_iou']:.4f} ({secs:.0f}s, {n_params} stored values)", flush=True)
        training = {
            "data": "stand-in generator (NOT seamless synth)" if args.stand_in else "seamless synth",
            "image_size": args.size, "train_seeds": train_seeds, "eval_seeds": eval_seeds,
            "normalisation": "per-image z-score (float64 mean, population std)",
            "crop": args.crop, "batch": args.batch, "steps": steps, "optimizer": "Adam",
            "lr": args.lr, "lr_schedule": "cosine to 5%", "loss": "cross-entropy",
            "augmentation": "random rot90/flip", "seed": args.seed, "torch": torch.__version__,
            "pixel_accuracy": round(metrics["pixel_accuracy"], 5),
            "foreground_iou": round(metrics["foreground_iou"], 5),
            "date": dt.date.today().isoformat(),
        }
        name = "U-Net" if arch == "unet" else "FC-DenseNet"
        desc = (f"demo {name} for synthetic cell images (seamless synth): background/cell; input is one "
                f"z-scored channel; held-out pixel accuracy {metrics['pixel_accuracy']:.4f}, "
                f"foreground IoU {metrics['foreground_iou']:.4f}. See models/README.md.")
        out = export(model, arch, cfg, Path(args.out_dir) / f"{arch}-demo.safetensors", "f32", desc,
                     {"training": training})
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
