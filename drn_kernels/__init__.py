"""drn_kernels: fused inference ops for Dilated Residual Networks.

    conv_bn_act(x, weight, bias, *, stride, padding, dilation, residual, relu, backend)
    fold_bn(weight, bn, *, conv_bias=None) -> (weight, bias)
    class_head(x, weight, bias, *, upsample, label_dtype, backend) -> (labels, probs)
    localize(x, weight, bias, *, threshold, stride, backend) -> (logits, labels, scores, boxes)

Backends: "auto", "triton", "cuda", "cpu", "cuda-sim", "reference" (see drn_kernels._backends):
    available_backends(device) -> {backend: None or why it cannot run}; why_unavailable(backend, device) asks about
    one; resolve_backend(backend, device, op) -> the concrete backend the op runs ("auto" chosen), or raises.
conv_output_size(size, kernel, stride, padding, dilation): an output side of conv_bn_act.
push_cpu_options(): pass the cpu backend's settings (DRN_CPU_CONV, DRN_WINOGRAD_TILE, DRN_CPU_ISA, DRN_CPU_PREFETCH),
    read now, to the loaded kernels (they read them when the extension loads; call it after
    changing them).
The ops are also registered as torch.ops.drn.* (drn_kernels._schemas; the dispatch path: drn_kernels.ops).
A process forked from one that imported drn_kernels runs torch with one intra-op thread (drn_kernels._fork: GNU
OpenMP hangs a forked child that uses more once the parent has; docs/processes.md).
"""
from . import _backends, _fork
from ._backends import BACKENDS, check_backend, why_unavailable
from ._backends import resolve as resolve_backend
from ._checks import conv_output_size
from ._build.extension import push_cpu_options
from .ops import class_head, conv_bn_act, fold_bn, localize

_fork.install()

__all__ = ["conv_bn_act", "fold_bn", "class_head", "localize", "BACKENDS", "check_backend", "available_backends",
           "why_unavailable", "resolve_backend", "conv_output_size", "push_cpu_options"]


def available_backends(device="cpu") -> dict:
    """{backend: None if it can run on `device` now, else the reason it cannot}."""
    import torch

    dev = torch.device(device)
    return {b: _backends.why_unavailable(b, dev) for b in BACKENDS if b != "auto"}
