"""Every op of the `drn` namespace: its schema, its fake kernel, its autograd rule — and nothing that runs it.

A leaf module: it imports torch and the package's leaf helpers (_checks, settings) only. Whoever has a kernel
registers it against these schemas:
    drn::conv_bn_act, drn::class_head, drn::localize (..., str backend)
                      the public ops: drn_kernels.ops registers their kernel, the one dispatch path
    drn::*_reference  the "reference" backend: drn_kernels.ops registers drn_kernels.reference's math
    drn::*_native     the "cpu" and "cuda" backends: drn_kernels._C (csrc/), CPU and CUDA dispatch keys
    drn::*_sim        the "cuda-sim" backend: the host (SIMT shim) build of the CUDA sources (drn_kernels._build.sim)
    drn::cpu_*        what the cpu backend offers and runs on this CPU (csrc/cpu): ISA, tiles, algorithm, FMA peak
    drn::*_triton     the "triton" backend: defined by drn_kernels/triton/ (a torch.library.triton_op makes its own
                      schema from the Python signature), with the output allocation and autograd rule below
So the schemas exist, with fake kernels, even where the compiled extension is missing, and loading a kernel
never imports the dispatch path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import settings
from ._checks import conv_output_size

OPS = ("conv_bn_act", "class_head", "localize")
_CONV_ARGS = ("Tensor x, Tensor weight, Tensor bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, "
              "Tensor? residual, bool relu")
_HEAD_ARGS = "Tensor x, Tensor weight, Tensor bias, int upsample, ScalarType label_dtype"
_LOC_ARGS = "Tensor x, Tensor weight, Tensor bias, float threshold, int stride"
_RESULTS = {"conv_bn_act": "Tensor", "class_head": "(Tensor, Tensor)", "localize": "(Tensor, Tensor, Tensor, Tensor)"}
_ARGS = {"conv_bn_act": _CONV_ARGS, "class_head": _HEAD_ARGS, "localize": _LOC_ARGS}
BACKEND_OP_FAMILIES = ("native", "sim", "reference")  # drn::<op>_<family> defined here ("triton": in triton/)

for _op in OPS:
    torch.library.define(f"drn::{_op}", f"({_ARGS[_op]}, str backend) -> {_RESULTS[_op]}")
    for _family in BACKEND_OP_FAMILIES:
        torch.library.define(f"drn::{_op}_{_family}", f"({_ARGS[_op]}) -> {_RESULTS[_op]}")


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
# or oneDNN's blocked copy (drn::onednn_weight) — used where the path taken can use it.
torch.library.define("drn::conv_bn_act_prepared_native",
                     "(Tensor x, Tensor weight, Tensor bias, Tensor prepared, SymInt[] stride, SymInt[] padding, "
                     "SymInt[] dilation, Tensor? residual, bool relu) -> Tensor")
torch.library.define("drn::winograd_weight", "(Tensor weight, int tile=0) -> Tensor")  # tile 2|4, 0: setting


@torch.library.register_fake("drn::conv_bn_act_prepared_native")
def _(x, weight, bias, prepared, stride, padding, dilation, residual, relu):
    return empty_conv_output(x, weight, stride, padding, dilation)


@torch.library.register_fake("drn::winograd_weight")
def _(weight, tile=0):
    # packed for csrc/cpu/gemm/ (pack.cpp): panels of 32 output channels; for the bfloat16 GEMM (a bfloat16 weight on a CPU
    # with AVX512-BF16: drn::cpu_bf16_gemm) in pairs of input channels, F(2x2) only; else float32
    panels, c = -(-weight.shape[0] // 32), weight.shape[1]
    if weight.dtype == torch.bfloat16 and torch.ops.drn.cpu_bf16_gemm():  # as winograd/winograd.cpp
        if tile == 4:
            raise ValueError("winograd_weight: tile 4 is not offered in bfloat16 on this CPU; use tile 2")
        return weight.new_empty((16, panels, -(-c // 2), 32, 2))
    alpha = (tile or settings.cpu_options().winograd_tile) + 2
    return weight.new_empty((alpha * alpha, panels, c, 32), dtype=torch.float32)


# oneDNN's blocked copy of a conv weight for (padding, stride, dilation, input size), in the dtype oneDNN computes
# the weight's dtype in on this CPU (float32 for bfloat16/float16 where oneDNN has no kernels of that dtype): the
# `prepared` form of conv_bn_act_prepared_native's oneDNN path. Eager only (an MKLDNN-layout tensor).
torch.library.define("drn::onednn_weight",
                     "(Tensor weight, int[] padding, int[] stride, int[] dilation, int[] input_size) -> Tensor")

# Which algorithm the CPU kernel picks for (x's dtype and channels, weight, stride): "winograd", "onednn" or
# "aten" (profiles report it; drn_kernels.ops.cpu_conv_algorithm).
torch.library.define("drn::cpu_conv_algorithm", "(Tensor x, Tensor weight, int[] stride) -> str")
# The Winograd tile sides (4: F(4x4,3x3), 2: F(2x2,3x3)) the CPU kernel offers for this call, per DRN_CPU_CONV and
# dtype: the algorithm search's candidates (drn_kernels.prepared).
torch.library.define("drn::cpu_winograd_tiles", "(Tensor x, Tensor weight, int[] stride) -> int[]")

# What this CPU runs (csrc/cpu): the ISA of the cpu backend's own kernels ("avx512", "avx2", "baseline": the CPU's
# best, capped by DRN_CPU_ISA); whether bfloat16 Winograd computes in bfloat16 (AVX512-BF16) rather than float32;
# the float32 FMA peak in FLOP/s on torch's threads (isa 2: AVX-512, 1: AVX2, -1: the best; drn.tools.flops' roofline).
torch.library.define("drn::cpu_isa", "() -> str")
torch.library.define("drn::cpu_bf16_gemm", "() -> bool")
torch.library.define("drn::cpu_fma_peak", "(int isa=-1, int iters=1000000) -> float")


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


# ---- output allocation: the fake kernels, and the kernels that allocate in Python (triton/) ----------------------

def empty_conv_output(x: Tensor, weight: Tensor, stride, padding, dilation) -> Tensor:
    """(N, K, P, Q) in channels_last, dtype and device of x."""
    n, _, h, w = x.shape
    k, _, r, s = weight.shape
    p = conv_output_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_output_size(w, s, stride[1], padding[1], dilation[1])
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


def _conv_fake(x, weight, bias, stride, padding, dilation, residual, relu, *backend):
    return empty_conv_output(x, weight, stride, padding, dilation)


def _head_fake(x, weight, bias, upsample, label_dtype, *backend):
    return empty_class_head_output(x, upsample, label_dtype)


def _loc_fake(x, weight, bias, threshold, stride, *backend):
    return empty_localize_output(x, weight)


FAKES = {"conv_bn_act": _conv_fake, "class_head": _head_fake, "localize": _loc_fake}

for _op in OPS:
    for _name in (_op, *(f"{_op}_{family}" for family in BACKEND_OP_FAMILIES)):
        torch.library.register_fake(f"drn::{_name}")(FAKES[_op])
        register_inference_only(_name)
