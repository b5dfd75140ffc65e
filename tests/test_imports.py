"""No import circle among the modules of drn and drn_kernels (read with ast, nothing imported).

Module-level imports (run when the module is imported, in any order a user may trigger) must form no circle.
Imports inside functions run later, when the function is called, so a circle through one cannot break an
import; they are checked separately: the one circle left among them is item 1 of issue 13 (the dispatch path:
_backends -> _extension -> _library -> _backends), marked xfail until that is untangled.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

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
    assert "drn.commands" in _imports(modules["drn.cli"], "drn.cli", modules, False)
    assert "drn_kernels.settings" in _imports(modules["drn_kernels._extension"], "drn_kernels._extension", modules,
                                              False)


def test_no_module_level_import_circle():
    assert _circle(function_level=False) is None


@pytest.mark.xfail(reason="issue 13 item 1: drn_kernels._backends -> _extension -> _library -> _backends "
                          "(imports inside functions)", strict=True)
def test_no_import_circle_even_inside_functions():
    circle = _circle(function_level=True)
    assert circle is None, " -> ".join(circle)
