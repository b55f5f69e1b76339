"""The runtime knows methods only through the registry: no module under runtime/ imports a method's module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from zofed.algorithms import ALGORITHMS

RUNTIME = Path(__file__).resolve().parents[2] / "src" / "zofed" / "runtime"


def method_modules() -> set[str]:
    """Every module a registered method is defined in (zofed.algorithms.zorba, ...), and its own helpers
    (zofed.algorithms.zorba_solver): modules of the package that no runtime may name."""
    defined = {module for entry in ALGORITHMS.values()
               for module in (entry.settings.__module__, getattr(entry.build, "__module__", ""))
               if module.startswith("zofed.algorithms.")}  # a build may be a functools.partial
    helpers = {name for name in sys.modules
               if any(name.startswith(module + "_") for module in defined)}
    return (defined | helpers) - {"zofed.algorithms.base"}


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):  # imports inside functions count too
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_runtime_module_imports_a_method_module():
    methods = method_modules()
    assert {"zofed.algorithms.zorba", "zofed.algorithms.fedmezo", "zofed.algorithms.zorba_solver"} <= methods
    found = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        named = {name for name in imported(ast.parse(path.read_text(), str(path)))
                 if any(name == module or name.startswith(module + ".") for module in methods)}
        if named:
            found[str(path.relative_to(RUNTIME))] = sorted(named)
    assert found == {}, f"runtime modules import method modules (use the registry entry instead): {found}"
