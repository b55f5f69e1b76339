"""Paths that benchmarks store in committed results: relative to the repository root, never a machine's own directories."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def from_repo_root(*paths: str | Path) -> list[Path]:
    """Make the repository root the working directory and return `paths` (absolute, or relative to the
    old working directory) relative to it, `..` leading out of it: what a benchmark passes on to
    `zofed compare` is then both where the runs go and what its results.json stores."""
    absolute = [Path(path).resolve() for path in paths]
    os.chdir(ROOT)
    return [Path(os.path.relpath(path, ROOT)) for path in absolute]
