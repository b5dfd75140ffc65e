"""Test set-up: fixtures, options and hooks only (what test files share is in tests/helpers.py).

Without a GPU, Triton kernels run in the interpreter on CPU tensors: TRITON_INTERPRET must be set before triton
(and so drn_kernels.triton) is imported.

Tiers (markers, pyproject.toml): every test is `unit` (needs no compiled extension: Python, the reference, the
Triton interpreter) or `build` (needs drn_kernels' compiled extension, the SIMT simulator or a build; a test's
`build` outranks its module's `unit`), and may also be `slow` (> ~20 s on 2 cores) or `gpu` (needs a CUDA device;
skipped without one). `make test-fast` runs `-m "unit and not build and not slow"` and compiles nothing: a unit
test that loads the extension fails, naming its tier.

Options: --require-build (`make test` gives it): a compiled backend that did not build fails its tests instead of
skipping them. --pip-install: also run the test that builds a wheel with pip (needs the package index).
"""
import os
import tempfile

import pytest

import helpers
from helpers import cpu_settings  # noqa: F401  (the fixture, defined beside the class it yields)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a set-up error reported elsewhere
        return False


HAS_CUDA = _has_cuda()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The cpu backend's algorithm-choice cache (drn_kernels.cpu_choices) in a folder of this test session: no test sees
# choices measured by an earlier run or by another machine's build; subprocesses of the session share it.
os.environ.setdefault("DRN_CHOICE_CACHE", tempfile.mkdtemp(prefix="drn-choice-cache-"))

# whether the compiled extension had been tried before a test's set-up (its fixtures may load it too)
_TRIED_BEFORE = pytest.StashKey[bool]()


def _tier(item) -> str | None:
    if item.get_closest_marker("build") is not None:
        return "build"
    return "unit" if item.get_closest_marker("unit") is not None else None


def pytest_addoption(parser):
    parser.addoption("--require-build", action="store_true",
                     help="a compiled backend (CPU extension, CUDA kernels on a GPU machine, SIMT simulator, race "
                          "check) that does not build fails its tests instead of skipping them (make test)")
    parser.addoption("--pip-install", action="store_true",
                     help="also run the test that builds a wheel with pip (needs the package index)")


def pytest_configure(config):
    helpers.require_build = config.getoption("--require-build")


def pytest_collection_modifyitems(config, items):
    """Every test here names its tier (unit or build); gpu tests are skipped without a CUDA device."""
    here = os.path.dirname(os.path.abspath(__file__))
    untiered = [item.nodeid for item in items if str(item.path).startswith(here) and _tier(item) is None]
    if untiered:
        raise pytest.UsageError("every test in tests/ needs a tier marker (unit or build; see tests/conftest.py): "
                                + ", ".join(untiered[:10]) + (" ..." if len(untiered) > 10 else ""))
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_pip = pytest.mark.skip(reason="give --pip-install to run it (needs the package index)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "pip_install" in item.keywords and not config.getoption("--pip-install"):
            item.add_marker(skip_pip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_TRIED_BEFORE] = helpers.extension_tried()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A unit test must not load the compiled extension: when this process had not tried to load it before the
    test's set-up and has after its call, the test fails (its tier is build)."""
    result = yield
    if _tier(item) == "unit" and not item.stash[_TRIED_BEFORE] and helpers.extension_tried():
        pytest.fail(f"{item.nodeid} is marked unit but loaded the compiled extension: mark it build",
                    pytrace=False)
    return result
