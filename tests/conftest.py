"""Test set-up: without a GPU, Triton kernels run in the interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton (and so drn_kernels.triton) is imported.
The `monkeypatch` fixture passes a changed DRN_CPU_* / DRN_WINOGRAD_TILE setting on to the loaded C++ kernels (as
the extension's load does in a fresh process): the kernels never read the environment themselves.
"""
import os
import tempfile

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a set-up error reported elsewhere
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The cpu backend's algorithm-choice cache (drn_kernels.cpu_choices) in a folder of this test session: no test sees
# choices measured by an earlier run or by another machine's build; subprocesses of the session share it.
os.environ.setdefault("DRN_CHOICE_CACHE", tempfile.mkdtemp(prefix="drn-choice-cache-"))

HAS_CUDA = _has_cuda()

from drn_kernels import settings  # noqa: E402  (after TRITON_INTERPRET is decided)


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
REQUIRE_BUILD = settings.flag("DRN_REQUIRE_BUILD")
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


CPU_SETTINGS = ("DRN_CPU_CONV", "DRN_WINOGRAD_TILE", "DRN_CPU_ISA", "DRN_CPU_POISON", "DRN_CPU_PREFETCH")


@pytest.fixture
def monkeypatch(monkeypatch):
    """pytest's monkeypatch; setenv/delenv of a cpu setting also calls drn_kernels.push_cpu_options()
    (a bad value raises ValueError there, naming the variable), and so does the undo at the end of the test."""
    from drn_kernels._build import extension as _extension

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
