"""`make demo` = `python -m drn.demo`: the paper's localization claim on real data, and the fused models at work.

Part 1 (the claim, paper §3 and §5.2): a narrow DRN-D-22 is trained for image-level classification only, on
canvases built from scikit-learn's bundled handwritten digits (one scaled digit at a random place on 96×96 clutter
of noise and stroke fragments of other digits, spread evenly). Training sees 48×48 crops of such canvases, labelled
with the digit when they hold its whole ink and "no digit" when they miss it (often just beside it), plus a few
whole canvases labelled with their digit. It never sees a box. Then the classification network localizes digits
on unseen 64×64 canvases (digits it was not trained on, fresh placements): the 1×1 classifier applied to every
stride-8 cell, the dominant class per cell, and the smallest box around the cells of the predicted class
(drn_kernels.localize, through the fused model) with the probability threshold picked on
validation canvases (digits of neither training nor test). Reported: classification accuracy, localization
accuracy (class right and IoU > 0.5 with the known box, the paper's criterion) and a PNG grid.

Part 2 (a segmentation to judge): the same narrow DRN-D-22 as a DRNSeg (1×1 classifier per cell, ×8 bilinear
up-sampling), fine-tuned from the classifier with per-pixel labels (the digit on its ink, background elsewhere) on
64×64 canvases of 1-2 digits; run through the fused predict on unseen canvases: mIoU, fused-vs-unfused agreement,
the label map as a palette PNG next to its input, and a sheet (input | truth | prediction) with a legend.

Part 3 (the foundation): drn_c_26 (classify) and drn_d_22 (segment, 19 classes) built with random weights, run
on a photograph: output shapes, first-call and warm times, fused-vs-unfused parity (no picture: random weights).

    python -m drn.demo                 # all parts; trains first if a committed weights file is missing
    python -m drn.demo train           # train the digits classifier, write drn/demo/assets/digits_drn.pth
    python -m drn.demo train-segment   # train the segmenter, write drn/demo/assets/digits_seg_drn.pth
    python -m drn.demo localize|segment|models   # one part
"""
from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from drn_kernels.reference import cell_boxes

from ..apps import data
from ..apps.palette import draw_box, label_image
from ..zoo.heads import OUTPUT_STRIDE, DRNSeg, as_localizer
from ..zoo.models import DRN, BasicBlock

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "digits_drn.pth"
SEG_WEIGHTS = ASSETS / "digits_seg_drn.pth"  # the segmenter (train_segmentation), float16
OUT = Path("out/demo")

CANVAS = 96                        # side of the canvases the training crops are cut from
TEST_CANVAS = 64                   # test canvas side: 8×8 cells at output stride 8
SEG_CANVAS = 64                    # segmentation canvases (training and test)
SEG_STEPS = 800                    # train_segmentation's default
TRUE_BOX, PRED_BOX = (40, 200, 40), (230, 40, 40)  # box colours of the localization grid
CROP = 48                          # training crops of 96-px canvases: 6×6 cells, a digit fills most of one
DIGIT_SIZES = (24, 40)             # digit side in pixels, inclusive range
CHANNELS = (8, 8, 16, 32, 48, 64, 64, 64)
NUM_CLASSES = 11                   # the ten digits and "no digit" (clutter only)
BACKGROUND = NUM_CLASSES - 1
SPLITS = {"train": (0, 1000), "val": (1000, 1200), "test": (1200, 1797)}  # load_digits() image ranges
THRESHOLDS = (0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999)  # candidates, one picked on "val"
MIXED_STEPS = 250                  # stage 1 of train(): crops + whole canvases; stage 2: crops only
INK = 0.3                          # a digit's pixels brighter than this are its ink (its box, its pixel label)


# ------------------------------------------------------------------------------------------ the canvases

@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32)


