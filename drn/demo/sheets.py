"""The demo's pictures: the localization grid (boxes drawn on the canvases) and the segmentation sheet (input,
truth, prediction), each with its legend."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..apps import data
from ..apps.palette import draw_box

TRUE_BOX, PRED_BOX = (40, 200, 40), (230, 40, 40)  # box colours of the localization grid
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
