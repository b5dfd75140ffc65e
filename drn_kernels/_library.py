"""torch.library registration of the ops in the `drn` namespace.

Public ops (take a concrete backend name; drn_kernels.ops resolves "auto" before calling them):
    drn::conv_bn_act, drn::class_head, drn::localize
Backend ops, one schema per kernel family, defined here so they exist (with fake kernels) even when the
compiled extension is missing:
    drn::*_native  — implemented by drn_kernels._C for the CPU and CUDA dispatch keys (csrc/)
    drn::*_sim     — implemented for CPU tensors by the host (SIMT shim) build of the CUDA sources
    drn::*_triton  — torch.library.triton_op in drn_kernels/triton/ (registered when that module is imported)
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backends, _checks, reference

_CONV_ARGS = ("Tensor x, Tensor weight, Tensor bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, "
              "Tensor? residual, bool relu")
_HEAD_ARGS = "Tensor x, Tensor weight, Tensor bias, int upsample, ScalarType label_dtype"
_LOC_ARGS = "Tensor x, Tensor weight, Tensor bias, float threshold, int stride"

for _suffix in ("native", "sim"):
    torch.library.define(f"drn::conv_bn_act_{_suffix}", f"({_CONV_ARGS}) -> Tensor")
    torch.library.define(f"drn::class_head_{_suffix}", f"({_HEAD_ARGS}) -> (Tensor, Tensor)")
    torch.library.define(f"drn::localize_{_suffix}", f"({_LOC_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)")


# The same computation written over the residual (no output allocation): CPU kernel only (csrc/cpu);
# drn_kernels.ops.conv_bn_act_into_residual calls it where it applies and computes + copies elsewhere.
# `prepared` as in conv_bn_act_prepared_native.
torch.library.define("drn::conv_bn_act_residual_native",
                     "(Tensor x, Tensor weight, Tensor bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, "
                     "Tensor(a!) residual, bool relu, Tensor? prepared=None) -> ()")


@torch.library.register_fake("drn::conv_bn_act_residual_native")
def _(x, weight, bias, stride, padding, dilation, residual, relu, prepared=None):
    return None


# Prepared weights (CPU kernel only; drn_kernels.prepared keeps them for an owner such as drn.fused):
# conv_bn_act_native with `prepared`, a form of `weight` made once by the caller — drn::winograd_weight(weight)
# or oneDNN's blocked copy (mkldnn::_reorder_convolution_weight) — used where the path taken can use it.
torch.library.define("drn::conv_bn_act_prepared_native",
                     "(Tensor x, Tensor weight, Tensor bias, Tensor prepared, SymInt[] stride, SymInt[] padding, "
                     "SymInt[] dilation, Tensor? residual, bool relu) -> Tensor")
torch.library.define("drn::winograd_weight", "(Tensor weight, int tile=0) -> Tensor")  # tile 2|4, 0: setting


def winograd_tile() -> int:
    """Output tile side of the cpu backend's Winograd convolution (DRN_WINOGRAD_TILE=2|4, default 4)."""
    from . import settings

    return int(settings.choice("DRN_WINOGRAD_TILE"))


@torch.library.register_fake("drn::conv_bn_act_prepared_native")
def _(x, weight, bias, prepared, stride, padding, dilation, residual, relu):
    return empty_conv_output(x, weight, stride, padding, dilation)


