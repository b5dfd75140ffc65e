"""Hand-written Triton kernels, one file per op; importing a module registers its torch.ops.drn.*_triton ops
(drn_kernels._backends.TRITON_MODULES says which module has which op; common.py holds what they share).

On a GPU each op is a torch.library.triton_op launching through wrap_triton, so torch.compile sees (and inductor
can inline) the kernel. Under TRITON_INTERPRET=1 the kernels are InterpretedFunctions, which fake tensors cannot
trace (and which torch 2.11's wrap_triton rejects outright); there the same Python function is registered as an
opaque torch.library.custom_op with an explicit fake kernel and launches the kernel directly, so
torch.compile(fullgraph=True) still works on CPU (the op is called, not inlined).
"""
from __future__ import annotations

import torch

from .._backends import triton_interpreting
from .._schemas import register_inference_only


def register_op(name: str, fake):
    """Decorator: register `fn` as torch.ops.<name> (triton_op on GPU, custom_op + `fake` under the interpreter),
    inference-only like every drn op (drn_kernels._schemas.register_inference_only)."""
    def decorate(fn):
        if triton_interpreting():
            op = torch.library.custom_op(name, mutates_args=())(fn)
            op.register_fake(fake)
        else:
            op = torch.library.triton_op(name, mutates_args=())(fn)
        register_inference_only(name.split("::", 1)[1])
        return op

    return decorate


def launcher(kernel):
    """What to index with the grid to launch `kernel` (a triton.jit or triton.autotune object) from a registered op:
    torch.library.wrap_triton(kernel) on a GPU (so torch.compile traces the launch); the kernel itself under
    TRITON_INTERPRET=1, where the op is opaque and wrap_triton adds nothing (and some torch versions reject it)."""
    if triton_interpreting():
        return kernel
    return torch.library.wrap_triton(kernel)
