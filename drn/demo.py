"""`make demo` = `python -m drn.demo`: the paper's localization claim on real data, and the fused models at work.

Part 1 (the claim, paper §3 and §5.2): a narrow DRN-D-22 is trained for image-level classification only, on
canvases built from scikit-learn's bundled handwritten digits (one scaled digit at a random place on 96×96 clutter
of noise and stroke fragments of other digits, spread evenly). Training sees 48×48 crops of such canvases, labelled
with the digit when they hold its whole ink and "no digit" when they miss it (often just beside it), plus a few
whole canvases labelled with their digit. It never sees a box. Then the classification network localizes digits
on unseen 96×96 canvases (digits it was not trained on, fresh placements): the 1×1 classifier applied to every
stride-8 cell, the dominant class per cell, and the smallest box around the cells of the predicted class
(drn_kernels.localize, through the fused model when drn.fused exists) with the probability threshold picked on
validation canvases (digits of neither training nor test). Reported: classification accuracy, localization
accuracy (class right and IoU > 0.5 with the known box, the paper's criterion) and a PNG grid.

Part 2 (the foundation): drn_c_26 (classify) and drn_d_22 (segment, 19 classes) built with random weights, run
on a photograph, output shapes, timings, fused-vs-unfused parity, and the label map as a Cityscapes-palette PNG.

    python -m drn.demo           # both parts; trains first if drn/assets/digits_drn.pth is missing
    python -m drn.demo train     # train the digits model and write drn/assets/digits_drn.pth
    python -m drn.demo localize  # part 1 only;  python -m drn.demo models  # part 2 only
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import data
from .heads import OUTPUT_STRIDE, as_localizer
from .models import DRN, BasicBlock
from .palette import draw_box, save_label_png

ASSETS = Path(__file__).resolve().parent / "assets"
WEIGHTS = ASSETS / "digits_drn.pth"
OUT = Path("out/demo")

CANVAS = 96                        # side of the canvases the training crops are cut from
TEST_CANVAS = 64                   # test canvas side: 8×8 cells at output stride 8
CROP = 48                          # training crops of 96-px canvases: 6×6 cells, a digit fills most of one
DIGIT_SIZES = (24, 40)             # digit side in pixels, inclusive range
CHANNELS = (8, 8, 16, 32, 48, 64, 64, 64)
NUM_CLASSES = 11                   # the ten digits and "no digit" (clutter only)
BACKGROUND = NUM_CLASSES - 1
SPLITS = {"train": (0, 1000), "val": (1000, 1200), "test": (1200, 1797)}  # load_digits() image ranges
THRESHOLDS = (0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999)  # candidates, one picked on "val"
MIXED_STEPS = 250                  # stage 1 of train(): crops + whole canvases; stage 2: crops only


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
    ink (pixels > 0.3), x2/y2 exclusive. A `background` fraction of the canvases hold clutter only: label
    BACKGROUND, box -1s.
    """
    images, labels = _digits()
    lo, hi = SPLITS[split]
    out = np.zeros((n, canvas, canvas), dtype=np.float32)
    ys = np.zeros(n, dtype=np.int64)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        img = out[i]
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
        if rng.random() < background:
            ys[i], boxes[i] = BACKGROUND, -1.0
            continue
        k = rng.integers(lo, hi)
        size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
        digit = _resize(images[k], size, size) * rng.uniform(0.8, 1.0)
        py, px = rng.integers(0, canvas - size + 1, size=2)
        view = img[py:py + size, px:px + size]
        np.maximum(view, digit, out=view)
        ink_y, ink_x = np.nonzero(digit > 0.3)
        boxes[i] = (px + ink_x.min(), py + ink_y.min(), px + ink_x.max() + 1, py + ink_y.max() + 1)
        ys[i] = labels[k]
    return np.clip(out, 0.0, 1.0), ys, boxes


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
    """(unfused localization model, fused one or None, note)."""
    model = digits_model()
    model.load_state_dict(torch.load(path or WEIGHTS, map_location="cpu", weights_only=True))
    as_localizer(model.eval())
    try:
        import drn

        return model, drn.fuse(model), "fused model (drn.fuse: BN folded, drn_kernels.localize head)"
    except ImportError as e:
        return model, None, f"note: drn.fused is not available ({e}); localizing with the unfused model"


