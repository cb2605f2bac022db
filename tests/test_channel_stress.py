"""Stress tests with real threads: no loss, no duplicate, per-producer order, exact sums.

Object channels: Python threads pushing (producer, seq) tuples, singly and in
batches.  Record channels: the nogil loops of reflux_core._stress, called from
Python threads (they release the GIL) and from native threads started in
Cython (run_native).

Every wait has a watchdog: a hang closes the channel (which must wake every
thread) and fails the test instead of hanging CI.  Default sizes keep this file
well under a minute on two cores; `pytest -m slow` runs the large variants.
"""
from __future__ import annotations

import threading
import time

import pytest

from reflux_core import _stress
from reflux_core.channel import ChannelClosed, MPMCChannel, RecordChannel, SPSCChannel

WATCHDOG = 120.0  # seconds for a whole run: a hang guard only


from support import Worker  # noqa: E402


def join_all(threads, deadline, ch, what):
    """Join threads by an absolute deadline; on a hang, close the channel (so
    the rest wake up) and fail."""
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            ch.close()
            for u in threads:
                u.join(5)
            pytest.fail(f"{what}: {t.name} did not finish within the watchdog (hang)")
    for t in threads:
        if t.error is not None:
            raise AssertionError(f"{t.name} failed: {t.error!r}") from t.error


# ---------------------------------------------------------------- object channels


def packed(item):
    """A (producer, seq) item as one int, checked: a consumer keeps millions of
    them, and ints (unlike tuples) are not tracked by the cyclic GC, whose
    passes over millions of live tuples cost seconds each on free-threaded 3.13."""
    assert type(item) is tuple and len(item) == 2, item
    p, s = item
    return p << 32 | s


def check_object_results(per_consumer, producers, n):
    """per_consumer: one list of packed (producer, seq) per consumer, in arrival order."""
    total = 0
    seen = [[] for _ in range(producers)]
    for got in per_consumer:
        last = [-1] * producers
        for item in got:
            p, s = item >> 32, item & 0xFFFFFFFF
            assert 0 <= p < producers, item
            # per-producer order is kept for every consumer
            assert s > last[p], f"consumer saw producer {p}: seq {s} after {last[p]}"
            last[p] = s
            seen[p].append(s)
        total += len(got)
    assert total == producers * n, f"{total} items received, {producers * n} sent"
    for p in range(producers):
        # exact payload sum, then no loss and no duplicate
        assert sum(seen[p]) == n * (n - 1) // 2, f"producer {p}: wrong sum"
        assert sorted(seen[p]) == list(range(n)), f"producer {p}: lost or duplicated items"


def run_object_stress(kind, producers, consumers, n, batch, capacity):
    ch = kind(capacity)

    def produce(p):
        if batch == 1:
            for s in range(n):
                ch.push((p, s))
        else:
            for i in range(0, n, batch):
                items = [(p, s) for s in range(i, min(n, i + batch))]
                assert ch.push_many(items) == len(items)
        return n

    def consume():
        got = []
        if batch == 1:
            for item in ch:
                got.append(packed(item))
        else:
            while True:
                try:
                    got.extend(map(packed, ch.pop_many(batch)))
                except ChannelClosed:
                    break
        return got

    cons = [Worker(consume, name=f"consumer{i}") for i in range(consumers)]
    prods = [Worker(produce, p, name=f"producer{p}") for p in range(producers)]
    deadline = time.monotonic() + WATCHDOG
    for t in cons + prods:
        t.start()
    join_all(prods, deadline, ch, "producers")
    ch.close()
    join_all(cons, deadline, ch, "consumers")
    check_object_results([c.result for c in cons], producers, n)
    stats = ch.stats
    assert stats.pushed == stats.popped == producers * n
    assert len(ch) == 0


OBJECT_CASES = [
    # kind, producers, consumers, items per producer (single, batch)
    pytest.param(SPSCChannel, 1, 1, 100_000, 300_000, id="spsc-1P1C"),
    pytest.param(MPMCChannel, 1, 1, 50_000, 100_000, id="mpmc-1P1C"),
    pytest.param(MPMCChannel, 2, 2, 50_000, 100_000, id="mpmc-2P2C"),
    pytest.param(MPMCChannel, 4, 4, 25_000, 50_000, id="mpmc-4P4C"),
]


