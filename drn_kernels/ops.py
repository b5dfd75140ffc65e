"""The public ops: argument normalisation, input checks, backend choice, then the registered torch.ops.drn op.

The Triton backend calls its triton_op (torch.ops.drn.*_triton) directly, so torch.compile sees the kernel;
every other backend goes through the public op torch.ops.drn.<name>(..., backend).
"""
from __future__ import annotations

import torch

from . import _backends, _checks, _library, reference

__all__ = ["conv_bn_act", "fold_bn", "class_head", "localize"]


def conv_bn_act(x, weight, bias, *, stride=1, padding=0, dilation=1, residual=None, relu=True, backend="auto"):
    """y = relu?(conv2d(x, weight, stride, padding, dilation) + bias[None, :, None, None] + residual?).

    x (N, C, H, W) in any memory format; weight (K, C, R, S) with BatchNorm already folded (drn_kernels.fold_bn);
    bias (K,); residual (N, K, P, Q) or None. Returns (N, K, P, Q) in channels_last with x's dtype.
    """
    stride = _checks.pair(stride, "stride")
    padding = _checks.pair(padding, "padding")
    dilation = _checks.pair(dilation, "dilation")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    backend = _backends.resolve(backend, x.device, "conv_bn_act")
    _checks.check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)
    if backend == "triton" and x.shape[0] > 0:
        return _library._backend_op("conv_bn_act", backend)(x, weight, bias, stride, padding, dilation,
                                                             residual, relu)
    return torch.ops.drn.conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)


def conv_bn_act_into_residual(x, weight, bias, *, residual, stride=1, padding=0, dilation=1, relu=True,
                              backend="auto", prepared=None):
    """conv_bn_act(x, ..., residual=residual) written over `residual`, which is returned.

    Internal to drn.fused's memory-frugal segmentation runner (a block's identity shortcut that nothing reads
    afterwards); not part of the public API. The cpu backend computes in place when `residual` is channels_last
    contiguous; everywhere else the result is computed as conv_bn_act does and copied in (same values).
    `prepared`: a prepared form of `weight` for the cpu kernel (drn_kernels.prepared.PreparedConv passes it).
    """
    stride = _checks.pair(stride, "stride")
    padding = _checks.pair(padding, "padding")
    dilation = _checks.pair(dilation, "dilation")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor to write into, got {type(residual).__name__}")
    backend = _backends.resolve(backend, x.device, "conv_bn_act")
    _checks.check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)
    tracks_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, residual))
    if (backend == "cpu" and x.shape[0] > 0 and residual.is_contiguous(memory_format=torch.channels_last)
            and not tracks_grad):  # else the copy below records the op, whose backward raises (inference-only)
        torch.ops.drn.conv_bn_act_residual_native(x, weight, bias, stride, padding, dilation, residual, relu,
                                                  prepared)
        return residual
    return residual.copy_(conv_bn_act(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                      residual=residual, relu=relu, backend=backend))


def cpu_conv_algorithm(x, weight, stride=1) -> str:
    """The algorithm the cpu backend's conv_bn_act runs for x's dtype and channels, this weight and stride:
    "winograd" (float32 3x3 stride-1 with >= 64 channels in and out; 4x fewer multiplies than the FLOPs the
    profiles count), "onednn" (oneDNN's direct/GEMM convolution) or "aten" (the fallback). None without the
    compiled extension."""
    from . import _extension

    if _extension.load() is None:
        return None
    return torch.ops.drn.cpu_conv_algorithm(x, weight, list(_checks.pair(stride, "stride")))


def fold_bn(weight, bn, *, conv_bias=None):
    """(weight, bias) of a conv (weight, optional conv_bias) followed by eval-mode BatchNorm2d `bn`, folded in
    float64."""
    return reference.fold_bn(weight, bn, conv_bias=conv_bias)


def class_head(x, weight, bias, *, upsample=1, label_dtype=torch.int64, backend="auto"):
    """(labels, probs): argmax and max probability of softmax over classes of conv1x1(x, weight, bias),
    up-sampled ×8 by the reference's bilinear ConvTranspose2d when upsample == 8.

    labels (N, H*u, W*u) label_dtype; probs (N, H*u, W*u) float32. Kernel backends never materialise the
    (N, K, H*u, W*u) logits.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    backend = _backends.resolve(backend, x.device, "class_head")
    _checks.check_class_head(x, weight, bias, upsample, label_dtype, backend)
    if backend == "triton" and x.shape[0] > 0:
        return _library._backend_op("class_head", backend)(x, weight, bias, upsample, label_dtype)
    return torch.ops.drn.class_head(x, weight, bias, upsample, label_dtype, backend)


def localize(x, weight, bias, *, threshold, stride=8, backend="auto"):
    """(logits, labels, scores, boxes) of paper §5.2 in one pass over features x (N, C, h, w).

    logits (N, K) = global average pool then the 1×1 classifier; labels/scores (N, h, w) the per-cell argmax and
    probability of the classifier's softmax; boxes (N, 4) float32 (x1, y1, x2, y2) in input pixels (cells are
    stride×stride) around the cells labelled with the image's top-1 class and scoring above threshold, or -1.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    backend = _backends.resolve(backend, x.device, "localize")
    _checks.check_localize(x, weight, bias, threshold, stride, backend)
    threshold = float(threshold)
    if backend == "triton" and x.shape[0] > 0:
        return _library._backend_op("localize", backend)(x, weight, bias, threshold, stride)
    return torch.ops.drn.localize(x, weight, bias, threshold, stride, backend)