def make_canvases(n: int, rng: np.random.Generator, split: str = "train", canvas: int = CANVAS,
                  background: float = 0.0):
    """n canvases: (images (n, canvas, canvas) float32 in [0, 1], labels (n,), boxes (n, 4) float32).

    Each holds one digit of the split ("train", "val", "test": disjoint ranges of load_digits()) scaled to
    DIGIT_SIZES, at a random place, drawn over clutter: Gaussian noise and dimmer fragments (3×3 to 4×4 pieces of
    other digits, scaled ×3-×5; Poisson(2) of them per 64×64 area, at least one, so the clutter's density does not
    depend on the canvas size and tells nothing about where the digit is). The box is the tight box of the digit's
    ink (pixels > INK), x2/y2 exclusive. A `background` fraction of the canvases hold clutter only: label
    BACKGROUND, box -1s.
    """
    lo, hi = SPLITS[split]
    out = np.zeros((n, canvas, canvas), dtype=np.float32)
    ys = np.zeros(n, dtype=np.int64)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        _clutter(out[i], rng, lo, hi)
        if rng.random() < background:
            ys[i], boxes[i] = BACKGROUND, -1.0
            continue
        ys[i], digit, py, px = _place_digit(out[i], rng, lo, hi)
        ink_y, ink_x = np.nonzero(digit > INK)
        boxes[i] = (px + ink_x.min(), py + ink_y.min(), px + ink_x.max() + 1, py + ink_y.max() + 1)
    return np.clip(out, 0.0, 1.0), ys, boxes


def _clutter(img: np.ndarray, rng: np.random.Generator, lo: int, hi: int) -> None:
    """Draw make_canvases' clutter (noise, fragments of digits lo..hi-1) into the square float32 `img`."""
    images, _ = _digits()
    canvas = img.shape[0]
    img += np.abs(rng.normal(0.0, 0.08, img.shape)).astype(np.float32)
    for _ in range(max(1, rng.poisson(2.0 * (canvas / 64) ** 2))):  # same density at every size
        src = images[rng.integers(lo, hi)]
        fh, fw = rng.integers(3, 5, size=2)
        y0, x0 = rng.integers(0, 8 - fh + 1), rng.integers(0, 8 - fw + 1)
        s = rng.integers(3, 6)
        frag = _resize(src[y0:y0 + fh, x0:x0 + fw], fh * s, fw * s) * rng.uniform(0.3, 0.6)
        py, px = rng.integers(0, canvas - frag.shape[0] + 1), rng.integers(0, canvas - frag.shape[1] + 1)
        view = img[py:py + frag.shape[0], px:px + frag.shape[1]]
        np.maximum(view, frag, out=view)


def _place_digit(img: np.ndarray, rng: np.random.Generator, lo: int, hi: int, avoid=()):
    """Draw one digit of lo..hi-1, scaled to DIGIT_SIZES, at a random place of `img` whose square misses the
    (x1, y1, x2, y2) squares in `avoid` (up to 50 tries, then None). Returns (label, digit (size, size), y, x)."""
    images, labels = _digits()
    canvas = img.shape[0]
    k = rng.integers(lo, hi)
    size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    digit = _resize(images[k], size, size) * rng.uniform(0.8, 1.0)
    for _ in range(50):
        py, px = rng.integers(0, canvas - size + 1, size=2)
        if not any(px < x2 and x1 < px + size and py < y2 and y1 < py + size for x1, y1, x2, y2 in avoid):
            break
    else:
        return None
    view = img[py:py + size, px:px + size]
    np.maximum(view, digit, out=view)
    return labels[k], digit, py, px


def to_input(canvases: np.ndarray) -> torch.Tensor:
    """(n, 3, H, W) float32: grey canvases as RGB, normalised with ImageNet's mean/std like every DRN input."""
    x = torch.from_numpy(canvases)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(data.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# ------------------------------------------------------------------------------------------------ model

def digits_model() -> DRN:
    """DRN-D-22's levels (1, 1, 2, 2, 2, 2, 1, 1) with 8-64 channels instead of 16-512: a 0.34 M-parameter
    classifier with the same strides and dilations."""
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], num_classes=NUM_CLASSES, channels=CHANNELS, arch="D")


