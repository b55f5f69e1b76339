"""The README and docs/: every relative link resolves, the README stays short and keeps CI's test command."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ")" (titles are not used here)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)")


def relative_links(document: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", target)]


def missing_targets(documents: list[Path], root: Path) -> list[str]:
    missing = []
    for document in documents:
        for target in relative_links(document):
            path = (document.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{document.relative_to(root)} -> {target}")
    return missing


def test_every_relative_link_resolves():
    missing = missing_targets(DOCUMENTS, REPO)
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)


def test_the_link_check_sees_links_and_reports_missing_ones(tmp_path):
    assert "docs/deployment.md" in relative_links(REPO / "README.md")
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("[ok](page.md) [web](https://flower.ai) [anchor](#x) ![gone](../nowhere.png)\n```\n[code](no.md)\n```\n")
    assert missing_targets([page], tmp_path) == ["docs/page.md -> ../nowhere.png"]


def test_readme_is_short_and_keeps_the_commands_ci_and_newcomers_use():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
    for heading in ("## Quickstart", "## Usage", "## Methods"):
        assert heading in readme


SRC = REPO / "src" / "zofed"
ARCHITECTURE = REPO / "docs" / "architecture.md"
# a module (`runtime/round.py`) or a package (`runtime/flower/`), as the Modules section names them
MODULE_NAME = re.compile(r"`((?:[a-z_]+/)*(?:[a-z_]+\.py|[a-z_]+/))`")


def modules_under(src: Path) -> set[str]:
    """Every module under src as `path/module.py` and every package as `path/`."""
    names = {path.relative_to(src).as_posix() for path in src.rglob("*.py") if path.name != "__init__.py"}
    return names | {path.parent.relative_to(src).as_posix() + "/" for path in src.rglob("__init__.py") if path.parent != src}


def named_modules(document: Path) -> set[str]:
    section = re.search(r"^## Modules\n(.*?)(?=^## |\Z)", document.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert section, f"{document.name} has no ## Modules section"
    outside = ("src/", "tests/", "benchmarks/", "docs/")  # the section may point at tests too
    return {name for name in MODULE_NAME.findall(section.group(1)) if not name.startswith(outside)}


def test_architecture_names_every_module_and_only_modules_that_exist():
    present, named = modules_under(SRC), named_modules(ARCHITECTURE)
    assert not present - named, f"modules docs/architecture.md does not name: {sorted(present - named)}"
    packages = {path.relative_to(SRC).as_posix() for path in SRC.rglob("__init__.py")}  # may be named, need not be
    assert not named - present - packages, f"docs/architecture.md names modules that do not exist: {sorted(named - present - packages)}"
    source_paths = set(re.findall(r"src/zofed/([a-z_/]+\.py)", ARCHITECTURE.read_text()))
    assert not source_paths - present, f"docs/architecture.md names src/zofed files that do not exist: {sorted(source_paths - present)}"


def test_the_module_check_sees_missing_and_stale_names(tmp_path):
    (tmp_path / "runtime").mkdir()
    for name in ("__init__.py", "cli.py", "runtime/__init__.py", "runtime/round.py"):
        (tmp_path / name).write_text("")
    assert modules_under(tmp_path) == {"cli.py", "runtime/", "runtime/round.py"}
    document = tmp_path / "architecture.md"
    document.write_text("## Modules\n- `cli.py` and `runtime/local.py` in `runtime/` (`tests/test_x.py`)\n## Next\n`runtime/round.py`\n")
    assert named_modules(document) == {"cli.py", "runtime/local.py", "runtime/"}
