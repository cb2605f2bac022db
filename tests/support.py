"""Helpers shared by the test modules (conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

WATCHDOG = 60.0  # seconds: a hang guard only, never a performance bound


class Worker(threading.Thread):
    """A daemon thread that keeps its function's result or exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any, name: str = "worker") -> None:
        super().__init__(daemon=True, name=name)
        self.fn, self.args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def finish(self, timeout: float = WATCHDOG, on_hang: Callable[[], Any] | None = None) -> Worker:
        """Join; on a hang run ``on_hang`` (e.g. close a channel) and fail the test."""
        self.join(timeout)
        if self.is_alive():
            if on_hang is not None:
                on_hang()
                self.join(5)
            pytest.fail(f"{self.name} still blocked after {timeout} s (hang)")
        return self


def start(fn: Callable[..., Any], *args: Any, name: str = "worker") -> Worker:
    w = Worker(fn, *args, name=name)
    w.start()
    return w


def wait_until(cond: Callable[[], Any], what: str, timeout: float = WATCHDOG) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def forever() -> Iterator[int]:
    """An endless source: 0, 1, 2, ..."""
    i = 0
    while True:
        yield i
        i += 1


#: tests that deliver SIGINT to a process (Popen.send_signal / os.kill): POSIX only,
#: since Windows has no SIGINT to send (a console's Ctrl-C event is another mechanism)
needs_posix_signals = pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a process (POSIX signals)")


def square(x: int) -> int:
    """A module-level function (picklable by reference) for process workers."""
    return x * x