def crops(n: int, rng: np.random.Generator, split: str = "train", crop: int = CROP, canvas: int = CANVAS):
    """n training crops (images (n, crop, crop), labels (n,)) cut from canvases of side `canvas`.

    Half hold the digit's whole ink box (label: the digit); half miss it by >= 2 px (label BACKGROUND), cut
    beside the digit where there is room, else from a clutter-only canvas. The crops right next to a digit are
    what make the cells local: the same clutter, a digit just out of view, and the answer is "no digit".
    """
    canvases, labels, boxes = make_canvases(n, rng, split, canvas=canvas)
    out = np.empty((n, crop, crop), dtype=np.float32)
    ys = labels.copy()
    for i in range(n):
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        if rng.random() < 0.5:
            cx = rng.integers(max(0, x2 - crop), min(x1, canvas - crop) + 1)
            cy = rng.integers(max(0, y2 - crop), min(y1, canvas - crop) + 1)
        else:
            ys[i] = BACKGROUND
            room = []  # crop origins (cx, cy) whose window misses [x1 - 2, x2 + 2) or [y1 - 2, y2 + 2)
            free = lambda a1, a2: [(0, a1 - 2 - crop)] * (a1 - 2 - crop >= 0) + \
                [(a2 + 2, canvas - crop)] * (a2 + 2 <= canvas - crop)  # noqa: E731
            for lo, hi in free(x1, x2):
                room.append((rng.integers(lo, hi + 1), rng.integers(0, canvas - crop + 1)))
            for lo, hi in free(y1, y2):
                room.append((rng.integers(0, canvas - crop + 1), rng.integers(lo, hi + 1)))
            if not room:
                out[i] = make_canvases(1, rng, split, canvas=crop, background=1.0)[0][0]
                continue
            cx, cy = room[rng.integers(len(room))]
        out[i] = canvases[i, cy:cy + crop, cx:cx + crop]
    return out, ys


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


# --------------------------------------------------------------------------------------------- part 1

def localizer(path: Path | None = None):
    """(unfused localization model, fused one, note)."""
    model = digits_model()
    model.load_state_dict(torch.load(path or WEIGHTS, map_location="cpu", weights_only=True))
    as_localizer(model.eval())
    import drn

    return model, drn.fuse(model), "fused model (drn.fuse: BN folded, drn_kernels.localize head)"


def boxes_at(out, threshold: float) -> np.ndarray:
    """The §5.2 boxes of a Localization for another threshold (drn_kernels.reference.cell_boxes), as numpy."""
    top1 = out.logits.argmax(1)
    mask = out.labels.eq(top1.view(-1, 1, 1)) & (out.scores > threshold)
    return cell_boxes(mask, OUTPUT_STRIDE).numpy()  # CANVAS is a multiple of the stride: no clipping needed


def loc_accuracy(pred, labels, boxes, truth) -> tuple[float, np.ndarray]:
    ious = np.array([data.box_iou(b, g) for b, g in zip(boxes, truth)])
    return float(((pred == labels) & (ious > 0.5)).mean()), ious


def pick_threshold(run, n: int = 200, seed: int = 4321) -> tuple[float, float]:
    """(threshold, its localization accuracy) best of THRESHOLDS on n validation canvases (digits of the "val"
    split: neither trained on nor tested)."""
    canvases, labels, truth = make_canvases(n, np.random.default_rng(seed), "val", canvas=TEST_CANVAS)
    with torch.no_grad():
        out = run(to_input(canvases), threshold=THRESHOLDS[0])
    pred = out.logits.argmax(1).numpy()
    accs = [loc_accuracy(pred, labels, boxes_at(out, th), truth)[0] for th in THRESHOLDS]
    best = int(np.argmax(accs))  # first (lowest) threshold on ties
    return THRESHOLDS[best], accs[best]


