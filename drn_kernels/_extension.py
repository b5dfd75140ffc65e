"""Loading the compiled extension drn_kernels._C (and the host-simulated CUDA build for "cuda-sim").

Placeholder until csrc/ lands: the extension is reported as not built, so "auto" falls back to the
reference and the named native backends raise a clear error.
"""
from __future__ import annotations


def why_unavailable(kind: str) -> str | None:
    """None when the extension provides kernels of `kind` ("cpu", "cuda", "cuda-sim"), else the reason."""
    return f"the C++/CUDA extension drn_kernels._C is not built yet (no {kind} kernels)"
