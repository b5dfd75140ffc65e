"""Input checks for the public ops, in one place. Every message names the offending argument."""
from __future__ import annotations

import math
from typing import Sequence

import torch

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The kernels index pixel coordinates with int32: every padded size, dilated kernel extent, stride and box
# coordinate factor must stay at most this (csrc/input_checks.h guards the compiled ops with the same rule).
INDEX_LIMIT = 2**31 - 1
LABEL_DTYPES = {torch.int64: 2**63 - 1, torch.int32: 2**31 - 1, torch.int16: 2**15 - 1, torch.uint8: 255}


def pair(value, name: str) -> list[int]:
    """An int or a sequence of two ints, as a list of two Python ints."""
    if type(value) in (list, tuple) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return [value[0], value[1]]  # the common case, without the slower Sequence check below
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got bool")
    if isinstance(value, (int, torch.SymInt)):
        return [value, value]
    if isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in value):
        return [value[0], value[1]]
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _tensor(t, name: str, rank: int | tuple[int, ...]):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    ranks = (rank,) if isinstance(rank, int) else rank
    if t.dim() not in ranks:
        raise ValueError(f"{name} must have rank {' or '.join(map(str, ranks))}, got shape {tuple(t.shape)}")


def _float_dtype(t, name: str, backend: str):
    allowed = KERNEL_DTYPES + ((torch.float64,) if backend == "reference" else ())
    if t.dtype not in allowed:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in allowed]} for backend {backend!r}, "
                        f"got {t.dtype}")


def like(t, ref, name: str, ref_name: str):
    """t on ref's device with ref's dtype, else an error naming both."""
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")


def _check_backend_device(x, backend: str):
    if backend in ("cuda",) and x.device.type != "cuda":
        raise ValueError(f"backend {backend!r} needs CUDA tensors, but x is on {x.device}")
    if backend in ("cpu", "cuda-sim") and x.device.type != "cpu":
        raise ValueError(f"backend {backend!r} needs CPU tensors, but x is on {x.device}")


def _check_spatial(x):
    """torch.conv2d's rule, for every op: a non-empty batch needs a non-empty image (padding does not make one)."""
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have height and width >= 1, got shape {tuple(x.shape)}")


def _check_index_range(h: int, w: int, r: int, s: int, stride, padding, dilation):
    """Integer arguments the int32 pixel coordinates of the kernels can hold (INDEX_LIMIT)."""
    for name, value in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if max(value) > INDEX_LIMIT:
            raise ValueError(f"{name} must be at most 2**31-1, got {list(value)}")
    for axis, size, k in ((0, h, r), (1, w, s)):
        if size + 2 * padding[axis] > INDEX_LIMIT:
            raise ValueError(f"padding {list(padding)} makes x's padded size {size + 2 * padding[axis]} along "
                             f"axis {axis + 2} exceed 2**31-1")
        if dilation[axis] * (k - 1) + 1 > INDEX_LIMIT:
            raise ValueError(f"dilation {list(dilation)} makes the dilated kernel extent "
                             f"{dilation[axis] * (k - 1) + 1} along axis {axis + 2} exceed 2**31-1 (weight, dilation)")


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# Signatures of conv_bn_act calls that passed the checks -> their (N, K, P, Q). Every check below reads only what
# a signature holds (each tensor's type, rank, shape, dtype and device; the geometry, relu's type and value, the
# backend), so a call with a known signature passes without re-checking: a fused model's layers are checked
# once per input shape, not on every call. Bounded: cleared when full.
_PASSED: dict[tuple, tuple[int, int, int, int]] = {}
PASSED_LIMIT = 4096


def _tensor_signature(t):
    return (t.shape, t.dtype, t.device) if type(t) in (torch.Tensor, torch.nn.Parameter) else None


def _conv_signature(x, weight, bias, stride, padding, dilation, residual, relu, backend):
    """The call's signature, or None when part of it is not plain (a tensor subclass, a non-bool relu, symbolic
    sizes while tracing): such calls are checked in full every time."""
    if type(relu) is not bool or torch.compiler.is_compiling():
        return None
    tensors = tuple(_tensor_signature(t) for t in (x, weight, bias))
    res = None if residual is None else _tensor_signature(residual)
    if None in tensors or (residual is not None and res is None):
        return None
    return (tensors, res, tuple(stride), tuple(padding), tuple(dilation), relu, backend)