def demo_localize(n: int = 500, seed: int = 1234, val: int = 200) -> dict:
    print("\n== Part 1: a classifier that localizes (paper §3, §5.2) ==")
    if not WEIGHTS.is_file():
        print(f"{WEIGHTS} missing: training it first")
        train()
    model, fused, note = localizer()
    print(note)
    run = fused
    threshold, val_acc = pick_threshold(run, val)
    print(f"threshold {threshold}: the best of {THRESHOLDS} on {val} validation canvases (digits of neither "
          f"training nor test), localization accuracy there {100 * val_acc:.1f}%")
    canvases, labels, truth = make_canvases(n, np.random.default_rng(seed), "test", canvas=TEST_CANVAS)
    x = to_input(canvases)
    with torch.no_grad():
        t = time.perf_counter()
        out = run(x, threshold=threshold)
        elapsed = time.perf_counter() - t
        pred = out.logits.argmax(1).numpy()
        ref = model(x, threshold=threshold)
        exact = copy.deepcopy(model).double()(x.double(), threshold=threshold).logits  # float64: the yardstick
        same_boxes = float((ref.boxes == out.boxes).all(1).float().mean())
        diff = float((ref.logits - out.logits).abs().max())
        fused_err = float((out.logits.double() - exact).abs().max())
        unfused_err = float((ref.logits.double() - exact).abs().max())
        print(f"fused vs unfused: logits max |diff| {diff:.2e} (|logit| up to {float(exact.abs().max()):.0f}), "
              f"within the two float32 errors vs float64 ({fused_err:.2e} fused + {unfused_err:.2e} unfused); "
              f"identical boxes on {100 * same_boxes:.1f}% of canvases")
    boxes = out.boxes.numpy()
    loc_acc, ious = loc_accuracy(pred, labels, boxes, truth)
    cls_acc = float((pred == labels).mean())
    box_acc = float((ious > 0.5).mean())
    cells = float((out.labels == out.logits.argmax(1).view(-1, 1, 1)).float().mean())
    print(f"{n} unseen canvases ({TEST_CANVAS}x{TEST_CANVAS}, digits {DIGIT_SIZES[0]}-{DIGIT_SIZES[1]} px, digits never "
          f"seen in training), threshold {threshold}, {1000 * elapsed / n:.2f} ms per canvas")
    print(f"  classification accuracy                         {100 * cls_acc:5.1f}%")
    print(f"  localization accuracy (class right, IoU > 0.5)  {100 * loc_acc:5.1f}%   (paper's criterion)")
    print(f"  box IoU > 0.5 whatever the class                {100 * box_acc:5.1f}%   mean IoU {ious.mean():.3f}")
    print(f"  cells voting for the top-1 class                {100 * cells:5.1f}%")
    OUT.mkdir(parents=True, exist_ok=True)
    grid = OUT / "localize_grid.png"
    localize_grid(canvases[:24], labels[:24], truth[:24], pred[:24], boxes[:24]).save(grid)
    print(f"  boxes drawn (green: truth, red: predicted) -> {grid}")
    return {"classification_accuracy": cls_acc, "localization_accuracy": loc_acc, "box_accuracy": box_acc,
            "mean_iou": float(ious.mean()), "canvases": n, "threshold": threshold, "cells_top1": cells}


