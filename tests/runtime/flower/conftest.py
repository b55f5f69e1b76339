"""A loopback Flower deployment for the tests, stopped after use whatever happens."""

from __future__ import annotations

import pytest

from zofed.runtime.flower.loopback import LoopbackFederation


@pytest.fixture(autouse=True)
def quick_task_launch(monkeypatch):
    """Flower's SuperExecs (one per SuperLink and SuperNode, the simulation's too) look for a task to launch every
    second by default; every message of a deployment is such a task, so the tests would wait ~0.5 s per message.
    Set before any Flower process starts, which all inherit it."""
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")


@pytest.fixture
def deployment(tmp_path, quick_task_launch):
    started = LoopbackFederation(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