@torch.library.register_fake("drn::winograd_weight")
def _(weight, tile=0):
    # packed for csrc/cpu/gemm.cpp: panels of 32 output channels; bfloat16 in pairs of input channels, F(2x2) only
    panels, c = -(-weight.shape[0] // 32), weight.shape[1]
    if weight.dtype == torch.bfloat16:
        return weight.new_empty((16, panels, -(-c // 2), 32, 2))
    alpha = (tile or winograd_tile()) + 2
    return weight.new_empty((alpha * alpha, panels, c, 32), dtype=torch.float32)


# Which algorithm the CPU kernel picks for (x's dtype and channels, weight, stride): "winograd", "onednn" or
# "aten" (profiles report it; drn_kernels.ops.cpu_conv_algorithm).
torch.library.define("drn::cpu_conv_algorithm", "(Tensor x, Tensor weight, int[] stride) -> str")


# ---- autograd: every op is inference-only, and says so the same way ----------------------------------------------
# With grad mode on and an input that requires grad, every op's floating-point outputs require grad (integer
# outputs never do) and carry a backward that raises INFERENCE_ONLY; with no input requiring grad (or under
# no_grad / inference_mode) the outputs are plain tensors. One rule for every op (public and backend ops), so
# forward passes through a model built from trainable weights still run, and backward says what is wrong.
# The backward raises when it *runs*, not when it is traced (drn::inference_only_backward's fake kernel returns a
# gradient): eager and torch.compile behave alike — the forward runs, the backward raises the same error.

INFERENCE_ONLY = ("drn_kernels ops are inference-only: {op} has no backward. Compute gradients with the unfused "
                  "model (drn.build(..., fused=False)) or plain PyTorch ops")


@torch.library.custom_op("drn::inference_only_backward", mutates_args=())
def inference_only_backward(grad: Tensor, shape: list[int], dtype: torch.dtype, op: str) -> Tensor:
    """The gradient of one input of drn op `op`: never computed, raises INFERENCE_ONLY."""
    raise RuntimeError(INFERENCE_ONLY.format(op=op))


@inference_only_backward.register_fake
def _(grad, shape, dtype, op):
    return grad.new_empty(shape, dtype=dtype)


def register_inference_only(name: str) -> None:
    """Register the autograd rule above for torch.ops.drn.<name>."""
    op = f"drn::{name}"

    def setup_context(ctx, inputs, output):
        ctx.input_meta = [(list(t.shape), t.dtype) if isinstance(t, Tensor) else None for t in inputs]

    def backward(ctx, *grads):
        grad = next(g for g in grads if g is not None)
        return tuple(torch.ops.drn.inference_only_backward(grad, meta[0], meta[1], op) if needed else None
                     for meta, needed in zip(ctx.input_meta, ctx.needs_input_grad))

    torch.library.register_autograd(op, backward, setup_context=setup_context)


for _suffix in ("native", "sim"):
    for _op in ("conv_bn_act", "class_head", "localize"):
        register_inference_only(f"{_op}_{_suffix}")


# ---- output allocation shared by fake kernels (and usable by kernels) -----------------------------------------

def empty_conv_output(x: Tensor, weight: Tensor, stride, padding, dilation) -> Tensor:
    """(N, K, P, Q) in channels_last, dtype and device of x."""
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = _checks.conv_output_size(h, r, stride[0], padding[0], dilation[0])
    q = _checks.conv_output_size(w, s, stride[1], padding[1], dilation[1])
    return x.new_empty((n, p, q, k)).permute(0, 3, 1, 2)


def empty_class_head_output(x: Tensor, upsample: int, label_dtype: torch.dtype):
    n, _, h, w = x.shape
    shape = (n, h * upsample, w * upsample)
    return x.new_empty(shape, dtype=label_dtype), x.new_empty(shape, dtype=torch.float32)


def empty_localize_output(x: Tensor, weight: Tensor):
    n, _, h, w = x.shape
    k = weight.shape[0]
    return (x.new_empty((n, k)), x.new_empty((n, h, w), dtype=torch.int64),
            x.new_empty((n, h, w), dtype=torch.float32), x.new_empty((n, 4), dtype=torch.float32))


def _conv_fake(x, weight, bias, stride, padding, dilation, residual, relu, *rest):
    return empty_conv_output(x, weight, stride, padding, dilation)


def _head_fake(x, weight, bias, upsample, label_dtype, *rest):
    return empty_class_head_output(x, upsample, label_dtype)


def _loc_fake(x, weight, bias, threshold, stride, *rest):
    return empty_localize_output(x, weight)


for _suffix in ("native", "sim"):
    torch.library.register_fake(f"drn::conv_bn_act_{_suffix}")(_conv_fake)
    torch.library.register_fake(f"drn::class_head_{_suffix}")(_head_fake)
    torch.library.register_fake(f"drn::localize_{_suffix}")(_loc_fake)


# ---- public ops ---------------------------------------------------------------------------------------------

def _backend_op(name: str, backend: str):
    if backend in ("cpu", "cuda"):
        return getattr(torch.ops.drn, f"{name}_native")
    if backend == "cuda-sim":
        return getattr(torch.ops.drn, f"{name}_sim")
    if backend == "triton":
        _backends.load_triton_op(name if name != "localize" else "class_head")
        return getattr(torch.ops.drn, f"{name}_triton")
    raise ValueError(f"no backend op for {backend!r}")


def _concrete(backend: str, x: Tensor, op: str) -> str:
    if backend == "auto":
        raise ValueError(f"torch.ops.drn.{op} takes a concrete backend; use drn_kernels.{op} for 'auto'")
    return _backends.resolve(backend, x.device, op)


@torch.library.custom_op("drn::conv_bn_act", mutates_args=())
def conv_bn_act_op(x: Tensor, weight: Tensor, bias: Tensor, stride: list[int], padding: list[int],
                   dilation: list[int], residual: Optional[Tensor], relu: bool, backend: str) -> Tensor:
    backend = _concrete(backend, x, "conv_bn_act")
    _checks.check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)
    if x.shape[0] == 0:
        return empty_conv_output(x, weight, stride, padding, dilation)
    if backend == "reference":
        return reference.conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu)
    return _backend_op("conv_bn_act", backend)(x, weight, bias, stride, padding, dilation, residual, relu)


@conv_bn_act_op.register_fake
def _(x, weight, bias, stride, padding, dilation, residual, relu, backend):
    return empty_conv_output(x, weight, stride, padding, dilation)


@torch.library.custom_op("drn::class_head", mutates_args=())
def class_head_op(x: Tensor, weight: Tensor, bias: Tensor, upsample: int, label_dtype: torch.dtype,
                  backend: str) -> tuple[Tensor, Tensor]:
    backend = _concrete(backend, x, "class_head")
    _checks.check_class_head(x, weight, bias, upsample, label_dtype, backend)
    if x.shape[0] == 0:
        return empty_class_head_output(x, upsample, label_dtype)
    if backend == "reference":
        labels, probs = reference.class_head(x, weight.view(weight.shape[0], -1, 1, 1), bias, upsample, label_dtype)
        return labels, probs.float()
    return _backend_op("class_head", backend)(x, weight, bias, upsample, label_dtype)


@class_head_op.register_fake
def _(x, weight, bias, upsample, label_dtype, backend):
    return empty_class_head_output(x, upsample, label_dtype)


@torch.library.custom_op("drn::localize", mutates_args=())
def localize_op(x: Tensor, weight: Tensor, bias: Tensor, threshold: float, stride: int,
                backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    backend = _concrete(backend, x, "localize")
    _checks.check_localize(x, weight, bias, threshold, stride, backend)
    if x.shape[0] == 0:
        logits, labels, scores, boxes = empty_localize_output(x, weight)
        return logits, labels, scores, boxes
    if backend == "reference":
        logits, labels, scores, boxes = reference.localize(x, weight.view(weight.shape[0], -1, 1, 1), bias,
                                                           threshold, stride)
        return logits, labels, scores.float(), boxes
    return _backend_op("localize", backend)(x, weight, bias, threshold, stride)


@localize_op.register_fake
def _(x, weight, bias, threshold, stride, backend):
    return empty_localize_output(x, weight)


for _op in ("conv_bn_act", "class_head", "localize"):
    register_inference_only(_op)
