"""The public ops and the one dispatch path.

drn_kernels.conv_bn_act / class_head / localize: normalise the arguments, resolve the backend once
(_backends.resolve: "auto" becomes a concrete backend, a named one is checked to be available), check the inputs
once (_checks), then call that backend's registered op, BACKEND_OPS: drn::<op>_native (cpu, cuda),
drn::<op>_sim (cuda-sim), drn::<op>_triton (triton), drn::<op>_reference (reference). An empty batch has
nothing to compute: it runs the reference op, whatever the backend. Every backend op is a registered op with a
fake kernel and the inference-only autograd rule (_schemas), so torch.compile traces the dispatch (the backend
choice runs eagerly, see _backends) and records the backend op itself — a Triton kernel included, which
inductor can then inline.

torch.ops.drn.conv_bn_act / class_head / localize (..., backend): the same ops for callers of torch.ops (a
user's own graph, an exported program that names them). Their kernel, registered here, is the function above:
a direct call is resolved and checked exactly once too. They take a concrete backend name ("auto" raises: the
choice belongs to the caller, where it is visible).
"""
from __future__ import annotations

import torch

from . import _backends, _checks, _schemas, reference  # noqa: F401  (_schemas: the ops registered below)

__all__ = ["conv_bn_act", "fold_bn", "class_head", "localize"]

# backend -> the family of registered ops that runs it: drn::<op>_<family>
BACKEND_OPS = {"cpu": "native", "cuda": "native", "cuda-sim": "sim", "triton": "triton", "reference": "reference"}


