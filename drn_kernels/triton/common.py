"""What the Triton op modules share: offset width, dot precision, autotune size classes, the interpreter's bf16.

Kept apart from the kernels so that class_head.py and conv_bn_act.py depend on this module, not on each other.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _backends

INT32_LIMIT = 2**31 - 1


def size_bucket(n: int) -> int:
    """n rounded up to a power of 2: the size class an autotune key holds (one tuning per factor of 2 in size)."""
    return 1 << max(0, int(n) - 1).bit_length()


# A test hook, not a setting: True selects the int64-offset kernels even for small tensors (read per call; the
# tests set it to run the int64 path on small inputs). Nothing in the package sets it.
_force_int64 = False


def force_int64() -> bool:
    return _force_int64


def max_offset(t: Tensor) -> int:
    """One past the largest element offset the tensor's strides can reach (its numel when dense)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * abs(st) for size, st in zip(t.shape, t.stride()))


def needs_int64(*tensors: Optional[Tensor]) -> bool:
    """Whether a kernel over these tensors must compute its offsets in int64 (USE_INT64): some tensor reaches past
    2**31-1 elements, or the tests' _force_int64 hook is on."""
    return force_int64() or any(t is not None and max_offset(t) > INT32_LIMIT for t in tensors)


# tl.dot's input_precision for fp32 inputs (16-bit inputs ignore it): two rules, for two kinds of kernel.

def precision_as_cudnn(dtype: torch.dtype) -> str:
    """The convolution's: fp32 runs on TF32 tensor cores exactly when cuDNN's convolutions would
    (torch.backends.cudnn.allow_tf32), else exact ("ieee")."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def precision_exact_fp32(dtype: torch.dtype) -> str:
    """The classifier heads': fp32 always exact ("ieee"), whatever the TF32 flags. The head is a tiny share of the
    FLOPs, and TF32 would flip labels whose top-2 margin is below ~1e-3."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot is numpy matmul, which has no bfloat16: feed it exact fp32 copies instead."""
    return dtype == torch.bfloat16 and _backends.triton_interpreting()