def check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend):
    """(N, K, P, Q) of a valid conv_bn_act call, else the exception naming the argument (each signature is
    checked once: _PASSED)."""
    key = _conv_signature(x, weight, bias, stride, padding, dilation, residual, relu, backend)
    if key is not None:
        known = _PASSED.get(key)
        if known is not None:
            return known
    out = _check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend)
    if key is not None:
        if len(_PASSED) >= PASSED_LIMIT:
            _PASSED.clear()
        _PASSED[key] = out
    return out


def _check_conv_bn_act(x, weight, bias, stride, padding, dilation, residual, relu, backend):
    _tensor(x, "x", 4)
    _tensor(weight, "weight", 4)
    _tensor(bias, "bias", 1)
    _float_dtype(x, "x", backend)
    like(weight, x, "weight", "x")
    like(bias, x, "bias", "x")
    _check_backend_device(x, backend)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    n, c, h, w = x.shape
    k, wc, r, s = weight.shape
    if c == 0:
        raise ValueError("x must have at least one channel, got C=0")
    if wc != c:
        raise ValueError(f"weight must have shape (K, C={c}, R, S) to match x (groups=1), got {tuple(weight.shape)}")
    if k == 0 or r == 0 or s == 0:
        raise ValueError(f"weight must have K, R, S >= 1, got shape {tuple(weight.shape)}")
    if bias.shape[0] != k:
        raise ValueError(f"bias must have shape ({k},) to match weight, got {tuple(bias.shape)}")
    if len(stride) != 2 or min(stride) <= 0:
        raise ValueError(f"stride must be positive, got {list(stride)}")
    if len(dilation) != 2 or min(dilation) <= 0:
        raise ValueError(f"dilation must be positive, got {list(dilation)}")
    if len(padding) != 2 or min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {list(padding)}")
    _check_spatial(x)
    _check_index_range(h, w, r, s, stride, padding, dilation)
    p = conv_output_size(h, r, stride[0], padding[0], dilation[0])
    q = conv_output_size(w, s, stride[1], padding[1], dilation[1])
    if p <= 0 or q <= 0:
        raise ValueError(
            f"empty kernel window: x of size {h}x{w} with padding {list(padding)} is smaller than the dilated "
            f"kernel extent {dilation[0] * (r - 1) + 1}x{dilation[1] * (s - 1) + 1} (weight, dilation)")
    if residual is not None:
        _tensor(residual, "residual", 4)
        like(residual, x, "residual", "x")
        if tuple(residual.shape) != (n, k, p, q):
            raise ValueError(f"residual must have the output's shape {(n, k, p, q)}, got {tuple(residual.shape)}")
    return n, k, p, q


def _check_head_weights(x, weight, bias, backend):
    _tensor(x, "x", 4)
    _float_dtype(x, "x", backend)
    _tensor(weight, "weight", (2, 4))
    _tensor(bias, "bias", 1)
    like(weight, x, "weight", "x")
    like(bias, x, "bias", "x")
    _check_backend_device(x, backend)
    _check_spatial(x)
    c = x.shape[1]
    k = weight.shape[0]
    if c == 0:
        raise ValueError("x must have at least one channel, got C=0")
    if k == 0:
        raise ValueError("weight must have at least one class (K >= 1), got K=0")
    if weight.shape[1] != c or (weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1)):
        raise ValueError(f"weight must have shape (K, C={c}, 1, 1) or (K, {c}), got {tuple(weight.shape)}")
    if bias.shape[0] != k:
        raise ValueError(f"bias must have shape ({k},) to match weight, got {tuple(bias.shape)}")
    return k


def check_class_head(x, weight, bias, upsample, label_dtype, backend):
    k = _check_head_weights(x, weight, bias, backend)
    if isinstance(upsample, bool) or upsample not in (1, 8):
        raise ValueError(f"upsample must be 1 or 8, got {upsample!r}")
    if label_dtype not in LABEL_DTYPES:
        raise TypeError(f"label_dtype must be one of {[str(d) for d in LABEL_DTYPES]}, got {label_dtype}")
    if k - 1 > LABEL_DTYPES[label_dtype]:
        raise ValueError(f"label_dtype {label_dtype} cannot hold class index {k - 1} (weight has K={k})")
    n, _, h, w = x.shape
    return (n, h * upsample, w * upsample)


def check_localize(x, weight, bias, threshold, stride, backend):
    k = _check_head_weights(x, weight, bias, backend)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride <= 0:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if stride > INDEX_LIMIT:
        raise ValueError(f"stride must be at most 2**31-1, got {stride}")
    return k
