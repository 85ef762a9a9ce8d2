"""Fixtures shared by the unit tests."""
from __future__ import annotations

import pytest


@pytest.fixture
def clock(monkeypatch):
    """tqdm's own clock (the ``time`` its bars read), advanced by hand: ``clock[0] += seconds``."""
    now = [1000.0]
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])
    return now
