"""Unit tests of the object channels of reflux_core.channel (SPSCChannel, MPMCChannel).

Every public method and property, its edges (capacity 1 and 2 wrapping around
thousands of times, timeouts, close while producers and consumers are blocked,
partial push_many/pop_many) and the misuse errors.

Timing: only generous hang guards (WATCHDOG) are asserted as upper bounds; the
only other timing assertion is that a timeout never fires *early*, which noise
on a shared machine cannot break.
"""
from __future__ import annotations

import copy
import fractions
import math
import pickle
import queue
import subprocess
import sys
import textwrap
import time

import pytest

import reflux
import reflux_core.channel as rc
from reflux_core.channel import (
    EMPTY,
    MAX_CAPACITY,
    Channel,
    ChannelClosed,
    ChannelStats,
    Empty,
    Full,
    MPMCChannel,
    SPSCChannel,
)

KINDS = [SPSCChannel, MPMCChannel]
WATCHDOG = 30.0  # seconds: only a hang guard, never a performance bound
EARLY_SLACK = 0.002  # clock granularity allowed when checking "not earlier than the timeout"



# ---------------------------------------------------------------- helpers


from support import start, wait_until  # noqa: E402


def wait_blocked(ch, consumers=0, producers=0):
    """Wait until that many consumers/producers entered the blocking path."""
    wait_until(lambda: ch.stats.empty_waits >= consumers and ch.stats.full_waits >= producers,
               f"{consumers} blocked consumer(s) and {producers} blocked producer(s)")


def drain_until_closed(ch):
    out = []
    while True:
        try:
            out.append(ch.pop())
        except ChannelClosed:
            return out


def run_child(code, timeout=60):
    """Run code in a fresh interpreter (isolated: never the checkout on sys.path)."""
    return subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=KINDS, ids=[k.__name__ for k in KINDS])
def cls(request):
    return request.param


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("requested, expected", [
    (2, 2), (3, 4), (4, 4), (5, 8), (7, 8), (9, 16), (100, 128), (1000, 1024), (1024, 1024),
    (1025, 2048),
])
def test_capacity_is_rounded_up_to_a_power_of_two(cls, requested, expected):
    ch = cls(requested)
    assert ch.capacity == expected
    # ... and the channel really holds exactly that many items
    for i in range(expected):
        assert ch.try_push(i) is True
    assert ch.try_push("one too many") is False
    assert len(ch) == expected
    assert [ch.pop() for _ in range(expected)] == list(range(expected))


def test_spsc_capacity_one():
    ch = SPSCChannel(1)
    assert ch.capacity == 1
    assert ch.try_push("a") is True
    assert ch.try_push("b") is False
    with pytest.raises(Full):
        ch.push("b", timeout=0)
    assert len(ch) == 1
    assert ch.pop() == "a"
    assert ch.try_pop() is EMPTY


def test_mpmc_capacity_is_at_least_two():
    # a Vyukov ring with one slot cannot tell "filled" from "free": the
    # documented minimum is 2 (MPMCChannel(1) used to overwrite its only item)
    ch = MPMCChannel(1)
    assert ch.capacity == 2
    assert ch.try_push("a") is True and ch.try_push("b") is True
    assert ch.try_push("c") is False
    assert len(ch) == 2
    assert ch.pop_many(4) == ["a", "b"]


def test_capacity_accepts_integer_like_objects(cls):
    np = pytest.importorskip("numpy")

    class Six:
        def __index__(self):
            return 6

    assert cls(np.int64(5)).capacity == 8
    assert cls(np.uint8(16)).capacity == 16
    assert cls(Six()).capacity == 8
    assert cls(capacity=3).capacity == 4


def test_capacity_is_read_only(cls):
    ch = cls(4)
    with pytest.raises(AttributeError):
        ch.capacity = 8
    assert ch.capacity == 4


@pytest.mark.parametrize("bad", [0, -1, -(2 ** 70)])
def test_capacity_below_one_is_refused(cls, bad):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: capacity must be >= 1"):
        cls(bad)


def test_max_capacity_constant():
    assert isinstance(MAX_CAPACITY, int)
    assert MAX_CAPACITY >= 2 ** 20
    assert MAX_CAPACITY & (MAX_CAPACITY - 1) == 0  # a power of two


@pytest.mark.parametrize("bad", [MAX_CAPACITY + 1, 2 * MAX_CAPACITY, 2 ** 64, 10 ** 30])
def test_capacity_above_max_is_refused(cls, bad):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: capacity .*maximum"):
        cls(bad)


@pytest.mark.parametrize("bad", [4.0, 4.5, "4", b"4", None, [4], 4 + 0j, object()],
                         ids=lambda v: type(v).__name__)
