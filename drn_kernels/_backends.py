"""Backend names, availability and the "auto" choice.

A backend is available when the code behind it can run on the given device *now*:
- "triton": triton imports, and the tensor is CUDA, or CPU with TRITON_INTERPRET=1 set before import.
- "cpu" / "cuda": the compiled extension drn_kernels._C loaded with kernels for that device.
- "cuda-sim": the CUDA kernel sources built for the host through csrc/sim (tests only, slow).
- "reference": always.

This module only answers "which backend"; drn_kernels.ops calls resolve() once per op call and runs the answer.
Under torch.compile: whether triton is installed is decided once, at import; the backend choice (which may load or
even build the extension, under a lock, and import the Triton op module) is marked
torch.compiler.assume_constant_result, so dynamo runs it eagerly and traces only its answer. That keeps
torch.compile(fullgraph=True) working when it is a process's first use of the ops.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings

import torch

BACKENDS = ("auto", "triton", "cuda", "cpu", "cuda-sim", "reference")

_warned_fallback: set[str] = set()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None  # once: find_spec cannot be traced


def triton_importable() -> bool:
    return _TRITON_IMPORTABLE


@torch.compiler.assume_constant_result
def why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on `device`, else a sentence saying what is missing."""
    from ._build import extension as _extension

    if backend == "reference":
        return None
    if backend == "triton":
        if not triton_importable():
            return "the triton package is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreting():
            return None
        return (f"triton kernels run on CUDA tensors, or on CPU tensors only when TRITON_INTERPRET=1 is set "
                f"before drn_kernels is imported (got a {device.type} tensor)")
    if backend == "cpu":
        if device.type != "cpu":
            return f"backend 'cpu' needs CPU tensors, got {device.type}"
        return _extension.why_unavailable("cpu")
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend 'cuda' needs CUDA tensors, got {device.type}"
        return _extension.why_unavailable("cuda")
    if backend == "cuda-sim":
        if device.type != "cpu":
            return f"backend 'cuda-sim' runs CUDA kernel sources on CPU tensors, got {device.type}"
        from ._build import sim as _sim

        return _sim.why_unavailable()
    check_backend(backend)
    raise ValueError(f"no availability rule for backend {backend!r}")


def check_backend(backend) -> str:
    """`backend` when it names a backend (BACKENDS), else ValueError: the one check of a backend name."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@torch.compiler.assume_constant_result
def resolve(backend: str, device: torch.device, op: str) -> str:
    """The concrete backend that runs drn_kernels.<op> for `backend` on `device` ("auto": the first available of
    triton, cuda on CUDA tensors, cpu on CPU tensors, else the reference with one warning); raises naming what is
    missing. Choosing "triton" imports the op's Triton module (TRITON_MODULES), which registers its op."""
    check_backend(backend)
    if backend != "auto":
        reason = why_unavailable(backend, device)
        if reason is not None:
            raise RuntimeError(f"drn_kernels.{op}: backend {backend!r} is not available: {reason}")
        if backend == "triton":
            _import_triton_op(op)
        return backend
    preferred = ("triton", "cuda") if device.type == "cuda" else ("cpu",)
    reasons = []
    for name in preferred:
        reason = why_unavailable(name, device)
        if reason is None:
            if name == "triton":
                _import_triton_op(op)
            return name
        reasons.append(f"{name}: {reason}")
    key = f"{device.type}"
    if key not in _warned_fallback:
        _warned_fallback.add(key)
        warnings.warn(f"drn_kernels: no kernel backend for {device.type} tensors ({'; '.join(reasons)}); "
                      f"falling back to the PyTorch reference", RuntimeWarning,
                      stacklevel=4)  # the caller of drn_kernels.<op> (through ops._backend_for)
    return "reference"


# op -> the module of drn_kernels/triton/ that registers its drn::<op>_triton
TRITON_MODULES = {"conv_bn_act": "conv_bn_act", "class_head": "class_head", "localize": "class_head"}


_TRITON_IMPORTED: set[str] = set()


def _import_triton_op(op: str):
    """Import the module that registers torch.ops.drn.<op>_triton (once: resolve() runs on every op call). Called
    by resolve() only, which runs eagerly even under torch.compile (assume_constant_result; dynamo cannot trace
    importlib)."""
    if op not in _TRITON_IMPORTED:
        importlib.import_module(f"drn_kernels.triton.{TRITON_MODULES[op]}")
        _TRITON_IMPORTED.add(op)