def boxes_at(out, threshold: float) -> np.ndarray:
    """The §5.2 boxes of a Localization for another threshold (the rule of drn_kernels.localize, in numpy)."""
    top1 = out.logits.argmax(1).numpy()
    labels, scores = out.labels.numpy(), out.scores.numpy()
    stride = OUTPUT_STRIDE  # CANVAS is a multiple of it: no clipping needed
    boxes = np.full((len(top1), 4), -1.0, dtype=np.float32)
    for i, k in enumerate(top1):
        ys, xs = np.nonzero((labels[i] == k) & (scores[i] > threshold))
        if ys.size:
            boxes[i] = (xs.min() * stride, ys.min() * stride, (xs.max() + 1) * stride, (ys.max() + 1) * stride)
    return boxes


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
    run = fused if fused is not None else model
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
        if fused is not None:
            ref = model(x, threshold=threshold)
            same_boxes = float((ref.boxes == out.boxes).all(1).float().mean())
            print(f"fused vs unfused: logits max |diff| {float((ref.logits - out.logits).abs().max()):.2e}, "
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


def localize_grid(canvases, labels, truth, pred, boxes, cols: int = 6, zoom: int = 3) -> Image.Image:
    tiles = []
    for c, y, g, p, b in zip(canvases, labels, truth, pred, boxes):
        img = Image.fromarray((c * 255).astype(np.uint8)).convert("RGB")
        img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
        img = draw_box(img, g * zoom, color=(40, 220, 40))
        ok = p == y and data.box_iou(b, g) > 0.5
        tiles.append(draw_box(img, b * zoom, f"{p}" + ("" if ok else " x"), color=(255, 50, 50)))
    w, h = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + 4) + 4, rows * (h + 4) + 4), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, (4 + (i % cols) * (w + 4), 4 + (i // cols) * (h + 4)))
    return sheet


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
    with torch.no_grad():
        out = fn()  # first call pays one-off set-up
        t = time.perf_counter()
        for _ in range(repeat):
            out = fn()
    return out, 1000 * (time.perf_counter() - t) / repeat


def demo_models(seg_size=(256, 384)) -> dict:
    import drn

    print("\n== Part 2: the models, unfused and fused (random weights) ==")
    torch.manual_seed(0)
    img = sample_image()
    result = {}
    x = data.classify_inputs(img)  # the paper's 1-crop: centre 224 of the 256-resized image
    model = drn.build("drn_c_26")
    logits, ms = _timed(lambda: model(x))
    print(f"drn_c_26 classify: input {tuple(x.shape)} -> logits {tuple(logits.shape)}  unfused {ms:.0f} ms")
    result["classify_ms"] = ms
    fused = _fuse(drn, model)
    if fused is not None:
        flogits, fms = _timed(lambda: fused(x))
        diff = float((flogits - logits).abs().max() / logits.abs().max())
        print(f"  fused {fms:.0f} ms; max |diff| / max |logit| {diff:.2e}; same top-1: "
              f"{bool(flogits.argmax() == logits.argmax())}")
        result.update(classify_fused_ms=fms, classify_rel_diff=diff)

    seg_img = img.resize((seg_size[1], seg_size[0]), Image.BILINEAR)
    xs = data.to_tensor(seg_img)[None]
    seg = drn.build("drn_d_22", task="segment", num_classes=19)
    (labels, probs), ms = _timed(lambda: seg.predict(xs))
    log_probs, low = seg(xs)
    print(f"drn_d_22 segment (19 classes): input {tuple(xs.shape)} -> log_probs {tuple(log_probs.shape)}, "
          f"logits_low {tuple(low.shape)}, labels {tuple(labels.shape)}  unfused predict {ms:.0f} ms")
    result["segment_ms"] = ms
    fseg = _fuse(drn, seg)
    if fseg is not None:
        (flabels, fprobs), fms = _timed(lambda: fseg.predict(xs))
        agree = float((flabels == labels).float().mean())
        print(f"  fused predict {fms:.0f} ms (one class_head op, no 19xHxW map); labels agree on "
              f"{100 * agree:.3f}% of pixels; max |prob diff| {float((fprobs - probs).abs().max()):.2e}")
        result.update(segment_fused_ms=fms, segment_label_agreement=agree)
    OUT.mkdir(parents=True, exist_ok=True)
    seg_img.save(OUT / "segment_input.jpg")
    save_label_png(labels[0].numpy(), OUT / "segment.png", 19)
    print(f"  label map (Cityscapes palette) -> {OUT / 'segment.png'} (input {OUT / 'segment_input.jpg'})")
    return result


def _fuse(drn, model):
    try:
        return drn.fuse(model)
    except ImportError as e:
        print(f"  note: no fused path yet (drn.fused: {e}); unfused only")
        return None


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m drn.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=["all", "train", "localize", "models"])
    p.add_argument("--steps", type=int, default=2250, help="training steps (train)")
    p.add_argument("--canvases", type=int, default=500, help="test canvases (localize)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    t = time.perf_counter()
    if args.what == "train":
        train(args.steps)
    if args.what in ("all", "localize"):
        demo_localize(args.canvases)
    if args.what in ("all", "models"):
        demo_models()
    print(f"\ndemo finished in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