def test_non_integer_capacity_is_refused(cls, bad):
    with pytest.raises(TypeError, match=rf"{cls.__name__}: capacity must be an integer"):
        cls(bad)


@pytest.mark.parametrize("bad", [True, False])
def test_bool_capacity_is_refused(cls, bad):
    with pytest.raises(TypeError, match="capacity must be an integer, got a bool"):
        cls(bad)


def test_missing_capacity_is_a_type_error(cls):
    with pytest.raises(TypeError):
        cls()


def test_init_twice_is_refused(cls):
    ch = cls(4)
    ch.push("kept")
    with pytest.raises(RuntimeError, match="already initialised"):
        ch.__init__(8)
    assert ch.capacity == 4
    assert ch.pop() == "kept"


def _every_operation():
    return {
        "push": lambda ch: ch.push(1),
        "push_timeout": lambda ch: ch.push(1, timeout=0),
        "try_push": lambda ch: ch.try_push(1),
        "push_many": lambda ch: ch.push_many([1, 2]),
        "pop": lambda ch: ch.pop(timeout=0),
        "try_pop": lambda ch: ch.try_pop(),
        "pop_many": lambda ch: ch.pop_many(2, timeout=0),
        "close": lambda ch: ch.close(),
        "closed": lambda ch: ch.closed,
        "len": lambda ch: len(ch),
        "stats": lambda ch: ch.stats,
        "iter": lambda ch: iter(ch),
    }


def test_abstract_channel_base_cannot_be_used():
    assert issubclass(SPSCChannel, Channel) and issubclass(MPMCChannel, Channel)
    try:
        ch = Channel(4)
    except TypeError as exc:  # refusing at construction is fine too
        assert "abstract" in str(exc)
        return
    assert "uninitialised" in repr(ch)
    for name, op in _every_operation().items():
        with pytest.raises(TypeError, match="abstract or not initialised"):
            op(ch)
            pytest.fail(f"Channel().{name} did not raise")


def test_uninitialised_subclass_instance_is_refused(cls):
    ch = cls.__new__(cls)  # __init__ never ran
    assert "uninitialised" in repr(ch)
    for name, op in _every_operation().items():
        with pytest.raises(TypeError, match="abstract or not initialised"):
            op(ch)
            pytest.fail(f"{cls.__name__}.__new__().{name} did not raise")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_is_refused(cls, protocol):
    ch = cls(4)
    ch.push("x")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ch, protocol=protocol)
    assert ch.pop() == "x"  # the channel is untouched


def test_copy_is_refused(cls):
    ch = cls(4)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.copy(ch)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(ch)


def test_repr_and_bool(cls):
    ch = cls(3)
    assert bool(ch) is True  # truthy even when empty, like queue.Queue
    r = repr(ch)
    assert cls.__name__ in r and "capacity=4" in r and "len=0" in r and "open" in r
    ch.push(1)
    ch.close()
    r = repr(ch)
    assert "len=1" in r and "closed" in r


# ---------------------------------------------------------------- exceptions and sentinel


def test_exception_hierarchy():
    assert issubclass(Full, queue.Full)
    assert issubclass(Empty, queue.Empty)
    assert issubclass(ChannelClosed, Exception)
    assert not issubclass(ChannelClosed, (queue.Full, queue.Empty))
    assert not issubclass(Full, Empty) and not issubclass(Empty, Full)


def test_exceptions_and_types_importable_from_reflux():
    for name in ("ChannelClosed", "Full", "Empty", "EMPTY", "Channel", "SPSCChannel",
                 "MPMCChannel", "RecordChannel", "ChannelStats"):
        assert getattr(reflux, name) is getattr(rc, name), name
        assert name in rc.__all__
    from reflux import ChannelClosed as C2, Empty as E2, Full as F2  # noqa: N811

    assert (C2, E2, F2) == (ChannelClosed, Empty, Full)


def test_stdlib_except_clauses_catch_timeouts(cls):
    ch = cls(2)
    ch.push_many([1, 2])
    try:
        ch.push(3, timeout=0.01)
    except queue.Full as exc:
        assert type(exc) is Full
    else:
        pytest.fail("no Full")
    ch.pop_many(2)
    try:
        ch.pop(timeout=0.01)
    except queue.Empty as exc:
        assert type(exc) is Empty
    else:
        pytest.fail("no Empty")


def test_empty_sentinel():
    assert repr(EMPTY) == "EMPTY"
    assert not EMPTY
    assert EMPTY is not None
    assert pickle.loads(pickle.dumps(EMPTY)) is EMPTY
    assert copy.copy(EMPTY) is EMPTY and copy.deepcopy(EMPTY) is EMPTY