def localize_grid(canvases, labels, truth, pred, boxes, cols: int = 6, zoom: int = 4) -> Image.Image:
    """Tiles of canvases with the true box (green) and the predicted one (red), a caption under each (the
    predicted digit, right or wrong), and a legend."""
    from PIL import ImageDraw

    font = _font(15)
    caption = 22
    tiles = []
    for c, y, g, p, b in zip(canvases, labels, truth, pred, boxes):
        img = Image.fromarray((c * 255).astype(np.uint8)).convert("RGB")
        img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
        img = draw_box(img, g * zoom, color=TRUE_BOX, width=3)
        img = draw_box(img, b * zoom, color=PRED_BOX, width=3)
        ok = p == y and data.box_iou(b, g) > 0.5
        tile = Image.new("RGB", (img.width, img.height + caption), (255, 255, 255))
        tile.paste(img, (0, 0))
        text = f"predicted {p}" + ("  ok" if ok else f"  wrong (true {y})" if p != y else "  wrong box")
        ImageDraw.Draw(tile).text((3, img.height + caption / 2), text, fill=(0, 0, 0) if ok else PRED_BOX,
                                  font=font, anchor="lm")
        tiles.append(tile)
    w, h = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + 4) + 4, rows * (h + 4) + 4), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, (4 + (i % cols) * (w + 4), 4 + (i // cols) * (h + 4)))
    strip = legend(["true box (the digit's ink)", "box from the classifier's cells", "ok: class right, IoU > 0.5"],
                   [TRUE_BOX, PRED_BOX, (255, 255, 255)], sheet.width)
    return with_legend(sheet, strip, "unseen 64x64 canvases: localization by an image-level classifier")


# --------------------------------------------------------------------------------------- segmentation

def segmentation_canvases(n: int, rng: np.random.Generator, split: str = "train", canvas: int = SEG_CANVAS,
                          digits: int = 2):
    """n canvases with 1..`digits` digits of the split on make_canvases' clutter, labelled per pixel:
    (images (n, canvas, canvas) float32, label maps (n, canvas, canvas) int64: the digit on its ink (> INK),
    BACKGROUND elsewhere, clutter included). The digits' squares do not overlap."""
    lo, hi = SPLITS[split]
    out = np.zeros((n, canvas, canvas), dtype=np.float32)
    maps = np.full((n, canvas, canvas), BACKGROUND, dtype=np.int64)
    for i in range(n):
        _clutter(out[i], rng, lo, hi)
        placed = []
        for _ in range(int(rng.integers(1, digits + 1))):
            got = _place_digit(out[i], rng, lo, hi, avoid=placed)
            if got is None:
                break
            label, digit, py, px = got
            size = digit.shape[0]
            maps[i, py:py + size, px:px + size][digit > INK] = label
            placed.append((px, py, px + size, py + size))
    return np.clip(out, 0.0, 1.0), maps


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


def confusion(pred: np.ndarray, truth: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
    """(k, k) pixel counts, rows = truth, columns = prediction."""
    return np.bincount(truth.reshape(-1) * k + pred.reshape(-1), minlength=k * k).reshape(k, k)


def mean_iou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean over the classes present in truth or prediction, per-class IoU) of a confusion matrix."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), iou


SEG_COLORS = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                       (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 255, 255),
                       (0, 0, 0)], dtype=np.uint8)  # digits 0-9, then background black
SEG_NAMES = tuple(str(d) for d in range(10)) + ("background",)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the small bitmap font
        return ImageFont.load_default()


