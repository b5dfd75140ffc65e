"""drn_kernels.settings: the one table of DRN_* environment variables (README's "Settings" section)."""
from __future__ import annotations

import pathlib
import re

import pytest

from drn_kernels import settings
from helpers import require_backend

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = [p for pattern in ("drn_kernels/**/*.py", "drn/**/*.py", "benchmarks/**/*.py", "tests/**/*.py", "csrc/**/*",
                             "setup.py", "Makefile", "hubconf.py", "README.md", "docs/**/*.md")
           for p in ROOT.glob(pattern) if p.is_file() and p.suffix not in (".png", ".pth", ".so", ".o")]
NAME = re.compile(r"\bDRN_[A-Z0-9_]*[A-Z0-9]\b")


def _names_in_sources() -> dict[str, str]:
    found = {}
    for path in SOURCES:
        for name in NAME.findall(path.read_text(errors="replace")):
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_every_drn_name_is_in_the_table():
    found = _names_in_sources()
    assert "DRN_CPU_CONV" in found and "DRN_WITH_CUDA" in found  # the grep sees Python and C++ sources
    unknown = {n: f for n, f in found.items() if n not in settings.TABLE and n not in settings.NOT_SETTINGS
               and not re.fullmatch(r"DRN_[A-D](_\d+\w*)?", n)}  # model names in tables (DRN_A_50, ...)
    assert not unknown, f"DRN_ names that are neither settings nor C++ macros: {unknown}"


def test_the_environment_is_read_only_by_settings():
    """No other source reads a DRN_* variable (os.environ / getenv): settings.py is the one place."""
    read = re.compile(r"(environ\.get\(|environ\[|getenv\()\s*['\"]DRN_")
    readers = [str(p.relative_to(ROOT)) for p in SOURCES
               if p.suffix in (".py", ".cpp", ".h", ".cu", ".cuh") and "tests" not in p.parts
               and p.name != "settings.py" and read.search(p.read_text(errors="replace"))]
    assert readers == []


def test_the_docs_tables_are_the_table():
    """README.md holds the user settings' table, docs/settings.md both tables (settings.markdown_table makes them;
    `python -m drn_kernels.settings` prints them): every setting documented once per page, from settings.TABLE."""
    readme = (ROOT / "README.md").read_text()
    page = (ROOT / "docs" / "settings.md").read_text()
    assert settings.markdown_table(user=True) in readme and settings.markdown_table(user=True) in page
    assert settings.markdown_table(user=False) in page
    for name, s in settings.TABLE.items():
        assert page.count(f"| `{name}` |") == 1
        assert readme.count(f"| `{name}` |") == (1 if s.user else 0)


@pytest.mark.parametrize("name, bad", [("DRN_FORCE_CPU", "maybe"), ("DRN_CPU_CONV", "fast"),
                                       ("DRN_WINOGRAD_TILE", "3"), ("DRN_CPU_ISA", "neon"),
                                       ("DRN_CPU_PREFETCH", "l3"),
                                       ("DRN_WEIGHTS_MIRROR", "ftp://mirror"),
                                       ("DRN_WEIGHTS_MIRROR", "mirror.example.org")])
def test_bad_values_raise_naming_the_variable(monkeypatch, name, bad):
    monkeypatch.setenv(name, bad)
    with pytest.raises(ValueError, match=name) as err:
        settings.value(name)
    if settings.TABLE[name].kind == "choice":
        assert all(c in str(err.value) for c in settings.TABLE[name].choices)


def test_one_truthy_rule(monkeypatch):
    for raw, want in [("1", True), ("yes", True), ("ON", True), (" true ", True), ("", False), ("0", False),
                      ("off", False), ("No", False)]:
        monkeypatch.setenv("DRN_NO_JIT_BUILD", raw)
        assert settings.flag("DRN_NO_JIT_BUILD") is want, raw
    monkeypatch.delenv("DRN_NO_JIT_BUILD")
    assert settings.flag("DRN_NO_JIT_BUILD") is False


@pytest.fixture
def build_settings(monkeypatch):
    """The build settings unset, and each deprecated flag's warning not yet given in this process."""
    for name in ("DRN_BUILD_CUDA", *settings.DEPRECATED_BUILD_FLAGS):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings, "_warned", set())
    return monkeypatch


