"""Functions the Ray tests send to Ray actors.

``test_ray`` registers this module with Ray's cloudpickle to be pickled by
value, so the actors need not import it (as with functions of a script's
``__main__``).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from reflux import Error, NeedsMoreWork


def square(x: int) -> int:
    return x * x


def uneven(x: int) -> int:
    """Costs vary between items, so batches finish out of order."""
    if x % 7 == 0:
        time.sleep(0.002)
    return x * 3


def heavy(x: int) -> int:
    acc = 0
    for i in range(300):
        acc += x * i
    return acc


class Sleepy:
    """Sleeps ``seconds`` per item and returns it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, x: Any) -> Any:
        time.sleep(self.seconds)
        return x


def is_even(x: int) -> bool:
    return x % 2 == 0


def fail_on_7(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"bad item {x}")
    return x


def odd_or_error(x: int) -> Any:
    return Error(f"no good: {x}") if x % 3 == 0 else x


def explode(x: int) -> list[int]:
    """A generator-like flat function: x copies of x."""
    return [x] * (x % 4)


def countdown(x: int) -> Any:
    """Feeds x - 1 back until 0; emits the zeros."""
    return NeedsMoreWork(x - 1) if x > 0 else x


def identity(x: Any) -> Any:
    return x


class Flaky:
    """Fails the first call on each item (in each actor), succeeds on the retry."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, x: int) -> int:
        if x not in self.seen:
            self.seen.add(x)
            raise RuntimeError(f"first try of {x}")
        return x


class Tracked:
    """Writes a file per open() and close() into ``folder``; counts its calls in its own state."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.calls = 0

    def open(self) -> None:
        Path(self.folder, f"open-{os.getpid()}").write_text("1")

    def close(self) -> None:
        Path(self.folder, f"close-{os.getpid()}").write_text(str(self.calls))

    def __call__(self, x: int) -> tuple[int, int]:
        self.calls += 1
        return os.getpid(), self.calls


class BadOpen:
    def open(self) -> None:
        raise RuntimeError("the model file is missing")

    def __call__(self, x: int) -> int:
        return x


class BadClose:
    def close(self) -> None:
        raise RuntimeError("could not flush")

    def __call__(self, x: int) -> int:
        return x


class ExitOnce:
    """Ends its actor's process (``os._exit``) on item ``at``, once (a marker file remembers)."""

    def __init__(self, at: int, marker: str, seconds: float = 0.0) -> None:
        self.at, self.marker, self.seconds = at, marker, seconds

    def __call__(self, x: int) -> int:
        if self.seconds:
            time.sleep(self.seconds)
        if x == self.at and not os.path.exists(self.marker):
            Path(self.marker).write_text("1")
            os._exit(3)
        return x


def always_exit(x: int) -> int:
    os._exit(3)


def lock_for_3(x: int) -> Any:
    """A result Ray cannot pickle for item 3."""
    return threading.Lock() if x == 3 else x


def twice(x: int) -> Any:
    """A generator function: each item twice."""
    yield x
    yield x


class FailLate:
    """Sleeps ``seconds`` per item; raises on item ``at``, first writing ``time.time()`` to ``stamp``."""

    def __init__(self, at: int, stamp: str, seconds: float) -> None:
        self.at, self.stamp, self.seconds = at, stamp, seconds

    def __call__(self, x: int) -> int:
        time.sleep(self.seconds)
        if x == self.at:
            Path(self.stamp).write_text(repr(time.time()))
            raise ValueError(f"item {x}")
        return x
