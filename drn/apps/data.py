"""Images in and out of the models, and the dataset layouts the evaluation reads.

- Images are read with Pillow as RGB, scaled to [0, 1] and normalised per channel (ImageNet's mean/std for the
  classifiers, a segmentation dataset's info.json mean/std), as the reference's transforms do.
- The classification crops follow the paper's protocols: 1-crop = the centre 224×224 of the image resized so its
  shorter side is 256 (torchvision's Resize/CenterCrop arithmetic); 10-crop = the four corners and the centre,
  and their horizontal mirrors.
- Dataset layouts: the reference's segmentation lists (DIR/val_images.txt, DIR/val_labels.txt, DIR/info.json),
  an ImageFolder tree for classification (DIR/<class>/<image>, classes sorted), and ground-truth boxes for
  localization (PASCAL VOC / ImageNet XML files, or a CSV image,class,x1,y1,x2,y2).
Boxes are (x1, y1, x2, y2) in pixels with x2, y2 exclusive (a box of one pixel at 0,0 is (0, 0, 1, 1)), the
convention of drn.Localization.boxes.
"""
from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from .palette import IGNORE_LABEL

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


# ----------------------------------------------------------------------------------------------- images

def load_image(path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image (PIL cannot read it)") from None


def to_tensor(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(3, H, W) float32: RGB scaled to [0, 1], then (x - mean) / std per channel."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std).contiguous()


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, aspect kept (torchvision Resize(int) arithmetic), bilinear."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        return img.resize((size, int(size * h / w)), Image.BILINEAR)
    return img.resize((int(size * w / h), size), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if size > w or size > h:
        raise ValueError(f"crop {size} is larger than the image ({w}x{h})")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def ten_crops(img: Image.Image, size: int) -> list[Image.Image]:
    """Four corners, centre, and the mirror of each (torchvision TenCrop order)."""
    w, h = img.size
    if size > w or size > h:
        raise ValueError(f"crop {size} is larger than the image ({w}x{h})")
    crops = [img.crop((0, 0, size, size)), img.crop((w - size, 0, w, size)), img.crop((0, h - size, size, h)),
             img.crop((w - size, h - size, w, h)), center_crop(img, size)]
    return crops + [c.transpose(Image.FLIP_LEFT_RIGHT) for c in crops]


def classify_inputs(img: Image.Image, resize: int = 256, crop: int = 224, ten_crop: bool = False,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(1 or 10, 3, crop, crop): the paper's 1-crop or 10-crop input. resize=0 keeps the size, crop=0 no crop."""
    if resize:
        img = resize_shorter(img, resize)
    if ten_crop:
        crops = ten_crops(img, crop) if crop else [img, img.transpose(Image.FLIP_LEFT_RIGHT)]
    else:
        crops = [center_crop(img, crop) if crop else img]
    return torch.stack([to_tensor(c, mean, std) for c in crops])


def read_info(path) -> tuple[tuple, tuple]:
    """(mean, std) from a reference-style info.json ({"mean": [r, g, b], "std": [r, g, b]})."""
    with open(path) as f:
        info = json.load(f)
    try:
        mean, std = tuple(float(v) for v in info["mean"]), tuple(float(v) for v in info["std"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: info.json needs 'mean' and 'std' lists of 3 numbers ({e})") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{path}: mean and std must hold 3 numbers each, std > 0; got {mean}, {std}")
    return mean, std


# ------------------------------------------------------------------------------------------ segmentation

@dataclass(frozen=True)
class SegmentationSet:
    root: Path
    images: list            # paths
    labels: list            # paths, same length
    mean: tuple
    std: tuple


def _read_list(path: Path) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def segmentation_set(root, phase: str = "val") -> SegmentationSet:
    """The reference's layout: root/<phase>_images.txt and <phase>_labels.txt (paths relative to root, one a
    line) and root/info.json (mean, std; ImageNet's when absent)."""
    root = Path(root)
    images_txt, labels_txt = root / f"{phase}_images.txt", root / f"{phase}_labels.txt"
    for p in (images_txt, labels_txt):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: the segmentation layout is DIR/{phase}_images.txt, "
                                    f"DIR/{phase}_labels.txt and DIR/info.json")
    images, labels = _read_list(images_txt), _read_list(labels_txt)
    if len(images) != len(labels):
        raise ValueError(f"{images_txt} lists {len(images)} images but {labels_txt} lists {len(labels)} labels")
    mean, std = read_info(root / "info.json") if (root / "info.json").is_file() else (IMAGENET_MEAN, IMAGENET_STD)
    return SegmentationSet(root, [root / p for p in images], [root / p for p in labels], mean, std)


# Cityscapes label ids (gtFine *_labelIds.png, 0..33; -1 = license plate) -> the 19 train ids, 255 = ignore:
# the table of the Cityscapes scripts' labels.py, which the reference's datasets/cityscapes/prepare_data.py applies.
CITYSCAPES_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                       26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LABEL_FORMATS = ("auto", "train-ids", "cityscapes-ids")


def cityscapes_to_train_ids(ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> train ids (0..18), every other id (void classes, -1, anything >= 34) -> 255."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_ID.items():
        lut[label_id] = train_id
    ids = np.asarray(ids).astype(np.int64)
    return np.where((ids >= 0) & (ids < 256), lut[np.clip(ids, 0, 255)], IGNORE_LABEL)


def label_format_of(path, label_format: str = "auto") -> str:
    """auto: a file named *_labelIds.png holds Cityscapes label ids, any other train ids."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label format must be one of {LABEL_FORMATS}, got {label_format!r}")
    if label_format == "auto":
        return "cityscapes-ids" if Path(path).stem.endswith("labelIds") else "train-ids"
    return label_format


def read_label(path, num_classes: int, size=None, *, label_format: str = "train-ids",
               resize_to=None) -> np.ndarray:
    """(H, W) int64 label map of a PNG (palette or greyscale). 255 = ignore; any other value >= num_classes is an
    error naming the file. size (W, H), when given, must match. label_format: train-ids (the values are the
    classes), cityscapes-ids (mapped by CITYSCAPES_TRAIN_ID) or auto (label_format_of). resize_to (W, H): the map
    resized to it by PIL's nearest filter first (before size is checked)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: a label map must be a single-channel (palette or greyscale) PNG, "
                             f"got mode {img.mode}")
        if resize_to is not None and img.size != tuple(resize_to):
            img = img.resize(tuple(resize_to), Image.NEAREST)
        if size is not None and img.size != tuple(size):
            raise ValueError(f"{path}: label map is {img.size[0]}x{img.size[1]} but its image is "
                             f"{size[0]}x{size[1]}")
        labels = np.asarray(img).astype(np.int64)
    if label_format_of(path, label_format) == "cityscapes-ids":
        labels = cityscapes_to_train_ids(labels)
    bad = (labels >= num_classes) & (labels != IGNORE_LABEL) | (labels < 0)
    if bad.any():
        values = sorted(set(np.unique(labels[bad]).tolist()))
        raise ValueError(f"{path}: label values {values[:10]} are outside 0..{num_classes - 1} and are not the "
                         f"ignore label {IGNORE_LABEL}")
    return labels


# Suffixes that name what a Cityscapes file holds; stripped so an image and its label map share a key.
IMAGE_SUFFIXES = ("_leftImg8bit",)
LABEL_SUFFIXES = ("_gtFine_labelIds", "_gtFine_trainIds", "_gtCoarse_labelIds", "_gtCoarse_trainIds", "_labelIds",
                  "_trainIds")
NOT_LABELS = ("_color", "_instanceIds", "_instanceTrainIds", "_labelTrainIds_color")


def pair_key(path, suffixes) -> str:
    """A file's stem without the first of `suffixes` it ends with (X_leftImg8bit -> X)."""
    stem = Path(path).stem
    for suffix in suffixes:
        if stem.endswith(suffix):
            return stem[:-len(suffix)]
    return stem


def _keyed(paths, suffixes, what: str, root) -> dict:
    out: dict[str, Path] = {}
    for p in paths:
        k = pair_key(p, suffixes)
        if k in out:
            raise ValueError(f"{root}: two {what} share the name {k!r}: {out[k]} and {p}")
        out[k] = p
    return out


def image_label_pairs(images_dir, labels_dir) -> list[tuple[Path, Path]]:
    """(image, label map) pairs of two folders (searched recursively), matched by file stem: the image's stem
    without _leftImg8bit, the label's without _gtFine_labelIds / _gtFine_trainIds / _labelIds / _trainIds
    (Cityscapes names), so X_leftImg8bit.png pairs with X_gtFine_labelIds.png, and x.png with x.png. Cityscapes'
    other gtFine files (*_color.png, *_instanceIds.png) are skipped; where a stem has both labelIds and trainIds,
    trainIds is used. Every image needs a label map (the error lists those without); label maps without an
    image are left out (the usual case: generated images for part of the validation set). Sorted by key."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not a directory")
    images = _keyed(list_images([images_dir]), IMAGE_SUFFIXES, "images", images_dir)
    candidates = sorted(p for p in labels_dir.rglob("*.png") if not p.stem.endswith(NOT_LABELS))
    if not candidates:
        raise ValueError(f"{labels_dir}: no label maps (*.png)")
    trainids = {pair_key(p, LABEL_SUFFIXES) for p in candidates if p.stem.endswith("trainIds")}
    candidates = [p for p in candidates if not (p.stem.endswith("labelIds")
                                                and pair_key(p, LABEL_SUFFIXES) in trainids)]
    labels = _keyed(candidates, LABEL_SUFFIXES, "label maps", labels_dir)
    missing = sorted(k for k in images if k not in labels)
    if missing:
        raise ValueError(f"{len(missing)} of {len(images)} images in {images_dir} have no label map in {labels_dir} "
                         f"(matched by stem; e.g. {', '.join(missing[:3])})")
    return [(images[k], labels[k]) for k in sorted(images)]


# ---------------------------------------------------------------------------------------- classification

def image_folder(root) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, [(path, label)]) of an ImageFolder tree root/<class>/<image>; classes sorted = label indices."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class folders (the layout is DIR/<class_name>/<image>)")
    samples = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
               if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) under the class folders")
    return classes, samples


# ------------------------------------------------------------------------------------------ localization

@dataclass(frozen=True)
class BoxSample:
    image: Path
    boxes: list             # [(class_index, (x1, y1, x2, y2))]


def _find_image(root: Path, stem: str) -> Path:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = root / f"{stem}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no image named {stem}.* in {root}")


def _class_index(name: str, classes: dict | None) -> int | str:
    if classes is not None:
        if name not in classes:
            raise ValueError(f"class {name!r} is not in the class list")
        return classes[name]
    return name


def read_boxes(root, boxes=None, classes=None) -> tuple[list[str], list[BoxSample]]:
    """Ground-truth boxes for localization: (class names, samples).

    boxes: a CSV file (header image,class,x1,y1,x2,y2; image relative to root; coordinates 0-based with x2/y2
    exclusive) or a folder of PASCAL VOC / ImageNet XML files (one per image, matched to root/<xml stem>.<ext>;
    VOC's 1-based inclusive corners become 0-based exclusive ones). Default: root/boxes.csv if present, else the
    XML files in root/annotations or root.
    classes: a text file with one class name a line (line number = label index). Without it, classes whose names
    are all integers are used as indices, otherwise the sorted distinct names are (ImageNet's sorted WordNet ids
    are its label indices).
    """
    root = Path(root)
    if boxes is None:
        if (root / "boxes.csv").is_file():
            boxes = root / "boxes.csv"
        else:
            boxes = root / "annotations" if (root / "annotations").is_dir() else root
    boxes = Path(boxes)
    names = _read_list(Path(classes)) if classes is not None else None
    index = {n: i for i, n in enumerate(names)} if names is not None else None

    raw: dict[Path, list] = {}
    if boxes.is_file():
        with open(boxes, newline="") as f:
            reader = csv.DictReader(f)
            need = {"image", "class", "x1", "y1", "x2", "y2"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise ValueError(f"{boxes}: the CSV header must name {sorted(need)}, got {reader.fieldnames}")
            for row in reader:
                box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
                raw.setdefault(root / row["image"], []).append((row["class"].strip(), box))
    elif boxes.is_dir():
        xmls = sorted(boxes.glob("*.xml"))
        if not xmls:
            raise FileNotFoundError(f"no boxes.csv in {root} and no XML annotations in {boxes}")
        for x in xmls:
            tree = ET.parse(x).getroot()
            objs = raw.setdefault(_find_image(root, x.stem), [])
            for obj in tree.iter("object"):
                bb = obj.find("bndbox")
                xmin, ymin, xmax, ymax = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
                objs.append((obj.find("name").text.strip(), (xmin - 1, ymin - 1, xmax, ymax)))
    else:
        raise FileNotFoundError(f"{boxes}: not a CSV file or a folder of XML files")

    if index is None:
        all_names = sorted({c for objs in raw.values() for c, _ in objs})
        if all_names and all(n.lstrip("-").isdigit() for n in all_names):
            index = {n: int(n) for n in all_names}
            names = [str(i) for i in range(max(index.values()) + 1)]
        else:
            index = {n: i for i, n in enumerate(all_names)}
            names = all_names
    samples = [BoxSample(img, [(_class_index(c, index), b) for c, b in objs]) for img, objs in raw.items()]
    return names, samples


def box_iou(a, b) -> float:
    """IoU of two (x1, y1, x2, y2) boxes (x2/y2 exclusive); 0 when either is empty or missing (-1s)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def shard(items: list, rank: int, world: int) -> list:
    """Every world-th item from rank on: disjoint, covering, the same split on every process."""
    return items[rank::world]


def list_images(paths) -> list[Path]:
    """Files as given, and the images inside any folder (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"{p}: a folder with no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out
