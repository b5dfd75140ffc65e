"""Test set-up: without a GPU, Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton (and so drn_kernels.triton) is imported.
The `monkeypatch` fixture passes a changed DRN_CPU_* / DRN_WINOGRAD_TILE setting on to the loaded C++ kernels (as
the extension's load does in a fresh process): the kernels never read the environment themselves.
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


CPU_SETTINGS = ("DRN_CPU_CONV", "DRN_WINOGRAD_TILE", "DRN_CPU_ISA", "DRN_CPU_POISON")


@pytest.fixture
def monkeypatch(monkeypatch):
    """pytest's monkeypatch; setenv/delenv of a cpu setting also calls drn_kernels._extension.push_cpu_options()
    (a bad value raises ValueError there, naming the variable), and so does the undo at the end of the test."""
    from drn_kernels import _extension

    setenv, delenv = monkeypatch.setenv, monkeypatch.delenv

    def pushing_setenv(name, value, prepend=None):
        setenv(name, value, prepend)
        if name in CPU_SETTINGS:
            _extension.push_cpu_options()

    def pushing_delenv(name, raising=True):
        delenv(name, raising)
        if name in CPU_SETTINGS:
            _extension.push_cpu_options()

    monkeypatch.setenv, monkeypatch.delenv = pushing_setenv, pushing_delenv
    yield monkeypatch
    monkeypatch.undo()
    _extension.push_cpu_options()
