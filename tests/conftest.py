"""Test-wide settings: never touch the network; no timing-dependent status lines."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _no_phase_lines_from_slowness(monkeypatch):
    # A piped phase prints a status line once it has lasted PHASE_LINE_AFTER_S (1 s); on a loaded machine
    # reading a small file takes that long, and the tests that count a bad input's lines would count it too.
    # The tests of the phase lines set their own threshold.
    from zofed import status

    monkeypatch.setattr(status, "PHASE_LINE_AFTER_S", 3600.0)
