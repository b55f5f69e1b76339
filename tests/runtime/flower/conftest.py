"""A loopback Flower deployment for the tests, stopped after use whatever happens."""

from __future__ import annotations

import psutil
import pytest

from zofed.runtime.flower.loopback import LoopbackFederation, family_of


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
        everyone = [member for process in started.processes for member in family_of(process)]
        started.stop_all()
        assert not [member for member in everyone if running(member)], "a deployment's process outlived stop_all"


def running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
