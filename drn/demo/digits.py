"""The demo's data: scikit-learn's bundled handwritten digits, scaled, on clutter of noise and stroke fragments of
other digits: canvases with one digit and its box (make_canvases), the training crops that hold a digit or miss it
(crops), canvases of 1-2 digits labelled per pixel (segmentation_canvases), and the model input (to_input). The
digits are split by image (SPLITS): training, validation (the threshold) and test see different ones."""
from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from ..apps import data

CANVAS = 96                        # side of the canvases the training crops are cut from
TEST_CANVAS = 64                   # test canvas side: 8×8 cells at output stride 8
SEG_CANVAS = 64                    # segmentation canvases (training and test)
CROP = 48                          # training crops of 96-px canvases: 6×6 cells, a digit fills most of one
DIGIT_SIZES = (24, 40)             # digit side in pixels, inclusive range
NUM_CLASSES = 11                   # the ten digits and "no digit" (clutter only)
BACKGROUND = NUM_CLASSES - 1
SPLITS = {"train": (0, 1000), "val": (1000, 1200), "test": (1200, 1797)}  # load_digits() image ranges
INK = 0.3                          # a digit's pixels brighter than this are its ink (its box, its pixel label)


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
