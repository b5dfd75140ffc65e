"""Colours for label maps and boxes: the Cityscapes palette (19 classes, as the reference's segment.py) and a
generic palette for any other number of classes.

Label maps are written as palette ("P" mode) PNGs: the pixel values are the class indices, so the file is both a
label map a program can read back (`np.array(Image.open(path))`) and a coloured picture. Index 255 (the ignore
label of the reference's datasets) is black.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

IGNORE_LABEL = 255

CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)

CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle")


def generic_palette(num_colors: int) -> np.ndarray:
    """(num_colors, 3) uint8: the PASCAL VOC colour map (bits of the index spread over R, G, B), which keeps
    neighbouring indices far apart in colour for any number of classes."""
    out = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out


def palette_for(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: Cityscapes' colours when num_classes == 19, else the generic palette."""
    return CITYSCAPES_PALETTE.copy() if num_classes == 19 else generic_palette(num_classes)


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A PIL image of an (H, W) integer label map: "P" mode with the class palette (index 255 black), or RGB
    when there are more than 255 classes (a palette PNG cannot hold more)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    colors = palette_for(num_classes)
    if num_classes <= IGNORE_LABEL:
        img = Image.fromarray(labels.astype(np.uint8), mode="P")
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[:num_classes] = colors
        img.putpalette(pal.reshape(-1).tolist())
        return img
    return Image.fromarray(colors[np.clip(labels, 0, num_classes - 1)], mode="RGB")


def save_label_png(labels: np.ndarray, path, num_classes: int) -> None:
    label_image(labels, num_classes).save(path, format="PNG")


def draw_box(img: Image.Image, box, text: str | None = None, color=(255, 40, 40), width: int = 2) -> Image.Image:
    """A copy of `img` (RGB) with the box (x1, y1, x2, y2; x2/y2 exclusive) outlined and an optional caption.
    A box of -1s (no cell qualified) draws only the caption."""
    out = img.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    x1, y1, x2, y2 = (float(v) for v in box)
    if x1 >= 0:
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
    if text:
        tx, ty = (max(x1, 0) + 2, max(y1, 0) + 1) if x1 >= 0 else (2, 1)
        bbox = draw.textbbox((tx, ty), text)
        draw.rectangle(bbox, fill=(0, 0, 0))
        draw.text((tx, ty), text, fill=color)
    return out