def test_one_build_setting(build_settings):
    assert settings.build_cuda() == "auto"
    for raw, want in [("auto", "auto"), ("0", "0"), ("1", "1"), (" AUTO ", "auto")]:
        build_settings.setenv("DRN_BUILD_CUDA", raw)
        assert settings.build_cuda() == want == settings.value("DRN_BUILD_CUDA")
    for bad in ("yes", "2", "cuda"):
        build_settings.setenv("DRN_BUILD_CUDA", bad)
        with pytest.raises(ValueError, match="DRN_BUILD_CUDA must be one of auto, 0, 1"):
            settings.build_cuda()


@pytest.mark.parametrize("old, new", [("DRN_FORCE_CPU", "0"), ("DRN_FORCE_CUDA", "1")])
def test_the_old_build_flags_still_work_with_one_warning(build_settings, old, new):
    """DRN_FORCE_CPU=1 reads as DRN_BUILD_CUDA=0 (over DRN_BUILD_CUDA, as it always won), DRN_FORCE_CUDA=1 as 1:
    one DeprecationWarning per process naming the new setting; set to 0 they ask for nothing."""
    build_settings.setenv(old, "1")
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*DRN_BUILD_CUDA={new}") as caught:
        assert settings.build_cuda() == new
        assert settings.build_cuda() == new
    assert len(caught) == 1
    build_settings.setenv(old, "0")
    assert settings.build_cuda() == "auto"
    build_settings.setenv(old, "maybe")
    with pytest.raises(ValueError, match=old):
        settings.build_cuda()


def test_contradicting_build_flags_raise_naming_both(build_settings):
    build_settings.setenv("DRN_FORCE_CPU", "1")
    build_settings.setenv("DRN_BUILD_CUDA", "1")
    with pytest.warns(DeprecationWarning):
        assert settings.build_cuda() == "0"  # DRN_FORCE_CPU=1 won over DRN_BUILD_CUDA=1 before, and still does
    build_settings.setenv("DRN_FORCE_CUDA", "1")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="DRN_FORCE_CPU=1 and DRN_FORCE_CUDA=1"):
        settings.build_cuda()
    build_settings.delenv("DRN_FORCE_CPU")
    build_settings.setenv("DRN_BUILD_CUDA", "0")
    with pytest.raises(ValueError, match="DRN_FORCE_CUDA=1 and DRN_BUILD_CUDA=0"):
        settings.build_cuda()


def test_cpu_options_defaults_and_codes(cpu_settings):
    for name in ("DRN_CPU_CONV", "DRN_WINOGRAD_TILE", "DRN_CPU_ISA", "DRN_CPU_PREFETCH"):
        cpu_settings.unset(name)
    assert settings.cpu_options() == ("auto", 4, "best", False, "auto")
    assert settings.cpu_options().codes() == (0, 4, -1, False, 0)
    cpu_settings.set("DRN_CPU_CONV", "ATEN")
    cpu_settings.set("DRN_CPU_ISA", "avx2")
    cpu_settings.set("DRN_CPU_PREFETCH", "l2")
    assert settings.cpu_options().codes() == (3, 4, 1, False, 2)
    cpu_settings.poison()
    assert settings.cpu_options().poison and settings.cpu_options().codes()[3] is True


@pytest.mark.build
def test_the_kernels_take_the_pushed_options(cpu_settings):
    """DRN_CPU_CONV reaches the C++ kernels through push_cpu_options (the cpu_settings fixture calls it)."""
    import torch

    from drn_kernels.ops import cpu_conv_algorithm

    require_backend("cpu")
    x, w = torch.randn(1, 64, 5, 5), torch.randn(64, 64, 3, 3)
    for mode, path in [("", "winograd"), ("direct", "onednn"), ("aten", "aten"), ("winograd", "winograd")]:
        cpu_settings.set("DRN_CPU_CONV", mode)
        if path == "onednn" and not torch.backends.mkldnn.is_available():
            path = "aten"
        assert cpu_conv_algorithm(x, w) == path, mode
