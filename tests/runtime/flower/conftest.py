"""A loopback Flower deployment for the tests, stopped after use whatever happens."""

from __future__ import annotations

import pytest

from zofed.runtime.flower.loopback import LoopbackFederation


@pytest.fixture
def deployment(tmp_path):
    started = LoopbackFederation(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
