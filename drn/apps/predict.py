"""Running a model on one image: what `drn classify|segment|localize` and `drn evaluate` share.

- load_model: drn.build with the weights' class count read from the checkpoint when not given, fused on request.
- classify: probabilities of the 1-crop / 10-crop input (10-crop averages the ten softmaxes).
- segment: labels at the input size; with ms=True the reference's multi-scale protocol exactly (drn.apps.multiscale:
  its scales and order, the whole up-sampled map resized by PIL's bilinear filter, log-probabilities summed).
- localize: the localization model on the whole image (optionally resized), the box in the image's pixels.
"""
from __future__ import annotations

import torch
from PIL import Image

from drn_kernels.reference import cell_boxes

from ..zoo.heads import OUTPUT_STRIDE
from ..zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from . import multiscale
from .data import classify_inputs, resize_shorter, to_tensor

MS_SCALES = multiscale.REFERENCE_SCALES


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_classes(weights) -> int | None:
    """Number of classes of a checkpoint's classifier (fc or seg), or None when it has none."""
    from ..zoo.checkpoint import read_state_dict

    sd = read_state_dict(weights)
    for key in ("seg.weight", "fc.weight"):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def load_model(name: str, task: str, *, num_classes=None, weights=None, pretrained=False, fused=False,
               backend="auto", device=None, cpu_choices=None):
    """drn.build for the command line: weights (a path) win over pretrained; with weights and no num_classes,
    the checkpoint's classifier size is used; cpu_choices (fused only) a table of cpu algorithm choices to pin."""
    import drn

    if num_classes is None and weights is not None:
        num_classes = checkpoint_classes(weights)
        if task == "segment" and num_classes == 1000:
            num_classes = None  # an ImageNet checkpoint says nothing about the segmentation classes
    if task == "segment" and num_classes is None:
        raise ValueError("segmentation needs --num-classes (19 for Cityscapes)")
    source = weights if weights is not None else bool(pretrained)
    if cpu_choices is not None and not fused:
        raise ValueError("--cpu-choices pins the fused model's algorithms: it needs --fused")
    return drn.build(name, task=task, num_classes=num_classes, pretrained=source, fused=fused, backend=backend,
                     device=device or default_device(), cpu_choices=cpu_choices)


def model_device(model) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def num_classes_of(model) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    return int(model.fc.weight.shape[0])


@torch.no_grad()
def classify(model, img: Image.Image, *, resize=256, crop=224, ten_crop=False, mean=IMAGENET_MEAN,
             std=IMAGENET_STD) -> torch.Tensor:
    """(K,) float32 class probabilities (the mean of the crops' softmaxes for 10-crop)."""
    x = classify_inputs(img, resize, crop, ten_crop, mean, std).to(model_device(model))
    logits = model(x)
    if not isinstance(logits, torch.Tensor):  # a localization model: its image-level logits
        logits = logits.logits
    return torch.softmax(logits.float(), dim=1).mean(dim=0).cpu()


@torch.no_grad()
def segment(model, img: Image.Image, *, mean=IMAGENET_MEAN, std=IMAGENET_STD, ms=False,
            scales=MS_SCALES) -> torch.Tensor:
    """(H, W) int64 labels at the image's size; ms=True: the reference's multi-scale protocol (drn.apps.multiscale)."""
    if ms:
        return multiscale.segment(model, img, mean=mean, std=std, scales=scales)
    labels, _ = model.predict(to_tensor(img, mean, std)[None].to(model_device(model)))
    return labels[0].cpu()


def class_box(labels: torch.Tensor, scores: torch.Tensor, cls: int, threshold: float,
              stride: int = OUTPUT_STRIDE) -> tuple:
    """The paper's minimal box for class `cls` from per-cell (labels, scores) (h, w): the cells whose dominant class
    is cls and whose score > threshold; (x1, y1, x2, y2) in the model input's pixels, -1s when none."""
    return tuple(cell_boxes(((labels == cls) & (scores > threshold))[None], stride)[0].tolist())


def scale_box(box, from_size, to_size) -> tuple:
    """A box in a (W, H) image's pixels mapped to another size's, clipped to it; -1s stay -1s."""
    if box[0] < 0:
        return tuple(float(v) for v in box)
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x1, y1, x2, y2 = box
    return (max(0.0, x1 * sx), max(0.0, y1 * sy), min(float(to_size[0]), x2 * sx), min(float(to_size[1]), y2 * sy))


@torch.no_grad()
def localize(model, img: Image.Image, *, threshold=0.5, resize=0, top=1, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The localization model on the whole image (shorter side resized to `resize` first unless 0).

    Returns (probs (K,) of the image-level logits, [(class, box in the original image's pixels)] for the `top`
    most probable classes); the first box is the model's own (drn.Localization.boxes).
    """
    seen = resize_shorter(img, resize) if resize else img
    x = to_tensor(seen, mean, std)[None].to(model_device(model))
    out = model(x, threshold=threshold)
    probs = torch.softmax(out.logits[0].float(), dim=0).cpu()
    labels, scores = out.labels[0].cpu(), out.scores[0].cpu()
    order = torch.argsort(probs, descending=True, stable=True)[:top].tolist()
    boxes = [tuple(out.boxes[0].tolist())] + [class_box(labels, scores, c, threshold) for c in order[1:]]
    return probs, [(c, scale_box(b, seen.size, img.size)) for c, b in zip(order, boxes)]
