"""What many test files share: skipping (or failing) on a backend that is not built, and the cpu backend's settings
changed for one test. tests/conftest.py holds only fixtures and hooks; test files import from here."""
from __future__ import annotations

import pytest

# Set by conftest from the --require-build option (`make test` gives it): a compiled backend that did not build
# (the CPU extension, the CUDA kernels on a GPU machine, the SIMT simulator, the ThreadSanitizer race check) FAILS
# its tests instead of skipping them, so a broken build cannot pass as a green run.
require_build = False
COMPILED_BACKENDS = ("cpu", "cuda", "cuda-sim")


def skip_or_fail_unbuilt(what: str, reason: str):
    """Skip (plain pytest) or fail (--require-build) because `what` could not be built or loaded."""
    message = f"{what} unavailable: {reason}"
    if require_build:
        pytest.fail(f"{message} (--require-build: a build failure fails the run)", pytrace=False)
    pytest.skip(message)


def backend_marks(backend: str) -> list:
    """The tier marks of a test of drn_kernels' `backend`: build for a compiled one (and gpu for "cuda"), none
    for "triton" and "reference" (the module's unit applies; Triton runs in the interpreter without a GPU)."""
    if backend not in COMPILED_BACKENDS:
        return []
    return [pytest.mark.build, pytest.mark.gpu] if backend == "cuda" else [pytest.mark.build]


def backend_params(*backends: str) -> list:
    """Parameters for @pytest.mark.parametrize("backend", ...): each name, with its backend_marks."""
    return [pytest.param(b, marks=backend_marks(b), id=b) for b in backends]


def require_backend(backend: str, device="cpu"):
    """Skip unless drn_kernels' `backend` runs on `device` now; a compiled backend that did not build fails
    under --require-build. Asks about `backend` alone: a unit test that needs "triton" or "reference" must not
    load (or build) the compiled ones."""
    import torch

    import drn_kernels

    reason = drn_kernels.why_unavailable(backend, torch.device(device))
    if reason is None:
        return
    if backend in COMPILED_BACKENDS:
        skip_or_fail_unbuilt(f"backend {backend!r}", reason)
    pytest.skip(f"backend {backend!r} unavailable: {reason}")


def extension_tried() -> bool:
    """Whether this process has tried to load (and so maybe built) drn_kernels' compiled extension, the SIMT
    simulator or the test library: conftest's check that a unit test compiles nothing."""
    import sys

    extension, sim, testing = (sys.modules.get(f"drn_kernels._build.{name}") for name in ("extension", "sim", "testing"))
    return (bool(extension and extension._tried) or bool(sim and (sim._loaded or sim._error is not None))
            or bool(testing and testing._module is not None))


CPU_SETTINGS = ("DRN_CPU_CONV", "DRN_WINOGRAD_TILE", "DRN_CPU_ISA", "DRN_CPU_PREFETCH")


class CpuSettings:
    """The cpu backend's settings changed for one test (the `cpu_settings` fixture). The C++ kernels never read the
    environment: every change here is passed on to the loaded extension at once (drn_kernels.push_cpu_options, as
    the extension's load does in a fresh process; a bad value raises ValueError there, naming the variable), and
    undone and passed on again when the test ends."""

    def __init__(self, monkeypatch):
        self._monkeypatch = monkeypatch

    def set(self, name: str, value: str):
        """Set the cpu setting `name` (one of CPU_SETTINGS) to `value` for this test."""
        self._monkeypatch.setenv(self._checked(name), value)
        self._push()

    def unset(self, name: str):
        """The cpu setting `name` back to its default for this test."""
        self._monkeypatch.delenv(self._checked(name), raising=False)
        self._push()

    def poison(self):
        """Fill the Winograd output with NaN before the kernel writes it, so an unwritten element shows (a test
        hook of drn_kernels.settings, not an environment setting)."""
        from drn_kernels import settings

        self._monkeypatch.setattr(settings, "_poison_outputs", True)
        self._push()

    @staticmethod
    def _checked(name: str) -> str:
        if name not in CPU_SETTINGS:
            raise KeyError(f"{name} is not a cpu setting ({', '.join(CPU_SETTINGS)})")
        return name

    @staticmethod
    def _push():
        import drn_kernels

        drn_kernels.push_cpu_options()


@pytest.fixture
def cpu_settings(monkeypatch):
    """A CpuSettings for this test; at its end the settings are restored and passed on to the kernels again."""
    settings = CpuSettings(monkeypatch)
    yield settings
    monkeypatch.undo()
    settings._push()
