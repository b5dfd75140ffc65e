"""The one reference implementation of every op's math, in plain PyTorch.

Tests compare kernels against these functions run in float64; the "reference" backend runs them in the input's
dtype (low precision is computed in float32 and cast back, as the kernels accumulate in float32). Nothing here is
fast: the (N, K, H, W) maps that the kernels never materialise are materialised here on purpose.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "conv_bn_act",
    "fold_bn",
    "bilinear_up_weight",
    "upsample8",
    "class_logits",
    "class_head",
    "localize",
]

UPSAMPLE_KERNEL = 16  # the reference DRNSeg's ConvTranspose2d(C, C, 16, stride=8, padding=4, groups=C)
UPSAMPLE_STRIDE = 8
UPSAMPLE_PADDING = 4


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def conv_bn_act(x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), residual=None, relu=True):
    """y = relu?(conv2d(x, weight) + bias + residual?), channels_last, in x's dtype."""
    cdt = _compute_dtype(x.dtype)
    y = F.conv2d(x.to(cdt), weight.to(cdt), bias.to(cdt), stride=tuple(stride), padding=tuple(padding),
                 dilation=tuple(dilation))
    if residual is not None:
        y = y + residual.to(cdt)
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


def fold_bn(weight: torch.Tensor, bn: torch.nn.BatchNorm2d, *, conv_bias: torch.Tensor | None = None):
    """Fold an eval-mode BatchNorm2d that follows a conv into (weight, bias), computed in float64.

    bn(conv(x) + conv_bias) = conv(x) * scale + (beta + (conv_bias - mean) * scale), scale = gamma / sqrt(var + eps):
    the folded weight is weight * scale per output channel, the folded bias beta + (conv_bias - mean) * scale
    (conv_bias None: a bias-free conv, as every DRN conv before a BatchNorm).
    """
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fold_bn: bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: bn has no running statistics (track_running_stats=False); cannot fold")
    if weight.dim() != 4 or weight.shape[0] != bn.num_features:
        raise ValueError(f"fold_bn: weight must be (K, C, R, S) with K == bn.num_features={bn.num_features}, "
                         f"got {tuple(weight.shape)}")
    if conv_bias is not None and tuple(conv_bias.shape) != (bn.num_features,):
        raise ValueError(f"fold_bn: conv_bias must be ({bn.num_features},), got {tuple(conv_bias.shape)}")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    w = weight.detach().double() * scale.view(-1, 1, 1, 1)
    shift = -mean if conv_bias is None else conv_bias.detach().double() - mean
    b = beta + shift * scale
    return w.to(weight.dtype), b.to(weight.dtype)


def bilinear_up_weight(channels: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The fixed bilinear kernel of the reference segmentation head, shape (channels, 1, 16, 16).

    Along one axis tap i has weight 1 - |i / 8 - 15 / 16|; the 2-D kernel is the outer product.
    """
    f = math.ceil(UPSAMPLE_KERNEL / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    i = torch.arange(UPSAMPLE_KERNEL, dtype=torch.float64)
    w1 = 1 - (i / f - c).abs()
    w2 = w1[:, None] * w1[None, :]
    return w2.expand(channels, 1, UPSAMPLE_KERNEL, UPSAMPLE_KERNEL).to(dtype=dtype, device=device).contiguous()


def upsample8(logits: torch.Tensor) -> torch.Tensor:
    """×8 up-sampling exactly as the reference's frozen ConvTranspose2d (zeros beyond the edges)."""
    k = logits.shape[1]
    w = bilinear_up_weight(k, dtype=logits.dtype, device=logits.device)
    return F.conv_transpose2d(logits, w, stride=UPSAMPLE_STRIDE, padding=UPSAMPLE_PADDING, groups=k)


def _classifier(x, weight, bias):
    cdt = _compute_dtype(x.dtype)
    return F.conv2d(x.to(cdt), weight.to(cdt).view(weight.shape[0], -1, 1, 1), bias.to(cdt))


def class_logits(x, weight, bias, upsample=1):
    """The logits class_head takes the argmax of: conv1x1(x, weight (K, C, 1, 1) or (K, C), bias), ×8 up-sampled
    by the reference's transposed conv when upsample == 8. (N, K, H*u, W*u), float64 for float64 input."""
    logits = _classifier(x, weight, bias)
    return upsample8(logits) if upsample == 8 else logits


def _argmax_and_prob(logits: torch.Tensor, label_dtype):
    """labels = argmax over dim 1 (torch's tie and NaN rules), probs = softmax probability of that label."""
    labels = torch.argmax(logits, dim=1)
    probs = torch.softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
    return labels.to(label_dtype), probs.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)


def class_head(x, weight, bias, upsample=1, label_dtype=torch.int64):
    """labels, probs of argmax_k softmax_k(conv1x1(x) [upsampled ×8])."""
    return _argmax_and_prob(class_logits(x, weight, bias, upsample), label_dtype)


def localize(x, weight, bias, threshold, stride=8):
    """Paper §5.2: image logits, per-cell dominant class and its probability, and the box of the top-1 class.

    logits (N, K) = mean over cells of the 1×1 classifier's response (== global average pool, then fc).
    labels, scores (N, h, w): argmax and max of the per-cell softmax. boxes (N, 4) float32 (x1, y1, x2, y2) in
    input pixels: the smallest box covering every cell whose label is the image's top-1 class and whose score is
    greater than threshold; cell (i, j) covers pixels [j*stride, (j+1)*stride) × [i*stride, (i+1)*stride), so
    x2 = (last column + 1) * stride. All four are -1 where no cell qualifies.
    """
    maps = _classifier(x, weight, bias)
    n, k, h, w = maps.shape
    logits = maps.mean(dim=(2, 3)) if h * w > 0 else maps.new_zeros(n, k)
    labels, scores = _argmax_and_prob(maps, torch.int64)
    boxes = torch.full((n, 4), -1.0, dtype=torch.float32, device=x.device)
    if n > 0 and h * w > 0:
        top1 = torch.argmax(logits, dim=1)
        boxes = cell_boxes(labels.eq(top1.view(n, 1, 1)) & (scores > threshold), stride)
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    return logits.to(out_dtype), labels, scores, boxes


def cell_boxes(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Paper §5.2's box rule, the one place it is written: (N, 4) float32 (x1, y1, x2, y2) around each image's True
    cells of mask (N, h, w), in pixels of `stride`-sized cells; -1s where none. Masked min/max only (no data-dependent shapes), so it traces and exports to ONNX."""
    n, h, w = mask.shape
    cols = torch.arange(w, device=mask.device).view(1, 1, w).expand(n, h, w)
    rows = torch.arange(h, device=mask.device).view(1, h, 1).expand(n, h, w)
    big = torch.full_like(cols, max(h, w) + 1)
    x1 = torch.where(mask, cols, big).amin(dim=(1, 2))
    y1 = torch.where(mask, rows, big).amin(dim=(1, 2))
    x2 = torch.where(mask, cols, -big).amax(dim=(1, 2)) + 1
    y2 = torch.where(mask, rows, -big).amax(dim=(1, 2)) + 1
    boxes = (torch.stack([x1, y1, x2, y2], dim=1) * stride).to(torch.float32)
    return torch.where(mask.flatten(1).any(dim=1, keepdim=True), boxes, torch.full_like(boxes, -1.0))