# ---------------------------------------------------------------- basic operations


def test_push_pop_fifo(cls):
    ch = cls(8)
    assert len(ch) == 0
    for i in range(5):
        assert ch.push(i) is None
        assert len(ch) == i + 1
    assert [ch.pop() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(ch) == 0


def test_try_push_and_try_pop(cls):
    ch = cls(2)
    assert ch.try_pop() is EMPTY
    assert ch.try_push("a") is True
    assert ch.try_push("b") is True
    assert ch.try_push("c") is False
    assert len(ch) == 2
    assert ch.try_pop() == "a"
    assert ch.try_push("c") is True
    assert [ch.try_pop(), ch.try_pop(), ch.try_pop()] == ["b", "c", EMPTY]


class _Thing:
    pass


def _every_kind_of_item():
    return [
        None, False, True, 0, -1, 2 ** 200, 1.5, float("nan"), float("inf"), 1 + 2j, "", "text",
        "é✓", b"", b"bytes", bytearray(b"x"), (), (1, (2, None)), [], [None], {}, {"k": None},
        set(), frozenset({1}), object(), _Thing(), _Thing, int, len, lambda: None, ValueError("e"),
        Ellipsis, NotImplemented, range(3), memoryview(b"mv"), sys, EMPTY,
    ]


def test_items_of_every_kind_round_trip_by_identity(cls):
    items = _every_kind_of_item()
    ch = cls(64)
    for x in items:
        ch.push(x)
    assert all(a is b for a, b in zip([ch.pop() for _ in items], items, strict=True))
    for x in items:
        assert ch.try_push(x) is True
    assert all(a is b for a, b in zip([ch.try_pop() for _ in items], items, strict=True))
    assert ch.push_many(items) == len(items)
    assert all(a is b for a, b in zip(ch.pop_many(len(items)), items, strict=True))
    ch.push_many(items)
    ch.close()
    assert all(a is b for a, b in zip(list(ch), items, strict=True))


def test_none_is_an_item_not_emptiness(cls):
    ch = cls(4)
    ch.push(None)
    assert len(ch) == 1
    assert ch.try_pop() is None
    assert ch.try_pop() is EMPTY


def test_channel_can_carry_channels(cls):
    inner = cls(2)
    outer = cls(2)
    outer.push(inner)
    assert outer.pop() is inner


# ---------------------------------------------------------------- timeouts


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_pop_timeout_raises_empty(cls, timeout):
    ch = cls(4)
    t0 = time.monotonic()
    with pytest.raises(Empty, match="timed out"):
        ch.pop(timeout=timeout)
    elapsed = time.monotonic() - t0
    assert elapsed >= timeout - EARLY_SLACK  # never early
    assert elapsed < timeout + WATCHDOG


@pytest.mark.parametrize("timeout", [0.05, 0.2])
def test_push_timeout_raises_full(cls, timeout):
    ch = cls(2)
    ch.push_many(["a", "b"])
    t0 = time.monotonic()
    with pytest.raises(Full, match="timed out"):
        ch.push("c", timeout=timeout)
    elapsed = time.monotonic() - t0
    assert elapsed >= timeout - EARLY_SLACK
    assert elapsed < timeout + WATCHDOG
    assert len(ch) == 2
    assert ch.pop_many(4) == ["a", "b"]  # "c" never went in


def test_pop_many_timeout_raises_empty(cls):
    ch = cls(4)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        ch.pop_many(3, timeout=0.05)
    assert time.monotonic() - t0 >= 0.05 - EARLY_SLACK


def test_push_many_timeout_on_full_raises_full(cls):
    ch = cls(2)
    ch.push_many([1, 2])
    t0 = time.monotonic()
    with pytest.raises(Full):
        ch.push_many([3, 4], timeout=0.05)
    assert time.monotonic() - t0 >= 0.05 - EARLY_SLACK
    assert ch.pop_many(4) == [1, 2]


def test_zero_timeout_does_not_wait(cls):
    ch = cls(1 if cls is SPSCChannel else 2)
    with pytest.raises(Empty):
        ch.pop(timeout=0)
    with pytest.raises(Empty):
        ch.pop_many(5, timeout=0)
    while ch.try_push("x"):
        pass
    with pytest.raises(Full):
        ch.push("y", timeout=0)
    with pytest.raises(Full):
        ch.push_many(["y"], timeout=0.0)


@pytest.mark.parametrize("timeout", [0, 0.0, 1, 2.5, float("inf"), 10 ** 6,
                                     fractions.Fraction(1, 2)],
                         ids=lambda v: repr(v))
def test_valid_timeouts_accepted_when_ready(cls, timeout):
    ch = cls(4)
    ch.push("a", timeout=timeout)
    assert ch.push_many(["b"], timeout=timeout) == 1
    assert ch.pop(timeout=timeout) == "a"
    assert ch.pop_many(3, timeout=timeout) == ["b"]


def test_numpy_float_timeout_accepted(cls):
    np = pytest.importorskip("numpy")
    ch = cls(4)
    ch.push(1, timeout=np.float64(0.5))
    assert ch.pop(timeout=np.float32(0.5)) == 1


_BAD_TIMEOUT_VALUES = [-1, -0.001, -1e-300, float("-inf"), float("nan")]
_BAD_TIMEOUT_TYPES = ["1", b"1", [], object(), 1j, True, False]


def _timed_operations():
    # each runs on a channel holding one item with room to spare: the
    # timeout must be validated even when the call would not need to wait
    return {
        "push": lambda ch, t: ch.push("new", timeout=t),
        "push_many": lambda ch, t: ch.push_many(["new"], timeout=t),
        "pop": lambda ch, t: ch.pop(timeout=t),
        "pop_many": lambda ch, t: ch.pop_many(1, timeout=t),
    }


@pytest.mark.parametrize("op", list(_timed_operations()))
@pytest.mark.parametrize("bad", _BAD_TIMEOUT_VALUES, ids=repr)
def test_negative_or_nan_timeout_is_refused(cls, op, bad):
    ch = cls(4)
    ch.push("old")
    with pytest.raises(ValueError, match="timeout must be >= 0 or None"):
        _timed_operations()[op](ch, bad)
    assert len(ch) == 1 and ch.pop() == "old"  # nothing moved


@pytest.mark.parametrize("op", list(_timed_operations()))
@pytest.mark.parametrize("bad", _BAD_TIMEOUT_TYPES, ids=lambda v: type(v).__name__)
def test_non_number_timeout_is_refused(cls, op, bad):
    ch = cls(4)
    ch.push("old")
    with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
        _timed_operations()[op](ch, bad)
    assert len(ch) == 1 and ch.pop() == "old"


# ---------------------------------------------------------------- push_many


def test_push_many_pushes_everything_in_order(cls):
    ch = cls(16)
    assert ch.push_many([1, 2, 3]) == 3
    assert ch.push_many((4, 5)) == 2
    assert ch.push_many(range(6, 9)) == 3
    assert ch.push_many(x for x in [9, 10]) == 2
    assert ch.push_many(iter([11])) == 1
    assert ch.push_many([]) == 0
    assert len(ch) == 11
    assert ch.pop_many(16) == list(range(1, 12))


def test_push_many_takes_a_snapshot_of_the_list(cls):
    ch = cls(8)
    items = ["a", "b"]
    assert ch.push_many(items) == 2
    items.append("c")
    items[0] = "changed"
    assert ch.pop_many(8) == ["a", "b"]


def test_push_many_non_iterable_is_a_type_error(cls):
    ch = cls(4)
    with pytest.raises(TypeError):
        ch.push_many(5)
    assert len(ch) == 0


def test_push_many_partial_with_zero_timeout(cls):
    ch = cls(4)
    assert ch.push_many(range(10), timeout=0) == 4
    assert ch.pop_many(10) == [0, 1, 2, 3]
    ch.push("x")
    assert ch.push_many(["a", "b", "c", "d"], timeout=0) == 3  # the prefix that fits
    assert ch.pop_many(10) == ["x", "a", "b", "c"]


def test_push_many_partial_on_timeout(cls):
    ch = cls(4)
    t0 = time.monotonic()
    assert ch.push_many(range(10), timeout=0.05) == 4
    assert time.monotonic() - t0 >= 0.05 - EARLY_SLACK
    assert ch.pop_many(10) == [0, 1, 2, 3]


def test_push_many_partial_on_close(cls):
    ch = cls(4)
    producer = start(ch.push_many, list(range(10)), name="push_many")
    wait_blocked(ch, producers=1)
    ch.close()
    producer.finish()
    assert producer.error is None
    assert producer.result == 4  # the prefix that went in before the close
    assert drain_until_closed(ch) == [0, 1, 2, 3]


def test_push_many_on_closed_channel_raises(cls):
    ch = cls(4)
    ch.close()
    with pytest.raises(ChannelClosed, match="closed"):
        ch.push_many([1, 2])
    with pytest.raises(ChannelClosed):
        ch.push_many([1], timeout=0)
    assert len(ch) == 0


def test_push_many_larger_than_capacity_waits_for_room(cls):
    ch = cls(4)
    n = 1000
    producer = start(ch.push_many, list(range(n)), name="push_many")
    got = []
    while len(got) < n:
        got.extend(ch.pop_many(3, timeout=WATCHDOG))
    producer.finish()
    assert producer.error is None and producer.result == n
    assert got == list(range(n))
    assert ch.stats.full_waits >= 1


# ---------------------------------------------------------------- pop_many


def test_pop_many_returns_what_is_there(cls):
    ch = cls(8)
    ch.push_many([0, 1, 2])
    got = ch.pop_many(10)
    assert type(got) is list and got == [0, 1, 2]
    ch.push_many(range(5))
    assert ch.pop_many(2) == [0, 1]
    assert ch.pop_many(2) == [2, 3]
    assert ch.pop_many(2) == [4]
    assert len(ch) == 0


def test_pop_many_does_not_wait_to_fill_the_batch(cls):
    ch = cls(8)
    ch.push("only")
    t0 = time.monotonic()
    assert ch.pop_many(100, timeout=WATCHDOG) == ["only"]
    assert time.monotonic() - t0 < WATCHDOG / 2


def test_pop_many_max_items_larger_than_capacity(cls):
    ch = cls(4)
    ch.push_many("abcd")
    assert ch.pop_many(10 ** 6) == list("abcd")
    ch.push_many("ef")
    assert ch.pop_many(sys.maxsize) == ["e", "f"]


def test_pop_many_large_batches(cls):
    # more than the 256 pointers pop_many moves through its stack buffer
    ch = cls(1024)
    assert ch.push_many(range(1000)) == 1000
    assert ch.pop_many(1000) == list(range(1000))
    assert ch.push_many(range(1024)) == 1024
    assert ch.pop_many(300) == list(range(300))
    assert ch.pop_many(1024) == list(range(300, 1024))


def test_pop_many_waits_for_the_first_item(cls):
    ch = cls(8)
    consumer = start(ch.pop_many, 10, name="pop_many")
    wait_blocked(ch, consumers=1)
    ch.push_many(["a", "b", "c"])
    consumer.finish(on_hang=ch.close)
    assert consumer.error is None
    got = consumer.result
    assert 1 <= len(got) <= 3 and got == ["a", "b", "c"][:len(got)]
    rest = ch.pop_many(10, timeout=0) if len(got) < 3 else []
    assert got + rest == ["a", "b", "c"]


@pytest.mark.parametrize("bad", [0, -1, -(2 ** 70)])
def test_pop_many_max_items_below_one_is_refused(cls, bad):
    ch = cls(4)
    ch.push("x")
    with pytest.raises(ValueError, match="max_items must be >= 1"):
        ch.pop_many(bad)
    assert ch.pop() == "x"


@pytest.mark.parametrize("bad", [1.0, 2.5, "3", None, [2], object()],
                         ids=lambda v: type(v).__name__)
def test_pop_many_non_integer_max_items_is_refused(cls, bad):
    ch = cls(4)
    ch.push("x")
    with pytest.raises(TypeError, match="max_items must be an integer"):
        ch.pop_many(bad)
    assert ch.pop() == "x"


@pytest.mark.parametrize("bad", [True, False])
def test_pop_many_bool_max_items_is_refused(cls, bad):
    ch = cls(4)
    ch.push("x")
    with pytest.raises(TypeError, match="max_items must be an integer, got a bool"):
        ch.pop_many(bad)
    assert ch.pop() == "x"


def test_pop_many_accepts_integer_like_max_items(cls):
    np = pytest.importorskip("numpy")
    ch = cls(8)
    ch.push_many(range(5))
    assert ch.pop_many(np.int64(2)) == [0, 1]
    assert ch.pop_many(np.uint16(9)) == [2, 3, 4]


# ---------------------------------------------------------------- close


def test_close_is_end_of_stream(cls):
    ch = cls(8)
    ch.push_many([1, 2, 3, 4])
    assert ch.closed is False
    assert ch.close() is None
    assert ch.closed is True
    ch.close()  # idempotent
    assert ch.closed is True
    # producers are refused, nothing more goes in
    with pytest.raises(ChannelClosed):
        ch.push(5)
    with pytest.raises(ChannelClosed):
        ch.push(5, timeout=0)
    with pytest.raises(ChannelClosed):
        ch.try_push(5)
    with pytest.raises(ChannelClosed):
        ch.push_many([5, 6])
    assert len(ch) == 4
    # consumers drain first, by every method, then see the end
    assert ch.pop() == 1
    assert ch.try_pop() == 2
    assert ch.pop_many(1) == [3]
    assert list(ch) == [4]
    assert len(ch) == 0
    for op in (ch.pop, ch.try_pop, lambda: ch.pop(timeout=0), lambda: ch.pop(timeout=1),
               lambda: ch.pop_many(3), lambda: ch.pop_many(3, timeout=0)):
        with pytest.raises(ChannelClosed, match="closed"):
            op()
    assert list(ch) == []


def test_close_on_a_full_channel_refuses_a_blocking_push_at_once(cls):
    ch = cls(2)
    ch.push_many([1, 2])
    ch.close()
    # timeout=None: must raise, not wait for room that will never matter
    producer = start(ch.push, 3, name="push")
    producer.finish()
    assert isinstance(producer.error, ChannelClosed)
    assert list(ch) == [1, 2]


def test_pop_without_timeout_on_closed_channel_does_not_block(cls):
    ch = cls(2)
    ch.push("last")
    ch.close()
    consumer = start(drain_until_closed, ch, name="drain")
    consumer.finish()
    assert consumer.error is None and consumer.result == ["last"]


def test_close_wakes_blocked_consumers(cls):
    ch = cls(4)
    n = 1 if cls is SPSCChannel else 3
    ops = [ch.pop, lambda: ch.pop_many(4), lambda: list(ch)][:n]
    consumers = [start(op, name=f"consumer{i}") for i, op in enumerate(ops)]
    wait_blocked(ch, consumers=n)
    time.sleep(0.05)  # let them park
    ch.close()
    for c in consumers:
        c.finish()
    assert isinstance(consumers[0].error, ChannelClosed)
    if n > 1:
        assert isinstance(consumers[1].error, ChannelClosed)
        assert consumers[2].error is None and consumers[2].result == []  # iteration just ends


def test_close_wakes_blocked_producers_and_consumers_drain_first(cls):
    ch = cls(2)
    ch.push_many(["a", "b"])
    n = 1 if cls is SPSCChannel else 3
    ops = [lambda: ch.push("p0"), lambda: ch.push_many(["p1", "p1b"]),
           lambda: ch.push("p2", timeout=WATCHDOG)][:n]
    producers = [start(op, name=f"producer{i}") for i, op in enumerate(ops)]
    wait_blocked(ch, producers=n)
    time.sleep(0.05)
    ch.close()
    for p in producers:
        p.finish()
        assert isinstance(p.error, ChannelClosed), p.error
    # the items that were in before the close are still delivered, then the end
    assert drain_until_closed(ch) == ["a", "b"]
    assert ch.stats.pushed == 2 and ch.stats.popped == 2


def test_items_pushed_just_before_close_reach_blocked_consumers(cls):
    ch = cls(8)
    n = 1 if cls is SPSCChannel else 3
    consumers = [start(drain_until_closed, ch, name=f"consumer{i}") for i in range(n)]
    wait_blocked(ch, consumers=n)
    items = list(range(6))
    ch.push_many(items)
    ch.close()
    results = []
    for c in consumers:
        c.finish()
        assert c.error is None
        assert c.result == sorted(c.result)  # each consumer sees them in order
        results.extend(c.result)
    assert sorted(results) == items


# ---------------------------------------------------------------- iteration


def test_iteration_ends_after_close_and_drain(cls):
    ch = cls(8)
    ch.push_many(range(5))
    ch.close()
    it = iter(ch)
    assert iter(it) is it
    assert list(it) == [0, 1, 2, 3, 4]
    with pytest.raises(StopIteration):
        next(it)
    assert list(ch) == []


def test_iteration_follows_a_live_producer(cls):
    ch = cls(4)
    consumer = start(lambda: list(ch), name="iterate")
    for i in range(500):
        ch.push(i)
    ch.close()
    consumer.finish()
    assert consumer.error is None
    assert consumer.result == list(range(500))


# ---------------------------------------------------------------- len and stats


def test_stats_counters(cls):
    ch = cls(2)
    s = ch.stats
    assert isinstance(s, ChannelStats) and isinstance(s, tuple)
    assert ChannelStats._fields == ("pushed", "popped", "full_waits", "empty_waits")
    assert s == (0, 0, 0, 0)
    ch.push("a")
    assert ch.try_push("b") is True
    assert ch.try_push("c") is False  # full: not pushed, not a wait
    assert ch.stats == (2, 0, 0, 0)
    with pytest.raises(Full):
        ch.push("c", timeout=0.01)
    s = ch.stats
    assert (s.pushed, s.popped) == (2, 0) and s.full_waits >= 1 and s.empty_waits == 0
    full_waits = s.full_waits
    assert ch.pop() == "a" and ch.try_pop() == "b"
    assert ch.try_pop() is EMPTY  # empty: not a wait
    s = ch.stats
    assert (s.pushed, s.popped, s.full_waits, s.empty_waits) == (2, 2, full_waits, 0)
    with pytest.raises(Empty):
        ch.pop(timeout=0.01)
    assert ch.stats.empty_waits >= 1
    assert ch.push_many([1, 2, 3], timeout=0) == 2
    assert ch.pop_many(5) == [1, 2]
    s = ch.stats
    assert (s.pushed, s.popped) == (4, 4)
    # the snapshot is a value, not a live view
    assert s == ch.stats and s is not ch.stats


def test_stats_and_len_after_close(cls):
    ch = cls(8)
    ch.push_many(range(5))
    ch.pop()
    ch.close()
    # the closed flag must not leak into the counters
    assert ch.stats.pushed == 5 and ch.stats.popped == 1
    assert len(ch) == 4
    list(ch)
    assert ch.stats.pushed == 5 and ch.stats.popped == 5
    assert len(ch) == 0


def test_blocking_waits_are_counted(cls):
    ch = cls(2)
    consumer = start(ch.pop, name="pop")
    wait_blocked(ch, consumers=1)
    ch.push("x")
    consumer.finish(on_hang=ch.close)
    assert consumer.result == "x"
    assert ch.stats.empty_waits >= 1
    ch.push_many([1, 2])
    producer = start(ch.push, 3, name="push")
    wait_blocked(ch, producers=1)
    assert ch.pop() == 1
    producer.finish(on_hang=ch.close)
    assert producer.error is None
    assert ch.pop_many(2) == [2, 3]
    s = ch.stats
    assert s.full_waits >= 1 and s.pushed == 4 and s.popped == 4


# ---------------------------------------------------------------- wrap-around


# MPMCChannel(1) is covered in a child process below (a regression there hangs
# with the GIL held, which no in-process watchdog can stop)
WRAP_CASES = [(SPSCChannel, 1), (SPSCChannel, 2), (MPMCChannel, 2), (MPMCChannel, 4)]
WRAP_IDS = [f"{k.__name__}-{c}" for k, c in WRAP_CASES]


@pytest.mark.parametrize("kind, capacity", WRAP_CASES, ids=WRAP_IDS)
def test_wraparound_single_thread(kind, capacity):
    ch = kind(capacity)
    nxt = 0
    expected = 0
    for _ in range(5000):
        while ch.try_push(nxt):
            nxt += 1
        assert len(ch) == capacity
        with pytest.raises(Full):
            ch.push("no room", timeout=0)
        assert ch.pop() == expected
        expected += 1
    # mixed batches over the wrapped positions
    for _ in range(2000):
        k = ch.push_many(range(nxt, nxt + 3), timeout=0)
        nxt += k
        got = ch.pop_many(capacity)
        assert got == list(range(expected, expected + len(got)))
        expected += len(got)
    assert ch.stats.pushed == nxt and ch.stats.popped == expected
    assert ch.stats.pushed > 1000 * capacity  # the positions wrapped many times


@pytest.mark.parametrize("style", ["single", "batch"])
@pytest.mark.parametrize("kind, capacity", WRAP_CASES, ids=WRAP_IDS)
def test_wraparound_between_two_threads(kind, capacity, style):
    n = 10_000
    ch = kind(capacity)

    def produce():
        if style == "single":
            for i in range(n):
                ch.push(i)
        else:
            for i in range(0, n, 7):
                batch = list(range(i, min(n, i + 7)))
                assert ch.push_many(batch) == len(batch)
        ch.close()

    producer = start(produce, name="producer")
    got = []
    try:
        if style == "single":
            for x in ch:
                got.append(x)
        else:
            while True:
                try:
                    got.extend(ch.pop_many(5))
                except ChannelClosed:
                    break
    finally:
        producer.finish(on_hang=ch.close)
    assert producer.error is None
    assert got == list(range(n))
    assert ch.stats.pushed == n and ch.stats.popped == n


_MPMC_ONE_CHILD = """
    import faulthandler, os, sys, threading
    faulthandler.dump_traceback_later(20, exit=True)  # a corrupt ring spins forever
    from reflux_core.channel import MPMCChannel

    ch = MPMCChannel(1)
    cap = ch.capacity
    for rnd in range(100):
        for i in range(cap):
            if ch.try_push((rnd, i)) is not True:
                print("FAIL: try_push refused below capacity", flush=True)
                os._exit(1)
        if ch.try_push("overflow") is not False or len(ch) != cap:
            print(f"FAIL: a full channel accepted an item (len={len(ch)}, capacity={cap})",
                  flush=True)
            os._exit(1)   # the ring is corrupt: its destructor would spin
        if [ch.pop() for _ in range(cap)] != [(rnd, i) for i in range(cap)]:
            print("FAIL: wrong items", flush=True)
            os._exit(1)

    n = 10_000
    ch = MPMCChannel(1)
    def produce():
        for i in range(n):
            ch.push(i)
        ch.close()
    t = threading.Thread(target=produce, daemon=True)
    t.start()
    got = list(ch)
    t.join()
    print("OK" if got == list(range(n)) else f"FAIL: lost or reordered ({len(got)} items)",
          flush=True)
    os._exit(0)
"""


def test_mpmc_capacity_one_bound_and_wraparound():
    # in a child process: the old capacity-1 bug overwrote the only item, then
    # the next pop spun forever with the GIL held
    proc = run_child(_MPMC_ONE_CHILD)
    assert proc.stdout.strip() == "OK", (proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0


# ---------------------------------------------------------------- misuse of an SPSC channel


@pytest.mark.parametrize("second", ["pop", "pop_many", "iterate"])
def test_spsc_second_blocked_consumer_is_refused(second):
    ch = SPSCChannel(4)
    first = start(ch.pop, name="first consumer")
    try:
        wait_blocked(ch, consumers=1)
        time.sleep(0.02)
        with pytest.raises(RuntimeError, match="second consumer") as info:
            if second == "pop":
                ch.pop(timeout=10)
            elif second == "pop_many":
                ch.pop_many(4, timeout=10)
            else:
                next(iter(ch))
        assert "MPMCChannel" in str(info.value)  # the message says what to use instead
        ch.push("for the first")
        first.finish(on_hang=ch.close)
    finally:
        ch.close()
    assert first.error is None and first.result == "for the first"
    # handing the consumer side over to another thread between calls is fine
    ch2 = SPSCChannel(4)
    ch2.push(1)
    other = start(ch2.pop, name="later consumer").finish()
    assert other.result == 1


@pytest.mark.parametrize("second", ["push", "push_many"])
def test_spsc_second_blocked_producer_is_refused(second):
    ch = SPSCChannel(1)
    ch.push("fill")
    first = start(ch.push, "from the first", name="first producer")
    try:
        wait_blocked(ch, producers=1)
        time.sleep(0.02)
        with pytest.raises(RuntimeError, match="second producer"):
            if second == "push":
                ch.push("intruder", timeout=10)
            else:
                ch.push_many(["intruder"], timeout=10)
        assert ch.pop() == "fill"
        first.finish(on_hang=ch.close)
        assert first.error is None
        assert ch.pop(timeout=WATCHDOG) == "from the first"
        assert ch.try_pop() is EMPTY  # the intruder's item never went in
    finally:
        ch.close()


def test_mpmc_allows_several_blocked_consumers_and_producers():
    ch = MPMCChannel(2)
    consumers = [start(ch.pop, name=f"consumer{i}") for i in range(3)]
    wait_blocked(ch, consumers=3)
    ch.push_many(["a", "b"])
    ch.push("c")
    for c in consumers:
        c.finish(on_hang=ch.close)
    assert sorted(c.result for c in consumers) == ["a", "b", "c"]
    ch.push_many([1, 2])
    producers = [start(ch.push, x, name=f"producer{x}") for x in (3, 4, 5)]
    wait_blocked(ch, producers=3)
    got = [ch.pop(timeout=WATCHDOG) for _ in range(5)]
    for p in producers:
        p.finish(on_hang=ch.close)
        assert p.error is None
    assert got[:2] == [1, 2] and sorted(got[2:]) == [3, 4, 5]


# ---------------------------------------------------------------- module odds and ends


def test_park_backend_is_named():
    assert rc.park_backend() in ("futex", "waitonaddress", "condvar")


def test_module_exports():
    for name in rc.__all__:
        assert hasattr(rc, name), name
    assert {"SPSCChannel", "MPMCChannel", "RecordChannel", "ChannelClosed", "Full", "Empty",
            "EMPTY"} <= set(rc.__all__)


def test_timeout_is_keyword_or_positional(cls):
    ch = cls(2)
    ch.push("a", 0)
    assert ch.pop(0) == "a"
    assert ch.push_many(["b"], 0) == 1
    assert ch.pop_many(1, 0) == ["b"]
    with pytest.raises(TypeError):
        ch.push("a", timeout=1, block=True)


def test_nan_item_identity_kept(cls):
    nan = float("nan")
    ch = cls(2)
    ch.push(nan)
    got = ch.pop()
    assert got is nan and math.isnan(got)
