"""drn_kernels: fused inference ops for Dilated Residual Networks.

    conv_bn_act(x, weight, bias, *, stride, padding, dilation, residual, relu, backend)
    fold_bn(weight, bn, *, conv_bias=None) -> (weight, bias)
    class_head(x, weight, bias, *, upsample, label_dtype, backend) -> (labels, probs)
    localize(x, weight, bias, *, threshold, stride, backend) -> (logits, labels, scores, boxes)

Backends: "auto", "triton", "cuda", "cpu", "cuda-sim", "reference" (see drn_kernels._backends).
"""
from . import _library  # noqa: F401  (registers torch.ops.drn.*)
from ._backends import BACKENDS, check_backend
from .ops import class_head, conv_bn_act, fold_bn, localize

__all__ = ["conv_bn_act", "fold_bn", "class_head", "localize", "BACKENDS", "check_backend", "available_backends"]


def available_backends(device="cpu") -> dict:
    """{backend: None if it can run on `device` now, else the reason it cannot}."""
    import torch

    from ._backends import why_unavailable

    dev = torch.device(device)
    return {b: why_unavailable(b, dev) for b in BACKENDS if b != "auto"}
