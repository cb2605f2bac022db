"""reflux_core._sched: the worker pool's scheduling core (states, ready queue, worker loop)."""
from __future__ import annotations

import random
import threading
import time

import pytest

from reflux_core._sched import CLOSED, TIMEOUT, Scheduler, worker_loop


def test_state_machine() -> None:
    s = Scheduler(3)
    assert s.state(0) == "IDLE"
    assert s.notify(0) is True and s.state(0) == "QUEUED"
    assert s.notify(0) is False  # queued once
    assert s.next(0.0) == 0 and s.state(0) == "RUNNING"
    assert s.notify(0) is False and s.state(0) == "RERUN"  # work arrived while it ran
    assert s.again(0) is True and s.state(0) == "RUNNING"
    assert s.done(0, False) is False and s.state(0) == "IDLE"
    assert s.next(0.0) == TIMEOUT
    s.notify(1)
    assert s.next(0.0) == 1
    s.notify(1)  # RERUN
    assert s.done(1, False) is True and s.state(1) == "QUEUED"  # not lost: queued again
    assert s.next(0.0) == 1
    assert s.done(1, True) is True  # more work: queued again
    s.retire(1)
    assert s.next(0.0) == TIMEOUT  # a retired unit's stale index is skipped
    assert s.notify(1) is False and s.state(1) == "DONE"
    s.close()
    assert s.next(1.0) == CLOSED


def test_bad_index() -> None:
    s = Scheduler(2)
    with pytest.raises(IndexError):
        s.notify(2)
    with pytest.raises(IndexError):
        s.done(-1, False)
    with pytest.raises(ValueError):
        Scheduler(-1)


def test_waiting_worker_wakes_on_notify() -> None:
    s = Scheduler(1)
    got = []
    t = threading.Thread(target=lambda: got.append(s.next(10.0)))
    t.start()
    time.sleep(0.05)
    s.notify(0)
    t.join(10)
    assert got == [0]


def test_stress_no_unit_runs_twice_at_once_and_no_notify_is_lost() -> None:
    """Notifiers and workers race; a unit never runs in two workers at once, and
    every notify is followed by a run that starts after it."""
    n_units, n_notes = 32, 20_000
    s = Scheduler(n_units)
    lock = threading.Lock()
    notified = [0] * n_units   # notifies made (a sequence per unit)
    seen = [0] * n_units       # the notify count a run started after
    busy = [False] * n_units
    clashes = []
    runs = [0]

    def run(i: int) -> int:
        if busy[i]:
            clashes.append(i)
        busy[i] = True
        with lock:
            seen[i] = notified[i]
            runs[0] += 1
        time.sleep(0)  # let others in mid-run
        busy[i] = False
        return 1 if random.random() < 0.05 else 0  # sometimes "more work"

    def idle() -> float:
        return 0.05

    workers = [threading.Thread(target=worker_loop, args=(s, run, idle, 0.05)) for _ in range(3)]
    for w in workers:
        w.start()

    def notifier(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(n_notes):
            i = rnd.randrange(n_units)
            with lock:
                notified[i] += 1
            s.notify(i)

    notifiers = [threading.Thread(target=notifier, args=(k,)) for k in range(3)]
    for t in notifiers:
        t.start()
    for t in notifiers:
        t.join(120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if seen == notified:
                break
        time.sleep(0.01)
    s.close()
    for w in workers:
        w.join(30)
    assert not clashes
    assert seen == notified
    assert runs[0] > n_units
    assert all(not w.is_alive() for w in workers)
