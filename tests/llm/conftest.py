"""Test settings for zofed.llm: offline, and a throwaway model cache per test session.

Every test here runs against a fresh temporary `ZOFED_CACHE`, so the cache logic is exercised
from empty (the SmolLM2 tokenizer is converted from the GGUF once per session, a few seconds).
The one exception is the slow SmolLM2 model test: it uses the real cache (`$ZOFED_CACHE` as set
before the session, else ~/.cache/zofed), so the ~20 s, 540 MB model conversion is paid once per
machine instead of once per session.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Read at import, before the session fixture below replaces the variable.
REAL_CACHE = Path(os.environ.get("ZOFED_CACHE") or Path.home() / ".cache" / "zofed")


@pytest.fixture(scope="package", autouse=True)  # package: other test folders keep the real cache
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cache = tmp_path_factory.mktemp("zofed-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOFED_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def real_cache() -> Path:
    return REAL_CACHE