def legend(names, colors, width: int, swatch: int = 18, font_size: int = 16) -> Image.Image:
    """A white strip, as wide as `width`, of colour swatches (outlined) each followed by its name; wraps."""
    from PIL import ImageDraw

    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = [(name, tuple(int(c) for c in color), probe.textlength(name, font=font)) for name, color in
             zip(names, colors)]
    rows, row, x = [], [], 6
    for item in items:
        w = swatch + 6 + item[2] + 16
        if row and x + w > width:
            rows.append(row)
            row, x = [], 6
        row.append(item)
        x += w
    rows.append(row)
    strip = Image.new("RGB", (width, 8 + len(rows) * (swatch + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = 6, 6 + r * (swatch + 8)
        for name, color, tw in row:
            draw.rectangle([x, y, x + swatch, y + swatch], fill=color, outline=(90, 90, 90))
            draw.text((x + swatch + 6, y + swatch / 2), name, fill=(0, 0, 0), font=font, anchor="lm")
            x += swatch + 6 + int(tw) + 16
    return strip


def with_legend(sheet: Image.Image, strip: Image.Image, title: str | None = None) -> Image.Image:
    """`sheet` with an optional title line above and the legend strip below."""
    from PIL import ImageDraw

    top = 28 if title else 0
    out = Image.new("RGB", (sheet.width, top + sheet.height + strip.height), (255, 255, 255))
    if title:
        ImageDraw.Draw(out).text((6, 5), title, fill=(0, 0, 0), font=_font(16))
    out.paste(sheet, (0, top))
    out.paste(strip, (0, top + sheet.height))
    return out


def segmentation_sheet(canvases, truth, pred, zoom: int = 3) -> Image.Image:
    """Rows of (input, true label map, predicted label map), zoomed, with the legend below."""
    def tile(a, colors=None):
        img = Image.fromarray(colors[a] if colors is not None else (a * 255).astype(np.uint8)).convert("RGB")
        return img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)

    tiles = [[tile(c), tile(t, SEG_COLORS), tile(p, SEG_COLORS)] for c, t, p in zip(canvases, truth, pred)]
    w, h = tiles[0][0].size
    sheet = Image.new("RGB", (3 * (w + 4) + 4, len(tiles) * (h + 4) + 4), (255, 255, 255))
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            sheet.paste(t, (4 + c * (w + 4), 4 + r * (h + 4)))
    return with_legend(sheet, legend(SEG_NAMES, SEG_COLORS, sheet.width),
                       "input | true labels | fused predict")


def demo_segment(n: int = 200, seed: int = 2024) -> dict:
    """The trained digits segmenter through the fused predict on unseen canvases: mIoU, fused-vs-unfused
    agreement, and the palette PNG next to its input."""
    import drn

    print("\n== Part 2: a segmentation you can judge (digits on clutter, labelled per pixel) ==")
    if not SEG_WEIGHTS.is_file():
        print(f"{SEG_WEIGHTS} missing: training it first")
        train_segmentation()
    model = segmentation_model()
    state = torch.load(SEG_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    fused = drn.fuse(model)
    canvases, truth = segmentation_canvases(n, np.random.default_rng(seed), "test")
    x = to_input(canvases)
    (labels, _), ms, first = _timed(lambda: model.predict(x), repeat=1)
    result = {"canvases": n, "unfused_ms": ms, "unfused_first_ms": first}
    miou, iou = mean_iou(confusion(labels.numpy(), truth))
    result["miou_unfused"] = miou
    shown = labels
    (flabels, _), fms, ffirst = _timed(lambda: fused.predict(x), repeat=1)
    agree = float((flabels == labels).float().mean())
    fmiou, iou = mean_iou(confusion(flabels.numpy(), truth))
    result.update(fused_ms=fms, fused_first_ms=ffirst, miou_fused=fmiou, fused_unfused_agreement=agree)
    shown = flabels
    print(f"{n} unseen canvases ({SEG_CANVAS}x{SEG_CANVAS}, 1-2 digits of the test split on clutter), "
          f"{NUM_CLASSES} classes (10 digits + background)")
    print(f"  mIoU fused predict {100 * result['miou_fused']:.1f}%   unfused {100 * miou:.1f}%   "
          f"fused and unfused labels agree on {100 * result['fused_unfused_agreement']:.3f}% of pixels")
    print(f"  predict on the batch of {n}: fused {fms:.0f} ms warm ({ffirst:.0f} ms first call), unfused "
          f"{ms:.0f} ms warm ({first:.0f} ms first call)")
    print("  IoU per class: " + ", ".join(f"{name} {100 * v:.0f}%" for name, v in zip(SEG_NAMES, iou)))
    OUT.mkdir(parents=True, exist_ok=True)
    k = 6
    inputs = np.concatenate(list(canvases[:k]), axis=1)  # k canvases side by side
    Image.fromarray((inputs * 255).astype(np.uint8)).save(OUT / "segment_input.png")
    palette_png = label_image(np.concatenate(list(shown[:k].numpy()), axis=1), NUM_CLASSES)
    palette_png.putpalette(np.vstack([SEG_COLORS, np.zeros((256 - NUM_CLASSES, 3), np.uint8)]).reshape(-1).tolist())
    palette_png.save(OUT / "segment.png")
    segmentation_sheet(canvases[:k], truth[:k], shown[:k].numpy()).save(OUT / "segment_sheet.png")
    print(f"  label map (palette PNG, pixel value = class, 10 = background) -> {OUT / 'segment.png'}, its input "
          f"{OUT / 'segment_input.png'}; side by side with the truth and a legend -> {OUT / 'segment_sheet.png'}")
    return result


# --------------------------------------------------------------------------------------------- part 2

def sample_image() -> Image.Image:
    """A photograph: scikit-learn's bundled china.jpg (427×640), else a generated gradient scene."""
    try:
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image("china.jpg"))
    except Exception:  # pragma: no cover - sklearn missing
        yy, xx = np.mgrid[0:256, 0:384]
        rgb = np.stack([xx % 256, yy, (xx + yy) % 256], axis=-1).astype(np.uint8)
        return Image.fromarray(rgb)


def _timed(fn, repeat: int = 2):
    """(output, warm ms = mean of `repeat` calls after the first, first-call ms: one-off set-up included)."""
    with torch.no_grad():
        t = time.perf_counter()
        out = fn()
        first = 1000 * (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(repeat):
            out = fn()
    return out, 1000 * (time.perf_counter() - t) / repeat, first


def demo_models(seg_size=(256, 384)) -> dict:
    """drn_c_26 and drn_d_22 at full width with random weights: shapes, first-call and warm times, fused-vs-unfused
    parity (nothing here is a prediction worth looking at: part 2 is the segmentation to judge)."""
    import drn

    print("\n== Part 3: full-size models, unfused and fused (random weights: shapes, times, parity) ==")
    torch.manual_seed(0)
    img = sample_image()
    result = {}
    x = data.classify_inputs(img)  # the paper's 1-crop: centre 224 of the 256-resized image
    model = drn.build("drn_c_26")
    logits, ms, first = _timed(lambda: model(x))
    print(f"drn_c_26 classify: input {tuple(x.shape)} -> logits {tuple(logits.shape)}  unfused {ms:.0f} ms warm "
          f"({first:.0f} ms first call)")
    result.update(classify_ms=ms, classify_first_ms=first)
    fused = drn.fuse(model)
    flogits, fms, ffirst = _timed(lambda: fused(x))
    diff = float((flogits - logits).abs().max() / logits.abs().max())
    print(f"  fused {fms:.0f} ms warm ({ffirst:.0f} ms first call); max |diff| / max |logit| {diff:.2e}; same "
          f"top-1: {bool(flogits.argmax() == logits.argmax())}")
    result.update(classify_fused_ms=fms, classify_fused_first_ms=ffirst, classify_rel_diff=diff)

    seg_img = img.resize((seg_size[1], seg_size[0]), Image.BILINEAR)
    xs = data.to_tensor(seg_img)[None]
    seg = drn.build("drn_d_22", task="segment", num_classes=19)
    (labels, probs), ms, first = _timed(lambda: seg.predict(xs))
    print(f"drn_d_22 segment (19 classes): input {tuple(xs.shape)} -> labels {tuple(labels.shape)}  unfused "
          f"predict {ms:.0f} ms warm ({first:.0f} ms first call)")
    result.update(segment_ms=ms, segment_first_ms=first)
    fseg = drn.fuse(seg)
    (flabels, fprobs), fms, ffirst = _timed(lambda: fseg.predict(xs))
    agree = float((flabels == labels).float().mean())
    print(f"  fused predict {fms:.0f} ms warm ({ffirst:.0f} ms first call; one class_head op, no 19xHxW map); "
          f"labels agree on {100 * agree:.3f}% of pixels; max |prob diff| {float((fprobs - probs).abs().max()):.2e}")
    result.update(segment_fused_ms=fms, segment_fused_first_ms=ffirst, segment_label_agreement=agree)
    return result


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m drn.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all",
                   choices=["all", "train", "train-segment", "localize", "segment", "models"])
    p.add_argument("--steps", type=int, default=None, help="training steps (train: 2250, train-segment: 800)")
    p.add_argument("--canvases", type=int, default=500, help="test canvases (localize)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    t = time.perf_counter()
    if args.what == "train":
        train(args.steps or 2250)
    if args.what == "train-segment":
        torch.set_num_threads(1)  # small tensors: one thread trains fastest, and is fastest on a shared machine
        train_segmentation(args.steps or SEG_STEPS)
    if args.what in ("all", "localize"):
        demo_localize(args.canvases)
    if args.what in ("all", "segment"):
        demo_segment()
    if args.what in ("all", "models"):
        demo_models()
    print(f"\ndemo finished in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
