"""Shared fixtures.  Tests import the installed package (``--import-mode=importlib``);
this folder goes on sys.path only so the test modules can share ``support.py``."""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Every test must leave no pipeline threads (nor watchdog or metrics threads) behind."""
    yield
    deadline = time.monotonic() + 10
    left: list[str] = []
    while time.monotonic() < deadline:
        # "reflux:" pipeline workers; "reflux-" helpers (the watchdog, a metrics server)
        left = [t.name for t in threading.enumerate() if t.name.startswith(("reflux:", "reflux-"))]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"reflux threads left behind: {left}")
