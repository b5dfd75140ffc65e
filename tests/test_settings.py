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
               and not re.fullmatch(r"DRN_[A-D]\w*|DRN_D_38_\w+", n)}  # model names in tables (DRN_A_50, ...)
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
        monkeypatch.setenv("DRN_BUILD_CUDA", raw)
        assert settings.flag("DRN_BUILD_CUDA") is want, raw
    monkeypatch.delenv("DRN_BUILD_CUDA")
    assert settings.flag("DRN_BUILD_CUDA") is False


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
