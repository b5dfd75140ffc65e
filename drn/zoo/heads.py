"""Task heads on a DRN backbone: semantic segmentation (the reference DRNSeg) and weakly-supervised localization.

Segmentation keeps the reference's state_dict layout: base.* (the backbone's stem and levels as an
nn.Sequential), seg.weight/seg.bias (1×1 classifier), up.weight (frozen bilinear ConvTranspose2d ×8).
Localization keeps the classifier's own layout (so ImageNet checkpoints load unchanged); only forward differs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import drn_kernels
from drn_kernels.reference import bilinear_up_weight

from .models import DRN, DRN_A

OUTPUT_STRIDE = 8


class Localization(NamedTuple):
    logits: torch.Tensor   # (N, classes)
    labels: torch.Tensor   # (N, h, w) int64: dominant class of each output-stride-8 cell
    scores: torch.Tensor   # (N, h, w) its softmax probability
    boxes: torch.Tensor    # (N, 4) float (x1, y1, x2, y2) in input pixels, -1 where no cell qualifies


class DRNSeg(nn.Module):
    """forward(x) -> (log_probs (N, K, H, W), logits_low (N, K, ceil(H/8), ceil(W/8))).

    Sides that are not multiples of 8 are run at their own size: the backbone's stride-2 levels round up, the ×8
    up-sampler then yields 8*ceil(H/8) >= H rows, and the result is cropped to the input's H×W (top-left aligned,
    as the up-sampler's geometry is). No padding is added, so every multiple-of-8 input matches the reference.
    """

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.base = nn.Sequential(*backbone.stem_and_levels())
        names = {id(m): n for n, m in backbone.named_children()}
        self.base_names = [names[id(m)] for m in backbone.stem_and_levels()]  # classifier name of each base.<i>
        self.seg = nn.Conv2d(backbone.out_dim, num_classes, kernel_size=1, bias=True)
        n = num_classes  # He initialisation as the reference DRNSeg
        self.seg.weight.data.normal_(0, math.sqrt(2.0 / n))
        self.seg.bias.data.zero_()
        self.up = nn.ConvTranspose2d(num_classes, num_classes, 16, stride=8, padding=4, groups=num_classes,
                                     bias=False)
        self.up.weight.data.copy_(bilinear_up_weight(num_classes))
        self.up.weight.requires_grad = False
        self.num_classes = num_classes
        self.out_dim = backbone.out_dim

    def features(self, x):
        return self.base(x)

    def forward(self, x):
        h, w = x.shape[-2:]
        low = self.logits_low(x)
        up = self.up(low)[..., :h, :w]
        return F.log_softmax(up, dim=1), low

    def logits_low(self, x):
        """(N, K, ceil(H/8), ceil(W/8)): the 1×1 classifier's logits before the ×8 up-sampler."""
        return self.seg(self.base(x))

    @torch.no_grad()
    def predict(self, x):
        """(labels (N, H, W) int64, probs (N, H, W) float32) of the ×8 up-sampled prediction."""
        log_probs, _ = self.forward(x)
        best, labels = log_probs.max(dim=1)
        return labels, best.float().exp()


def classifier_weights(model: nn.Module):
    """The 1×1 classifier as (weight (K, C, 1, 1), bias (K,)) for DRN (conv fc) and DRN-A (linear fc)."""
    w = model.fc.weight
    return w.view(w.shape[0], w.shape[1], 1, 1), model.fc.bias


class LocalizeMixin:
    """Paper §5.2: the classifier applied to every output-stride-8 cell instead of the pooled features."""

    head_backend = "reference"

    def forward(self, x, threshold: float = 0.5):
        feats = self.features(x)
        weight, bias = classifier_weights(self)
        logits, labels, scores, boxes = drn_kernels.localize(feats, weight, bias, threshold=threshold,
                                                             stride=OUTPUT_STRIDE, backend=self.head_backend)
        return Localization(logits, labels, scores, clip_boxes(boxes, x.shape[-2], x.shape[-1]))


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Cells at the right/bottom edge of a side that is not a multiple of 8 reach past the image: clip them."""
    valid = boxes[:, :1] >= 0
    limit = boxes.new_tensor([width, height, width, height])
    return torch.where(valid, torch.minimum(boxes, limit), boxes)


class LocalizingDRN(LocalizeMixin, DRN):
    pass


class LocalizingDRN_A(LocalizeMixin, DRN_A):
    pass


def as_localizer(model: nn.Module) -> nn.Module:
    """Turn a classify model into its localize twin in place (same parameters and state_dict keys)."""
    model.__class__ = LocalizingDRN_A if isinstance(model, DRN_A) else LocalizingDRN
    return model

