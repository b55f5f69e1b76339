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
