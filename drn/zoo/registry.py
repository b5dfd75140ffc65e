"""The model registry, in the manner of timm: @register_model constructors and a table of pretrained weights."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .models import DRN, DRN_A, BasicBlock, Bottleneck

WEBROOT = "http://dl.yf.io/drn/"
HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's name-<sha256 prefix>.ext convention
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Cityscapes training set's mean/std: the reference's datasets/cityscapes/info.json, which its Cityscapes
# checkpoints were trained and evaluated with.
CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)


@dataclass(frozen=True)
class Weights:
    """A released checkpoint. url: its official download ("" where there is no direct link); file: its name in
    the torch hub cache (default: the url's last part); sha256_prefix: the start of its SHA-256 — torch.hub's
    convention puts it in the file name (name-<hash>.pth) and checks it on download; None where none was
    published."""

    url: str
    num_classes: int = 1000
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    note: str = ""
    file_name: str = ""
    task: str = "classify"

    @property
    def file(self) -> str:
        return self.file_name or self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        m = HASH_IN_NAME.search(self.file)
        return m.group(1) if m else None


_CONSTRUCTORS: dict[str, Callable] = {}
PRETRAINED: dict[str, Weights] = {
    "drn_c_26": Weights(WEBROOT + "drn_c_26-ddedf421.pth"),
    "drn_c_42": Weights(WEBROOT + "drn_c_42-9d336e8c.pth"),
    "drn_c_58": Weights(WEBROOT + "drn_c_58-0a53a92c.pth"),
    "drn_d_22": Weights(WEBROOT + "drn_d_22-4bd2f8ea.pth"),
    "drn_d_38": Weights(WEBROOT + "drn_d_38-eebb45f0.pth"),
    "drn_d_54": Weights(WEBROOT + "drn_d_54-0e0534ff.pth"),
    "drn_d_105": Weights(WEBROOT + "drn_d_105-12b40979.pth"),
    # The reference's drn_a_50(pretrained=True) loads torchvision's ResNet-50 ImageNet weights into the DRN-A-50
    # layout (same keys). They are not DRN-A-50 weights: the dilated levels were never trained with dilation.
    "drn_a_50": Weights("https://download.pytorch.org/models/resnet50-19c8e357.pth",
                        note="torchvision ResNet-50 weights loaded into DRN-A-50 (as the reference does); "
                             "not weights trained as DRN-A-50"),
}

# The reference's Cityscapes segmentation checkpoints (19 classes, its DRNSeg key layout: base.*, seg.*,
# up.weight). Published only as a shared folder (http://go.yf.io/drn-cityscapes-models, no direct links) with no
# hashes: their SHA-256 is not known here, so they are identified by name and by loading strictly into the model.
CITYSCAPES_HOME = "http://go.yf.io/drn-cityscapes-models"
CITYSCAPES = {
    name: Weights("", num_classes=19, mean=CITYSCAPES_MEAN, std=CITYSCAPES_STD, file_name=file, task="segment",
                  note=note)
    for name, file, note in (
        ("drn_d_22", "drn_d_22_cityscapes.pth", "the reference README's DRN-D-22: 68.0% mIoU (val)"),
        ("drn_d_38", "drn_d_38_cityscapes.pth", "the reference README's DRN-D-38: 71.4% mIoU (val)"),
        ("drn_d_105", "drn-d-105_ms_cityscapes.pth", "the image-synthesis papers' scorer (SPADE, CLADE, OASIS)"),
    )
}


def register_model(fn: Callable) -> Callable:
    _CONSTRUCTORS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_CONSTRUCTORS, key=lambda n: (n.split("_")[1], int(n.split("_")[2])))


def constructor(name: str) -> Callable:
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown model {name!r}; choose from {list_models()}")
    return _CONSTRUCTORS[name]


@register_model
def drn_a_18(num_classes=1000):
    return DRN_A(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@register_model
def drn_a_34(num_classes=1000):
    return DRN_A(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


@register_model
def drn_a_50(num_classes=1000):
    return DRN_A(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


@register_model
def drn_b_26(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], num_classes=num_classes, arch="B")


@register_model
def drn_c_26(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], num_classes=num_classes, arch="C")


@register_model
def drn_c_42(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 3, 4, 6, 3, 1, 1], num_classes=num_classes, arch="C")


@register_model
def drn_c_58(num_classes=1000):
    return DRN(Bottleneck, [1, 1, 3, 4, 6, 3, 1, 1], num_classes=num_classes, arch="C")


@register_model
def drn_d_22(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], num_classes=num_classes, arch="D")


@register_model
def drn_d_24(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 2, 2], num_classes=num_classes, arch="D")


@register_model
def drn_d_38(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 3, 4, 6, 3, 1, 1], num_classes=num_classes, arch="D")


@register_model
def drn_d_40(num_classes=1000):
    return DRN(BasicBlock, [1, 1, 3, 4, 6, 3, 2, 2], num_classes=num_classes, arch="D")


@register_model
def drn_d_54(num_classes=1000):
    return DRN(Bottleneck, [1, 1, 3, 4, 6, 3, 1, 1], num_classes=num_classes, arch="D")


@register_model
def drn_d_56(num_classes=1000):
    return DRN(Bottleneck, [1, 1, 3, 4, 6, 3, 2, 2], num_classes=num_classes, arch="D")


@register_model
def drn_d_105(num_classes=1000):
    return DRN(Bottleneck, [1, 1, 3, 4, 23, 3, 1, 1], num_classes=num_classes, arch="D")


@register_model
def drn_d_107(num_classes=1000):
    return DRN(Bottleneck, [1, 1, 3, 4, 23, 3, 2, 2], num_classes=num_classes, arch="D")