@pytest.mark.parametrize("capacity", [2, 64])
@pytest.mark.parametrize("batch", [1, 61])
@pytest.mark.parametrize("kind, producers, consumers, n_single, n_batch", OBJECT_CASES)
def test_object_channel_stress(kind, producers, consumers, n_single, n_batch, batch, capacity):
    n = n_single if batch == 1 else n_batch
    if capacity == 2:
        n //= 5  # every item a hand-off: slower, and the point is the wrap-around
    run_object_stress(kind, producers, consumers, n, batch, capacity)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("kind, producers, consumers", [
    (SPSCChannel, 1, 1), (MPMCChannel, 2, 2), (MPMCChannel, 4, 4), (MPMCChannel, 8, 3),
], ids=["spsc-1P1C", "mpmc-2P2C", "mpmc-4P4C", "mpmc-8P3C"])
def test_object_channel_stress_large(kind, producers, consumers, batch):
    run_object_stress(kind, producers, consumers, 2_000_000 // producers, batch, 1024)


# ---------------------------------------------------------------- record channels


def check_tallies(tallies, producers, n):
    """Tallies of reflux_core._stress consumers: counts, sums, order."""
    for t in tallies:
        assert t["order_errors"] == 0, t
        assert t["bad_producer"] == 0, t
        assert t["count"] == sum(t["counts"])
    assert sum(t["count"] for t in tallies) == producers * n
    for p in range(producers):
        count = sum(t["counts"][p] for t in tallies)
        total = sum(t["sums"][p] for t in tallies)
        assert count == n, f"producer {p}: {count} records received, {n} sent"
        assert total == n * (n - 1) // 2, f"producer {p}: sum of seq {total}"


def run_record_threads(mode, producers, consumers, n, batch, capacity):
    """Producers and consumers are Python threads running the nogil loops."""
    ch = RecordChannel("<u8", capacity, mode=mode)
    cons = [Worker(_stress.consume, ch, producers, batch, name=f"consumer{i}")
            for i in range(consumers)]
    prods = [Worker(_stress.produce, ch, p, n, batch, False, name=f"producer{p}")
             for p in range(producers)]
    deadline = time.monotonic() + WATCHDOG
    for t in cons + prods:
        t.start()
    join_all(prods, deadline, ch, "producers")
    assert [p.result for p in prods] == [n] * producers
    ch.close()
    join_all(cons, deadline, ch, "consumers")
    check_tallies([c.result for c in cons], producers, n)
    assert ch.stats.pushed == ch.stats.popped == producers * n
    assert len(ch) == 0


def run_record_native(mode, producers, consumers, n, batch, capacity):
    """Producers and consumers are native threads started from Cython."""
    ch = RecordChannel("<u8", capacity, mode=mode)
    runner = Worker(_stress.run_native, ch, producers, consumers, n, batch, name="run_native")
    runner.start()
    join_all([runner], time.monotonic() + WATCHDOG, ch, "run_native")
    seconds, pushed, tallies = runner.result
    assert seconds > 0
    assert pushed == [n] * producers
    assert len(tallies) == consumers
    check_tallies(tallies, producers, n)
    assert ch.closed  # the last producer closed it
    assert ch.stats.pushed == ch.stats.popped == producers * n
    return seconds


RECORD_CASES = [
    pytest.param("spsc", 1, 1, id="spsc-1P1C"),
    pytest.param("mpmc", 2, 2, id="mpmc-2P2C"),
    pytest.param("mpmc", 4, 4, id="mpmc-4P4C"),
]


@pytest.mark.parametrize("capacity", [2, 256])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("mode, producers, consumers", RECORD_CASES)
def test_record_channel_stress_python_threads(mode, producers, consumers, batch, capacity):
    n = 400_000 // producers
    if capacity == 2:
        n //= 8  # every record a hand-off
    run_record_threads(mode, producers, consumers, n, batch, capacity)


@pytest.mark.parametrize("capacity", [2, 256])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("mode, producers, consumers", RECORD_CASES)
def test_record_channel_stress_native_threads(mode, producers, consumers, batch, capacity):
    n = 1_000_000 // producers
    if capacity == 2:
        n //= 10  # every record a hand-off
    seconds = run_record_native(mode, producers, consumers, n, batch, capacity)
    print(f"run_native {mode} {producers}P{consumers}C batch={batch} capacity={capacity}: "
          f"{producers * n / seconds / 1e6:.1f} M records/s")


def test_record_stress_mixed_batches_native():
    # odd batch sizes on both sides: partial pushes and pops across the wrap
    ch = RecordChannel("<u8", 16, mode="mpmc")
    runner = Worker(_stress.run_native, ch, 3, 2, 100_000, 7, name="run_native")
    runner.start()
    join_all([runner], time.monotonic() + WATCHDOG, ch, "run_native")
    _, pushed, tallies = runner.result
    assert pushed == [100_000] * 3
    check_tallies(tallies, 3, 100_000)


def test_stress_helpers_validate_their_arguments():
    with pytest.raises(TypeError, match="8-byte records"):
        _stress.produce(RecordChannel("<u4", 4), 0, 10)
    ch = RecordChannel("<u8", 4)
    with pytest.raises(ValueError):
        _stress.produce(ch, 64, 10)
    with pytest.raises(ValueError):
        _stress.consume(ch, 0)
    with pytest.raises(ValueError):
        _stress.run_native(ch, 0, 1, 10)


def test_stress_produce_close_flag_ends_consumers():
    ch = RecordChannel("<u8", 8)
    consumer = Worker(_stress.consume, ch, 1, 4, name="consumer")
    consumer.start()
    assert _stress.produce(ch, 0, 1000, 3, True) == 1000
    assert ch.closed
    join_all([consumer], time.monotonic() + WATCHDOG, ch, "consumer")
    check_tallies([consumer.result], 1, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("mode, producers, consumers", RECORD_CASES + [
    pytest.param("mpmc", 8, 2, id="mpmc-8P2C"),
    pytest.param("mpmc", 2, 8, id="mpmc-2P8C"),
])
def test_record_channel_stress_large(mode, producers, consumers, batch):
    n = 20_000_000 // producers
    run_record_native(mode, producers, consumers, n, batch, 1024)
    run_record_threads(mode, producers, consumers, n // 4, batch, 64)


# ---------------------------------------------------------------- close racing live traffic


def run_close_race(kind, producers, consumers, batch, capacity, close_after):
    """Producers push until the channel closes under them; every push that
    reported success must arrive exactly once, in order, and nothing else."""
    ch = kind(capacity)
    go = threading.Event()

    def produce(p):
        go.wait()
        s = 0
        while True:
            try:
                if batch == 1:
                    ch.push((p, s))
                    s += 1
                else:
                    s += ch.push_many([(p, i) for i in range(s, s + batch)])
            except ChannelClosed:
                return s  # items 0..s-1 went in

    def consume():
        got = []
        go.wait()
        while True:
            try:
                got.extend(ch.pop_many(batch) if batch > 1 else [ch.pop()])
            except ChannelClosed:
                return got

    cons = [Worker(consume, name=f"consumer{i}") for i in range(consumers)]
    prods = [Worker(produce, p, name=f"producer{p}") for p in range(producers)]
    deadline = time.monotonic() + WATCHDOG
    for t in cons + prods:
        t.start()
    go.set()
    time.sleep(close_after)
    ch.close()
    join_all(prods, deadline, ch, "producers")
    join_all(cons, deadline, ch, "consumers")
    sent = [p.result for p in prods]
    per_consumer = [c.result for c in cons]
    seen = [[] for _ in range(producers)]
    for got in per_consumer:
        last = [-1] * producers
        for p, s in got:
            assert s > last[p], f"producer {p}: seq {s} after {last[p]}"
            last[p] = s
            seen[p].append(s)
    for p in range(producers):
        assert sorted(seen[p]) == list(range(sent[p])), (
            f"producer {p}: pushed {sent[p]}, received {len(seen[p])} "
            f"(lost, duplicated or phantom items around the close)")
    assert ch.stats.pushed == ch.stats.popped == sum(sent)
    return sum(sent)


@pytest.mark.parametrize("batch", [1, 13])
@pytest.mark.parametrize("kind, producers, consumers", [
    (SPSCChannel, 1, 1), (MPMCChannel, 2, 2), (MPMCChannel, 4, 4),
], ids=["spsc-1P1C", "mpmc-2P2C", "mpmc-4P4C"])
def test_close_races_with_live_producers_and_consumers(kind, producers, consumers, batch,
                                                       rounds=100):
    total = 0
    for rnd in range(rounds):
        # close at varying points: before the first push, mid-stream, later
        close_after = (rnd % 6) * 0.0007
        total += run_close_race(kind, producers, consumers, batch, 2 + (rnd % 3) * 7,
                                close_after)
    assert total > 0  # some traffic happened before the closes


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("mode, producers, consumers", RECORD_CASES)
def test_record_close_races_with_nogil_producers(mode, producers, consumers, batch, rounds=60):
    for rnd in range(rounds):
        ch = RecordChannel("<u8", 4 + (rnd % 3) * 30, mode=mode)
        cons = [Worker(_stress.consume, ch, producers, batch, name=f"consumer{i}")
                for i in range(consumers)]
        # producers that would run for a long time: the close stops them
        prods = [Worker(_stress.produce, ch, p, 1 << 30, batch, False, name=f"producer{p}")
                 for p in range(producers)]
        deadline = time.monotonic() + WATCHDOG
        for t in cons + prods:
            t.start()
        time.sleep((rnd % 5) * 0.002)
        ch.close()
        join_all(prods, deadline, ch, "producers")
        join_all(cons, deadline, ch, "consumers")
        pushed = [p.result for p in prods]
        tallies = [c.result for c in cons]
        for t in tallies:
            assert t["order_errors"] == 0 and t["bad_producer"] == 0, t
        for p in range(producers):
            n = pushed[p]
            assert sum(t["counts"][p] for t in tallies) == n, (p, n)
            assert sum(t["sums"][p] for t in tallies) == n * (n - 1) // 2


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 13])
@pytest.mark.parametrize("kind, producers, consumers", [
    (SPSCChannel, 1, 1), (MPMCChannel, 2, 2), (MPMCChannel, 4, 4),
], ids=["spsc-1P1C", "mpmc-2P2C", "mpmc-4P4C"])
def test_close_races_large(kind, producers, consumers, batch):
    test_close_races_with_live_producers_and_consumers(kind, producers, consumers, batch,
                                                       rounds=2000)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("mode, producers, consumers", RECORD_CASES)
def test_record_close_races_large(mode, producers, consumers, batch):
    test_record_close_races_with_nogil_producers(mode, producers, consumers, batch, rounds=1500)
