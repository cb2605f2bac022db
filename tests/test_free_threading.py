"""What the GIL used to serialise, checked on every build (and what proves it on a
free-threaded one, where the suite also runs with ``PYTHON_GIL=0``):

* the compiled modules declare free-threading support, so importing them
  leaves the GIL off;
* threads that misuse one side of an SPSC channel at once are refused, and no
  item is lost or duplicated;
* each replica of a stateful callable runs its own copy (``open()`` and
  ``close()`` once per replica); an object the replicas share is opened and
  closed once;
* a consumer's pop and a blocked producer's registration never miss each
  other (no wake-up left to the pool's sweep);
* a run says which mode it ran in.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from reflux import Extractor, Filter, Loader, Pipeline, Transformer, ValidationError
from reflux.result import gil_enabled, thread_mode
from reflux_core.channel import ChannelClosed, Empty, RecordChannel, SPSCChannel

from support import WATCHDOG, Worker, free_threaded  # noqa: E402

COMPILED = ["channel", "transform", "_stress", "_batch", "_sched", "_testplugins", "_demo"]


# --------------------------------------------------------------------------- the declaration


@pytest.mark.skipif(not free_threaded(), reason="a GIL build: there is no GIL to keep off")
def test_importing_every_compiled_module_leaves_the_gil_off():
    # a fresh interpreter without PYTHON_GIL, which would force the GIL off
    # whatever the modules declare; -W error: the warning CPython gives when a
    # module turns the GIL on fails the import
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    code = ("import sys\n"
            + "".join(f"import reflux_core.{m}\n" for m in COMPILED)
            + "import reflux, reflux.logic, reflux.run.pool\n"
            "print('GIL', sys._is_gil_enabled())\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(os.path.abspath(__file__)), timeout=WATCHDOG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "GIL False", proc.stdout


def test_build_info_says_how_the_core_was_compiled():
    import reflux_core

    info = reflux_core.build_info()
    assert info["free_threaded"] is free_threaded()
    assert info["gil_enabled"] is gil_enabled()


# --------------------------------------------------------------------------- SPSC misuse


def _retry(call, *args):
    """Call until the channel accepts: a concurrent second producer or consumer
    is refused with RuntimeError, and nothing went in or out."""
    refused = 0
    while True:
        try:
            return call(*args), refused
        except RuntimeError as exc:
            assert "SPSCChannel" in str(exc) or "RecordChannel" in str(exc), exc
            refused += 1
            time.sleep(0)


@pytest.mark.parametrize("batch", [1, 7])
def test_spsc_several_threads_on_each_side_lose_and_duplicate_nothing(batch, producers=3, consumers=2, n=6000):
    # Misuse on purpose: three producer threads and two consumer threads on one
    # SPSC channel.  Every call either works as if it were alone or is refused;
    # every item a producer got accepted arrives exactly once, in its
    # producer's order for each consumer.
    ch = SPSCChannel(8)
    refusals = [0]
    lock = threading.Lock()  # protects refusals (test bookkeeping)

    def produce(p):
        for s in range(0, n, batch):
            items = [(p, x) for x in range(s, min(n, s + batch))]
            while items:
                if batch == 1:
                    _, refused = _retry(ch.push, items[0])
                    done = 1
                else:
                    done, refused = _retry(ch.push_many, items)
                del items[:done]
                with lock:
                    refusals[0] += refused

    def consume():
        got = []
        while True:
            try:
                if batch == 1:
                    item, refused = _retry(ch.pop, 0.05)
                    got.append(item)
                else:
                    items, refused = _retry(ch.pop_many, batch, 0.05)
                    got.extend(items)
            except Empty:
                continue
            except ChannelClosed:
                return got
            with lock:
                refusals[0] += refused

    cons = [Worker(consume, name=f"consumer{i}") for i in range(consumers)]
    prods = [Worker(produce, p, name=f"producer{p}") for p in range(producers)]
    for t in cons + prods:
        t.start()
    for t in prods:
        t.finish(on_hang=ch.close)
    ch.close()
    for t in cons:
        t.finish(on_hang=ch.close)
    for t in cons + prods:
        assert t.error is None, t.error
    seen = {p: [] for p in range(producers)}
    for c in cons:
        last = {p: -1 for p in range(producers)}
        for p, s in c.result:
            assert s > last[p], f"a consumer saw producer {p}'s item {s} after {last[p]}"
            last[p] = s
            seen[p].append(s)
    for p in range(producers):
        assert sorted(seen[p]) == list(range(n)), f"producer {p}: items lost or duplicated"
    assert ch.stats.pushed == ch.stats.popped == producers * n
    print(f"batch {batch}: {refusals[0]} calls refused as concurrent misuse")


def test_record_spsc_several_threads_on_each_side_lose_and_duplicate_nothing(producers=3, consumers=2, n=4000):
    ch = RecordChannel("<u8", 8)

    def produce(p):
        for s in range(0, n, 5):
            recs = np.array([(p << 32) | x for x in range(s, min(n, s + 5))], dtype="<u8")
            while len(recs):
                done, _ = _retry(ch.push, recs, WATCHDOG)
                recs = recs[done:]

    def consume():
        got = []
        while True:
            try:
                arr, _ = _retry(ch.pop, 5, 0.05)
            except Empty:
                continue
            except ChannelClosed:
                return got
            got.extend(int(x) for x in arr)

    cons = [Worker(consume, name=f"consumer{i}") for i in range(consumers)]
    prods = [Worker(produce, p, name=f"producer{p}") for p in range(producers)]
    for t in cons + prods:
        t.start()
    for t in prods:
        t.finish(on_hang=ch.close)
    ch.close()
    for t in cons:
        t.finish(on_hang=ch.close)
    for t in cons + prods:
        assert t.error is None, t.error
    seen = {p: [] for p in range(producers)}
    for c in cons:
        for r in c.result:
            seen[r >> 32].append(r & 0xFFFFFFFF)
    for p in range(producers):
        assert sorted(seen[p]) == list(range(n)), f"producer {p}: records lost or duplicated"


# --------------------------------------------------------------------------- replicas


class Counting:
    """A stateful callable: an unsynchronised counter, open/close hooks.
    ``log`` (shared by every copy, appends only) records what happened."""

    def __init__(self, log):
        self.log = log
        self.count = 0
        self.opened = False

    def open(self):
        assert not self.opened, "open() ran twice on one object"
        self.opened = True
        self.log.append(("open", id(self)))

    def __call__(self, x):
        assert self.opened, "called before open()"
        self.count += 1  # unsynchronised: safe only if no other thread uses this object
        return x

    def close(self):
        self.log.append(("close", id(self), self.count))

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        clone.log = self.log  # the log is shared on purpose (the test's record)
        return clone


@pytest.mark.parametrize("ordered", [False, True])
def test_each_replica_runs_its_own_copy_opened_and_closed_once(ordered, n=20_000):
    log = []
    fn = Counting(log)
    out = Loader.to_list(name="out")
    p = Pipeline(Extractor(range(n)) >> Transformer(fn, parallel=3, ordered=ordered, batch_size=16, name="count")
                 >> out, workers=3)
    result = p.run(WATCHDOG)
    assert sorted(result.results["out"]) == list(range(n))
    opens = [e[1] for e in log if e[0] == "open"]
    closes = {e[1]: e[2] for e in log if e[0] == "close"}
    assert len(opens) == len(set(opens)) == 3  # three copies, each opened once
    assert set(closes) == set(opens)  # each closed once
    assert sum(closes.values()) == n  # no update lost: no copy was shared
    assert id(fn) not in opens and fn.count == 0 and not fn.opened  # the template never runs


def test_a_stateful_filter_predicate_is_copied_per_replica(n=5000):
    log = []

    class Even(Counting):
        def __call__(self, x):
            super().__call__(x)
            return x % 2 == 0

    out = Loader.to_list(name="out")
    result = Pipeline(Extractor(range(n)) >> Filter(Even(log), parallel=2, batch_size=8) >> out).run(WATCHDOG)
    assert sorted(result.results["out"]) == list(range(0, n, 2))
    closes = [e[2] for e in log if e[0] == "close"]
    assert len(closes) == 2 and sum(closes) == n


class SharedOnPurpose:
    """One thread-safe object for every replica: __deepcopy__ returns it."""

    def __init__(self):
        self.lock = threading.Lock()  # protects count, opens, closes (and cannot be copied)
        self.count = 0
        self.opens = 0
        self.closes = 0
        self.count_at_close = None

    def open(self):
        with self.lock:
            self.opens += 1
        time.sleep(0.05)  # replicas that start meanwhile wait for open() to return

    def __call__(self, x):
        with self.lock:
            assert self.opens == 1
            self.count += 1
        return x

    def close(self):
        with self.lock:
            self.closes += 1
            self.count_at_close = self.count

    def __deepcopy__(self, memo):
        return self


def test_an_object_the_replicas_share_is_opened_once_and_closed_after_the_last(n=10_000):
    obj = SharedOnPurpose()
    out = Loader.to_list(name="out")
    result = Pipeline(Extractor(range(n)) >> Transformer(obj, parallel=4, batch_size=8) >> out,
                      workers=3).run(WATCHDOG)
    assert sorted(result.results["out"]) == list(range(n))
    assert (obj.opens, obj.closes) == (1, 1)
    assert obj.count_at_close == n  # closed only after every replica was done with it


def test_an_object_that_cannot_be_copied_is_refused_before_the_run_starts():
    class HoldsALock:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, x):
            return x

    p = Pipeline(Extractor(range(10)) >> Transformer(HoldsALock(), parallel=2, name="locked") >> Loader.to_list())
    with pytest.raises(ValidationError) as info:
        p.run(WATCHDOG)
    msg = str(info.value)
    assert "Transformer 'locked'" in msg and "HoldsALock" in msg and "copy" in msg
    assert "open()" in msg and "__deepcopy__" in msg  # says how to fix it
    # the same object with one replica runs as it is
    assert Pipeline(Extractor(range(10)) >> Transformer(HoldsALock()) >> Loader.to_list()).run(WATCHDOG).ok


def test_functions_and_bound_methods_are_shared_as_they_are(n=3000):
    lock = threading.Lock()  # protects calls (the closure the replicas share)
    calls = []

    def f(x):
        with lock:
            calls.append(x)
        return x

    class Box:
        def __init__(self):
            self.lock = threading.Lock()  # a bound method's instance is shared, so it may hold a lock
            self.total = 0

        def add(self, x):
            with self.lock:
                self.total += x
            return x

    box = Box()
    out = Loader.to_list(name="out")
    result = Pipeline(Extractor(range(n)) >> Transformer(f, parallel=2, batch_size=8)
                      >> Transformer(box.add, parallel=2, batch_size=8) >> out).run(WATCHDOG)
    assert sorted(result.results["out"]) == list(range(n))
    assert sorted(calls) == list(range(n))
    assert box.total == n * (n - 1) // 2


# --------------------------------------------------------------------------- wake-ups


class SlowSweep(Pipeline):
    """The pool's safety-net sweep (and every idle wake-up) only once a minute:
    a producer whose wake-up was missed would wait that long."""

    POLL = 60.0


def test_blocked_producers_are_woken_by_pops_not_by_the_sweep(n=20_000):
    # Tiny channels and unfused stages: producers find their output full over
    # and over and register as waiters, consumers wake them after each pop.
    # A missed wake-up would stall the run for POLL (60 s); the bound below is
    # far above a normal run and below one such stall.
    out = Loader.to_list(name="out")
    p = SlowSweep(Extractor(range(n), batch_size=4) >> Transformer(lambda x: x + 1, batch_size=3)
                  >> Filter(lambda x: x % 5 != 0, batch_size=2) >> out, capacity=2, fuse=False, workers=3)
    t0 = time.monotonic()
    result = p.run(45.0)
    assert time.monotonic() - t0 < 45.0
    assert sorted(result.results["out"]) == [x + 1 for x in range(n) if (x + 1) % 5 != 0]
    result.check_accounting()


def test_ordered_replicas_sharing_one_output_all_reach_the_end(rounds=12, n=20_000):
    # Ordered replicas feed one output: any of them hands its batch over and
    # flushes it.  A replica that saw another's batch between its hand-over
    # and its flush took the output for full, waited for a wake-up no flush
    # had registered, and the run never ended (the sweep does not help it).
    for _ in range(rounds):
        out = Loader.to_list(name="out")
        p = SlowSweep(Extractor(range(n)) >> Transformer(lambda x: x * 2, parallel=3, ordered=True, batch_size=16)
                      >> out, workers=3)
        result = p.run(45.0)
        assert result.results["out"] == [x * 2 for x in range(n)]  # input order kept


# --------------------------------------------------------------------------- the mode of a run


def test_a_run_says_how_python_threads_ran():
    result = Pipeline(Extractor(range(3)) >> Loader.to_list()).run(WATCHDOG)
    assert result.gil_enabled is gil_enabled()
    assert result.free_threaded is free_threaded()
    assert result.mode == thread_mode()
    assert result.mode in ("GIL off (free-threaded)", "GIL on (free-threaded build)", "GIL on")
    assert result.summary().splitlines()[0].endswith(result.mode)
    assert (result.mode == "GIL on") is (not free_threaded())
