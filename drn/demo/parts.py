"""The demo's three parts (drn/demo/__main__.py says what each shows): a classifier that localizes
(demo_localize), a segmentation to judge (demo_segment), full-size models unfused and fused (demo_models). Their
pictures go to OUT."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from drn_kernels.reference import cell_boxes

from ..apps import data
from ..apps.palette import label_image
from ..zoo.heads import OUTPUT_STRIDE, as_localizer
from .digits import DIGIT_SIZES, NUM_CLASSES, SEG_CANVAS, TEST_CANVAS, make_canvases, segmentation_canvases, to_input
from .sheets import SEG_COLORS, SEG_NAMES, localize_grid, segmentation_sheet
from .train import SEG_WEIGHTS, WEIGHTS, digits_model, segmentation_model, train, train_segmentation

OUT = Path("out/demo")
THRESHOLDS = (0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995, 0.9999)  # candidates, one picked on "val"


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


# --------------------------------------------------------------------------------------------- part 2

def confusion(pred: np.ndarray, truth: np.ndarray, k: int = NUM_CLASSES) -> np.ndarray:
    """(k, k) pixel counts, rows = truth, columns = prediction."""
    return np.bincount(truth.reshape(-1) * k + pred.reshape(-1), minlength=k * k).reshape(k, k)


def mean_iou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean over the classes present in truth or prediction, per-class IoU) of a confusion matrix."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), iou


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


# --------------------------------------------------------------------------------------------- part 3

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
