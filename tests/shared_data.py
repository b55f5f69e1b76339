"""Where tests find the shared data sets: `$ZOFED_SHARED_DATA`, else `../shared/data` from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data(*parts: str) -> Path:
    """A path inside the shared data; missing data fails the test that needs it instead of skipping it."""
    root = Path(os.environ.get("ZOFED_SHARED_DATA") or REPO.parent / "shared" / "data")
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: put the shared data at {REPO.parent / 'shared' / 'data'} "
                                "or point ZOFED_SHARED_DATA at it")
    return path
