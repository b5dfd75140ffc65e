"""Test set-up: without a GPU, Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton (and so drn_kernels.triton) is imported.
"""
import os

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a set-up error reported elsewhere
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = _has_cuda()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# `make test` sets DRN_REQUIRE_BUILD=1: there a compiled backend that did not build (the CPU extension, the CUDA
# kernels on a GPU machine, the SIMT simulator, the ThreadSanitizer race check) FAILS its tests instead of skipping
# them, so a broken build cannot pass as a green run. Plain pytest elsewhere skips with the reason.
REQUIRE_BUILD = os.environ.get("DRN_REQUIRE_BUILD") == "1"
COMPILED_BACKENDS = ("cpu", "cuda", "cuda-sim")


def skip_or_fail_unbuilt(what: str, reason: str):
    """Skip (plain pytest) or fail (DRN_REQUIRE_BUILD=1) because `what` could not be built or loaded."""
    message = f"{what} unavailable: {reason}"
    if REQUIRE_BUILD:
        pytest.fail(f"{message} (DRN_REQUIRE_BUILD=1: a build failure fails the run)", pytrace=False)
    pytest.skip(message)


def require_backend(backend: str, device="cpu"):
    """Skip unless drn_kernels' `backend` runs on `device` now; a compiled backend that did not build fails
    under DRN_REQUIRE_BUILD=1."""
    import drn_kernels

    reason = drn_kernels.available_backends(device)[backend]
    if reason is None:
        return
    if backend in COMPILED_BACKENDS:
        skip_or_fail_unbuilt(f"backend {backend!r}", reason)
    pytest.skip(f"backend {backend!r} unavailable: {reason}")
