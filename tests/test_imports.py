"""No import circle among the modules of drn and drn_kernels (read with ast, nothing imported).

Module-level imports (run when the module is imported, in any order a user may trigger) must form no circle.
Imports inside functions run later, when the function is called, so a circle through one cannot break an
import; they must form none either (a circle there is a tangle of responsibilities, as the dispatch path was).
"""
from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("drn", "drn_kernels")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: pathlib.Path, name: str, modules, function_level: bool) -> set[str]:
    """The package modules `name` imports (at module level, or also inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = list(ast.walk(tree)) if function_level else [
        n for stmt in tree.body for n in ([stmt] + ([s for s in ast.walk(stmt) if isinstance(s, (ast.Import, ast.ImportFrom))]
                                                  if isinstance(stmt, (ast.If, ast.Try)) else []))]
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _circle(function_level: bool) -> list[str] | None:
    modules = _modules()
    graph = {m: _imports(p, m, modules, function_level) for m, p in modules.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_import_reader_sees_imports():
    modules = _modules()
    assert "drn.apps.commands" in _imports(modules["drn.apps.cli"], "drn.apps.cli", modules, False)
    assert "drn_kernels.settings" in _imports(modules["drn_kernels._build.extension"], "drn_kernels._build.extension",
                                              modules, False)


def test_no_module_level_import_circle():
    assert _circle(function_level=False) is None


def test_no_import_circle_even_inside_functions():
    circle = _circle(function_level=True)
    assert circle is None, " -> ".join(circle)


# drn by job, from the ground up: each job imports only its own and the jobs below it (at module level or inside
# functions). drn/__init__.py (the public names: drn.build joins the zoo and the fused assembly) stands between the
# fused assembly and its users; drn.profile and drn.evaluate are the entry points of python -m.
JOBS = ("drn.zoo", "drn.fused", "drn", "drn.tools", "drn.apps", "drn.demo", "drn.profile", "drn.evaluate")


def _job(module: str) -> str:
    return max((j for j in JOBS if module == j or module.startswith(j + ".")), key=len)


def test_drn_jobs_import_downward_only():
    """drn.zoo imports nothing else of drn, drn.fused only the zoo; the tools, the apps and the demo build on those;
    nothing imports the demo."""
    modules = _modules()
    assert {_job(m) for m in modules if m.split(".")[0] == "drn"} == set(JOBS)
    upward = {}
    for m, path in modules.items():
        if m.split(".")[0] != "drn":
            continue
        rank = JOBS.index(_job(m))
        bad = sorted(t for t in _imports(path, m, modules, function_level=True)
                     if t.split(".")[0] == "drn" and JOBS.index(_job(t)) > rank)
        if bad:
            upward[m] = bad
    assert not upward, upward


def _private_kernel_names(path: pathlib.Path) -> list[str]:
    """The private names of drn_kernels (a module or name starting with "_") that `path` imports or reads."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drn_kernels"):
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"{node.module}: {p}" for p in parts if p.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name.startswith("drn_kernels") and any(p.startswith("_") for p in a.name.split("."))]
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and isinstance(node.value, ast.Name)
              and node.value.id == "drn_kernels"):
            found.append(f"drn_kernels.{node.attr}")
    return found


def test_the_private_name_reader_sees_them(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import drn_kernels\nfrom drn_kernels import _backends\nfrom drn_kernels._checks import pair\n"
                   "drn_kernels._build.load()\n")
    assert len(_private_kernel_names(bad)) == 3


def test_drn_and_benchmarks_use_only_public_names_of_drn_kernels():
    """drn and benchmarks/ are drn_kernels' users: what they need has a public name (drn_kernels.__all__)."""
    used = {str(path.relative_to(ROOT)): names for folder in ("drn", "benchmarks")
            for path in (ROOT / folder).rglob("*.py") if (names := _private_kernel_names(path))}
    assert not used, used


def test_build_machinery_imports_nothing_of_the_op_core():
    """drn_kernels._build (building and loading the compiled libraries) is below the op core: the op core imports
    it to load a library; it imports nothing of drn_kernels but drn_kernels.settings (and itself)."""
    modules = _modules()
    upward = {m: sorted(t for t in _imports(p, m, modules, function_level=True)
                        if not t.startswith("drn_kernels._build") and t != "drn_kernels.settings")
              for m, p in modules.items() if m.startswith("drn_kernels._build")}
    assert len(upward) >= 6 and not any(upward.values()), upward
