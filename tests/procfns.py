"""Functions the process-worker tests send to worker processes.

They live in a module of their own (conftest.py puts this folder on sys.path,
and workers get the parent's sys.path), so workers can import them by name;
functions defined in a test module under ``--import-mode=importlib`` could not be.
"""
from __future__ import annotations

import os
import time
from typing import Any

from reflux import Error, NeedsMoreWork


def square(x: int) -> int:
    return x * x


def uneven(x: int) -> int:
    """Costs vary a lot between items, so chunks finish out of order."""
    if x % 7 == 0:
        time.sleep(0.003)
    return x * 3


def heavyish(x: int) -> int:
    acc = 0
    for i in range(300):
        acc += x * i
    return acc


def fail_on_3(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad item {x}")
    return x


def error_on_3(x: int) -> Any:
    if x % 3 == 0:
        return Error(f"no good: {x}")
    return x


class Flaky:
    """Fails the first call on each item (in each worker), succeeds on the retry."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def __call__(self, x: int) -> int:
        if x not in self.seen:
            self.seen.add(x)
            raise RuntimeError(f"first try of {x}")
        return x


class Counting:
    """Returns (pid, calls so far in this process): the state must persist in a worker."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: int) -> tuple[int, int]:
        self.calls += 1
        return os.getpid(), self.calls


class Hooks:
    """open()/close() run in each worker; close() writes a file named after the worker's pid."""

    def __init__(self, folder: str, fail_close: bool = False) -> None:
        self.folder = folder
        self.fail_close = fail_close
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        if self.fail_close:
            raise OSError("close hook failed")
        with open(os.path.join(self.folder, f"closed-{os.getpid()}"), "w") as f:
            f.write("ok")

    def __call__(self, x: int) -> tuple[int, bool]:
        return x, self.opened


def pairs(x: int) -> Any:
    """A generator: two outputs per item."""
    yield x
    yield -x


def listing(x: int) -> list[int]:
    """For flat=True: a list of x copies of x."""
    return [x] * (x % 4)


def countdown(x: int) -> Any:
    """NeedsMoreWork down to zero: every x > 0 comes back as x - 1."""
    if x > 0:
        return NeedsMoreWork(x - 1)
    return "done"


def doubled(a: Any) -> Any:
    """numpy arrays in, numpy arrays out (and a check that the input is writable)."""
    a[...] = a  # raises if read-only
    if a.dtype.names:  # structured: bump a field in place
        a["a"] += 1
        return a
    return a * 2


def crash_on_5(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


def lock_result(x: int) -> Any:
    """Returns something that cannot be pickled for odd items."""
    import threading
    return threading.Lock() if x % 2 else x


class TwoArgError(Exception):
    """An exception that does not survive pickling (its __init__ needs two arguments)."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(f"{a}/{b}")


def raise_two_arg(x: int) -> int:
    raise TwoArgError(x, "b")


def sleepy(x: float) -> float:
    time.sleep(x)
    return x


def pid(x: Any) -> int:
    return os.getpid()


def emits(x: int) -> int:
    """Emits a warning for every tenth item (reflux.emit in a worker process)."""
    import threading

    from reflux import emit
    if x % 10 == 0:
        emit("warning", "tenth", x=x, obj=threading.Lock())  # a field that cannot be pickled travels as repr
    return x

class Tally:
    """Counts its items: a function with checkpoint hooks (state() and restore())."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, x: int) -> int:
        self.n += 1
        return x

    def state(self) -> int:
        return self.n

    def restore(self, state: int) -> None:
        self.n = state


def flat_mixed(x: int) -> Any:
    """For flat=True: outputs, a fed-back item or a failure, by x."""
    if x % 7 == 3:
        raise ValueError(f"bad item {x}")
    if x % 5 == 1:
        return [NeedsMoreWork(x + 1)]  # x + 1 is never 1 (mod 5): it comes out as outputs
    return [x, -x]


def halve_slowly(x: int) -> Any:
    """Even numbers above 1000 come back halved (NeedsMoreWork); a 1 ms sleep every 10th item."""
    if x % 10 == 0:
        time.sleep(0.001)
    return NeedsMoreWork(x // 2) if x > 1000 and x % 2 == 0 else x
