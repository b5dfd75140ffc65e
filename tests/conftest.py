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
