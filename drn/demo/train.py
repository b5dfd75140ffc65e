"""The demo's models and their training: a narrow DRN-D-22 classifier (digits_model) trained on image labels
only (train_steps, train), and the segmenter built on it (segmentation_model) fine-tuned with per-pixel labels
(train_segmentation). The trained weights are the package's assets (WEIGHTS, SEG_WEIGHTS)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..zoo.heads import OUTPUT_STRIDE, DRNSeg
from ..zoo.models import DRN, BasicBlock
from .digits import CANVAS, CROP, NUM_CLASSES, SEG_CANVAS, crops, make_canvases, segmentation_canvases, to_input

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "digits_drn.pth"
SEG_WEIGHTS = ASSETS / "digits_seg_drn.pth"  # the segmenter (train_segmentation), float16
SEG_STEPS = 800                    # train_segmentation's default
CHANNELS = (8, 8, 16, 32, 48, 64, 64, 64)
MIXED_STEPS = 250                  # stage 1 of train(): crops + whole canvases; stage 2: crops only


def digits_model() -> DRN:
    """DRN-D-22's levels (1, 1, 2, 2, 2, 2, 1, 1) with 8-64 channels instead of 16-512: a 0.34 M-parameter
    classifier with the same strides and dilations."""
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], num_classes=NUM_CLASSES, channels=CHANNELS, arch="D")


def train_steps(model, steps: int, rng: np.random.Generator, batch: int = 24, lr: float = 3e-3,
                log_every: int = 0, full: int = 6) -> list[float]:
    """`steps` Adam steps of image-level cross-entropy; returns the losses. Each step: `batch` fresh crops
    (digit / no digit, see crops) and `full` whole canvases (one digit among much clutter: the mean of the cell
    logits must still name it, so the digit's cells learn to speak loudly). Labels only, never a box."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        images, labels = crops(batch, rng, "train")
        loss = F.cross_entropy(model(to_input(images)), torch.from_numpy(labels), reduction="sum")
        if full:
            images, labels, _ = make_canvases(full, rng, "train")
            loss = loss + F.cross_entropy(model(to_input(images)), torch.from_numpy(labels), reduction="sum")
        loss = loss / (batch + full)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = np.mean(losses[-log_every:])
            print(f"  step {step + 1}/{steps}  loss {recent:.3f}  {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    return losses


def train(steps: int = 2250, seed: int = 0, path: Path | None = None) -> Path:
    path = path or WEIGHTS
    torch.manual_seed(seed)
    model = digits_model()
    print(f"training a narrow DRN-D-22 ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) "
          f"for image-level classification: {min(steps, MIXED_STEPS)} steps of 24 crops {CROP}x{CROP} + 6 "
          f"canvases {CANVAS}x{CANVAS}, then {max(0, steps - MIXED_STEPS)} steps of 32 crops")
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_steps(model, min(steps, MIXED_STEPS), rng, log_every=25)
    if steps > MIXED_STEPS:  # the crops alone sharpen the cells: a digit just out of view means "no digit"
        train_steps(model, steps - MIXED_STEPS, rng, batch=32, full=0, log_every=250)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    print(f"trained in {time.perf_counter() - t:.0f} s; wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


def segmentation_model() -> DRNSeg:
    """DRNSeg (1×1 classifier per stride-8 cell, fixed ×8 bilinear up-sampling) on the digits classifier's
    narrow DRN-D-22: 11 classes, the ten digits and background."""
    return DRNSeg(digits_model(), NUM_CLASSES)


def train_segmentation(steps: int = SEG_STEPS, seed: int = 0, path: Path | None = None, batch: int = 12,
                       lr: float = 2e-3) -> Path:
    """Per-pixel cross-entropy on segmentation_canvases, starting from the digits classifier's weights (its
    backbone already tells digits from clutter; the 1×1 classifier starts fresh). Writes SEG_WEIGHTS."""
    import warnings

    from ..zoo.checkpoint import load_checkpoint

    path = path or SEG_WEIGHTS
    torch.manual_seed(seed)
    model = segmentation_model()
    if WEIGHTS.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "classification checkpoint into a segmentation model": intended
            load_checkpoint(model, WEIGHTS)
    print(f"training the digits segmenter ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"from {WEIGHTS.name if WEIGHTS.is_file() else 'scratch'}): {steps} steps of {batch} canvases "
          f"{SEG_CANVAS}x{SEG_CANVAS}, per-pixel labels", flush=True)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        images, maps = segmentation_canvases(batch, rng, "train")
        # F.interpolate's bilinear ×8 in place of the model's fixed up-sampler (the same weights away from the
        # border; its grouped transposed convolution has a slow backward on CPU)
        low = model.seg(model.features(to_input(images)))
        up = F.interpolate(low, scale_factor=OUTPUT_STRIDE, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(up, torch.from_numpy(maps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"  step {step + 1}/{steps}  loss {np.mean(losses[-50:]):.3f}  {time.perf_counter() - t0:.0f} s",
                  flush=True)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    print(f"trained in {time.perf_counter() - t0:.0f} s; wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path