def _backend_for(backend, x, op: str) -> str:
    """The concrete backend for x (a tensor, else TypeError), resolved once per call."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _backends.resolve(backend, x.device, op)


def backend_op(op: str, backend: str, x):
    """The registered op that runs `op` on concrete `backend` for input x: drn::<op>_<BACKEND_OPS[backend]>, or
    the reference op for an empty batch. (The Triton ops exist once their module is imported: resolve() does it
    when it chooses "triton".)"""
    family = "reference" if x.shape[0] == 0 else BACKEND_OPS[backend]
    return getattr(torch.ops.drn, f"{op}_{family}")


def _geometry(stride, padding, dilation):
    return _checks.pair(stride, "stride"), _checks.pair(padding, "padding"), _checks.pair(dilation, "dilation")


def conv_bn_act(x, weight, bias, *, stride=1, padding=0, dilation=1, residual=None, relu=True, backend="auto"):
    """y = relu?(conv2d(x, weight, stride, padding, dilation) + bias[None, :, None, None] + residual?).

    x (N, C, H, W) in any memory format; weight (K, C, R, S) with BatchNorm already folded (drn_kernels.fold_bn);
    bias (K,); residual (N, K, P, Q) or None. Returns (N, K, P, Q) in channels_last with x's dtype.
    """
    return run_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)


def conv_bn_act_into_residual(x, weight, bias, *, residual, stride=1, padding=0, dilation=1, relu=True,
                              backend="auto", prepare=None):
    """conv_bn_act(x, ..., residual=residual) written over `residual`, which is returned.

    Internal to drn.fused's memory-frugal segmentation runner (a block's identity shortcut that nothing reads
    afterwards); not part of the public API. The cpu backend computes in place when `residual` is channels_last
    contiguous; everywhere else the result is computed as conv_bn_act does and copied in (same values).
    `prepare`: as in run_conv_bn_act.
    """
    return run_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend, prepare,
                           into_residual=True)


def run_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend, prepare=None,
                    into_residual=False):
    """The one path of every conv_bn_act call (the public op, the fused model's layers through
    drn_kernels.prepared.PreparedConv, the in-place variant): normalise, resolve the backend, check, then run.

    prepare: None, or a callable (x, stride, padding, dilation) -> a prepared form of `weight` for the cpu kernel
    or None (PreparedConv passes its own), called once the call is checked and only where the cpu kernel runs it.
    into_residual: write the result over `residual` and return it (conv_bn_act_into_residual).
    """
    stride, padding, dilation = _geometry(stride, padding, dilation)
    if into_residual and not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor to write into, got {type(residual).__name__}")
    backend = _backend_for(backend, x, "conv_bn_act")
    _checks.check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)
    cpu_kernel = backend == "cpu" and x.shape[0] > 0
    prepared = prepare(x, stride, padding, dilation) if prepare is not None and cpu_kernel else None
    if into_residual:
        tracks_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, residual))
        # In place on the cpu kernel where it can be; else computed below and copied in: that records the op (whose
        # backward raises: inference-only), and computes before writing where residual shares x's memory.
        if (cpu_kernel and residual.is_contiguous(memory_format=torch.channels_last) and not tracks_grad
                and residual.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()):
            torch.ops.drn.conv_bn_act_residual_native(x, weight, bias, stride, padding, dilation, residual, relu,
                                                      prepared)
            return residual
    if prepared is not None:
        out = torch.ops.drn.conv_bn_act_prepared_native(x, weight, bias, prepared, stride, padding, dilation,
                                                        residual, relu)
    else:
        out = backend_op("conv_bn_act", backend, x)(x, weight, bias, stride, padding, dilation, residual, relu)
    return residual.copy_(out) if into_residual else out


def cpu_conv_algorithm(x, weight, stride=1) -> str:
    """The algorithm the cpu backend's conv_bn_act runs for x's dtype and channels, this weight and stride:
    "winograd" (float32 3x3 stride-1 with >= 64 channels in and out; 4x fewer multiplies than the FLOPs the
    profiles count), "onednn" (oneDNN's direct/GEMM convolution) or "aten" (the fallback). None without the
    compiled extension."""
    if _backends.why_unavailable("cpu", torch.device("cpu")) is not None:
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
    backend = _backend_for(backend, x, "class_head")
    _checks.check_class_head(x, weight, bias, upsample, label_dtype, backend)
    return backend_op("class_head", backend, x)(x, weight, bias, upsample, label_dtype)


def localize(x, weight, bias, *, threshold, stride=8, backend="auto"):
    """(logits, labels, scores, boxes) of paper §5.2 in one pass over features x (N, C, h, w).

    logits (N, K) = global average pool then the 1×1 classifier; labels/scores (N, h, w) the per-cell argmax and
    probability of the classifier's softmax; boxes (N, 4) float32 (x1, y1, x2, y2) in input pixels (cells are
    stride×stride) around the cells labelled with the image's top-1 class and scoring above threshold, or -1.
    """
    backend = _backend_for(backend, x, "localize")
    _checks.check_localize(x, weight, bias, threshold, stride, backend)
    return backend_op("localize", backend, x)(x, weight, bias, float(threshold), stride)


# ---- the kernels this module registers: the "reference" backend ops and the public torch.ops.drn.* ops ---------

@torch.library.register_kernel("drn::conv_bn_act_reference", None)
def _(x, weight, bias, stride, padding, dilation, residual, relu):
    return reference.conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu)


@torch.library.register_kernel("drn::class_head_reference", None)
def _(x, weight, bias, upsample, label_dtype):
    labels, probs = reference.class_head(x, weight.view(weight.shape[0], -1, 1, 1), bias, upsample, label_dtype)
    return labels, probs.float()


@torch.library.register_kernel("drn::localize_reference", None)
def _(x, weight, bias, threshold, stride):
    logits, labels, scores, boxes = reference.localize(x, weight.view(weight.shape[0], -1, 1, 1), bias, threshold,
                                                       stride)
    return logits, labels, scores.float(), boxes


def _named(backend: str, op: str) -> str:
    """A public torch.ops.drn op takes a concrete backend: the "auto" choice belongs to its caller."""
    if backend == "auto":
        raise ValueError(f"torch.ops.drn.{op} takes a concrete backend; use drn_kernels.{op} for 'auto'")
    return backend


@torch.library.register_kernel("drn::conv_bn_act", None)
def _(x, weight, bias, stride, padding, dilation, residual, relu, backend):
    return conv_bn_act(x, weight, bias, stride=stride, padding=padding, dilation=dilation, residual=residual,
                       relu=relu, backend=_named(backend, "conv_bn_act"))


@torch.library.register_kernel("drn::class_head", None)
def _(x, weight, bias, upsample, label_dtype, backend):
    return class_head(x, weight, bias, upsample=upsample, label_dtype=label_dtype,
                      backend=_named(backend, "class_head"))


@torch.library.register_kernel("drn::localize", None)
def _(x, weight, bias, threshold, stride, backend):
    return localize(x, weight, bias, threshold=threshold, stride=stride, backend=_named(backend, "localize"))

