"""Reference counting of the object channels: nothing leaks, nothing is freed twice.

A channel holds exactly one reference per item in it, hands it over on pop,
drops it on every failed push, and releases whatever is left when freed.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import weakref

import numpy as np
import pytest

from reflux_core.channel import (
    ChannelClosed,
    Empty,
    Full,
    MPMCChannel,
    RecordChannel,
    SPSCChannel,
)

KINDS = [SPSCChannel, MPMCChannel]
WATCHDOG = 30.0


class Token:
    """A plain object: not cached, not immortal, weak-referenceable."""


def refs(x):
    return sys.getrefcount(x)


@pytest.fixture(params=KINDS, ids=[k.__name__ for k in KINDS])
def cls(request):
    return request.param


def test_push_takes_one_reference_and_pop_hands_it_over(cls):
    x = Token()
    base = refs(x)
    ch = cls(4)
    ch.push(x)
    assert refs(x) == base + 1
    y = ch.pop()
    assert y is x
    assert refs(x) == base + 1  # the channel's reference now lives in `y`
    del y
    assert refs(x) == base


def test_try_push_and_try_pop_hand_over_one_reference(cls):
    x = Token()
    base = refs(x)
    ch = cls(2)
    assert ch.try_push(x) and ch.try_push(x)
    assert refs(x) == base + 2
    assert ch.try_pop() is x
    assert refs(x) == base + 1
    assert ch.try_pop() is x
    assert refs(x) == base


def test_push_many_and_pop_many_references(cls):
    x = Token()
    base = refs(x)
    ch = cls(8)
    assert ch.push_many([x] * 5) == 5
    assert refs(x) == base + 5  # the temporary list is gone, the channel holds 5
    got = ch.pop_many(3)
    assert refs(x) == base + 5  # 3 moved into the list, 2 still in the channel
    del got
    assert refs(x) == base + 2
    got = ch.pop_many(8)
    assert len(got) == 2
    del got
    assert refs(x) == base


def test_iteration_hands_over_references(cls):
    x = Token()
    base = refs(x)
    ch = cls(8)
    ch.push_many([x] * 4)
    ch.close()
    n = 0
    for y in ch:
        assert y is x
        n += 1
    del y
    assert n == 4 and refs(x) == base


@pytest.mark.parametrize("wrapped", [False, True])
def test_items_left_in_a_channel_are_released_when_it_is_freed(cls, wrapped):
    x = Token()
    alive = Token()
    ref = weakref.ref(alive)
    base = refs(x)
    ch = cls(8)
    if wrapped:  # leave the items across the wrap of the ring
        for i in range(13):
            ch.push(i)
            ch.pop()
    ch.push_many([x, x, x, alive])
    ch.push(x)
    del alive
    assert ref() is not None  # only the channel keeps it alive
    assert refs(x) == base + 4
    del ch
    gc.collect()
    assert refs(x) == base
    assert ref() is None


def test_items_left_in_a_closed_channel_are_released(cls):
    x = Token()
    base = refs(x)
    ch = cls(4)
    ch.push_many([x, x])
    ch.close()
    assert ch.pop() is x
    del ch
    gc.collect()
    assert refs(x) == base


def test_push_on_a_closed_channel_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(4)
    ch.close()
    for _ in range(1000):
        with pytest.raises(ChannelClosed):
            ch.push(x)
        with pytest.raises(ChannelClosed):
            ch.try_push(x)
        with pytest.raises(ChannelClosed):
            ch.push_many([x, x])
    assert refs(x) == base


def test_try_push_on_a_full_channel_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(2)
    ch.push_many([x, x])
    for _ in range(1000):
        assert ch.try_push(x) is False
    assert refs(x) == base + 2


def test_push_timeout_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(2)
    ch.push_many([x, x])
    for _ in range(1000):
        with pytest.raises(Full):
            ch.push(x, timeout=0)
    for _ in range(3):
        with pytest.raises(Full):
            ch.push(x, timeout=0.005)
    assert refs(x) == base + 2


def test_invalid_timeout_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(2)
    for bad in (-1, float("nan"), "1"):
        with pytest.raises((ValueError, TypeError)):
            ch.push(x, timeout=bad)
        with pytest.raises((ValueError, TypeError)):
            ch.push_many([x], timeout=bad)
    assert refs(x) == base and len(ch) == 0


def test_push_many_partial_on_timeout_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(4)
    assert ch.push_many([x] * 10, timeout=0) == 4
    assert refs(x) == base + 4  # only what went in is referenced
    assert ch.pop() is x
    assert ch.push_many([x] * 10, timeout=0.01) == 1
    assert refs(x) == base + 4
    for _ in range(100):
        with pytest.raises(Full):
            ch.push_many([x] * 3, timeout=0)
    assert refs(x) == base + 4
    del ch
    gc.collect()
    assert refs(x) == base


def test_push_many_partial_on_close_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(4)
    result = {}

    def producer():
        items = [x] * 10
        try:
            result["n"] = ch.push_many(items)
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc
        del items

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    deadline = time.monotonic() + WATCHDOG
    while ch.stats.full_waits < 1:
        assert time.monotonic() < deadline, "the producer never blocked"
        time.sleep(0.001)
    ch.close()
    t.join(WATCHDOG)
    assert not t.is_alive()
    assert result == {"n": 4}
    assert refs(x) == base + 4
    assert ch.pop_many(10) == [x] * 4
    assert refs(x) == base


def test_push_of_a_failing_iterable_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(8)

    def items():
        yield x
        yield x
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ch.push_many(items())
    assert len(ch) == 0  # all or nothing: the iterable is read before pushing
    assert refs(x) == base


def test_blocked_push_that_gets_closed_does_not_leak(cls):
    x = Token()
    base = refs(x)
    ch = cls(2)
    ch.push_many([x, x])
    errors = []

    def producer():
        try:
            ch.push(x)
        except ChannelClosed as exc:
            errors.append(type(exc))

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    deadline = time.monotonic() + WATCHDOG
    while ch.stats.full_waits < 1:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    ch.close()
    t.join(WATCHDOG)
    assert not t.is_alive() and errors == [ChannelClosed]
    del t
    gc.collect()
    assert refs(x) == base + 2


def test_pop_timeout_and_closed_pop_do_not_touch_references(cls):
    x = Token()
    ch = cls(2)
    ch.push(x)
    base = refs(x)  # counts the channel's reference
    got = ch.pop_many(1, timeout=0)
    assert got == [x]
    del got
    assert refs(x) == base - 1
    with pytest.raises(Empty):
        ch.pop_many(1, timeout=0)
    with pytest.raises(Empty):
        ch.pop(timeout=0.005)
    assert ch.try_pop() is not x
    ch.close()
    for _ in range(100):
        with pytest.raises(ChannelClosed):
            ch.pop()
        with pytest.raises(ChannelClosed):
            ch.pop_many(5)
    assert refs(x) == base - 1


def test_many_items_round_trip_without_leaking(cls):
    xs = [Token() for _ in range(64)]
    bases = [refs(x) for x in xs]
    ch = cls(16)
    for _ in range(50):
        for i in range(0, 64, 16):
            ch.push_many(xs[i:i + 16])
            got = ch.pop_many(16)
            assert got == xs[i:i + 16]
            del got
    ch.push_many(xs[:10])
    del ch
    gc.collect()
    assert [refs(x) for x in xs] == bases


def test_uninitialised_channel_can_be_freed(cls):
    ch = cls.__new__(cls)
    del ch
    gc.collect()  # must not crash


# ---------------------------------------------------------------- record channel


@pytest.mark.parametrize("mode", ["spsc", "mpmc"])
def test_record_channel_keeps_no_reference_to_its_inputs_and_outputs(mode):
    dt = np.dtype([("id", "<u4"), ("x", "<f8")])
    ch = RecordChannel(dt, 8, mode=mode)
    arr = np.zeros(5, dtype=dt)
    base_arr = refs(arr)
    base_dt = refs(ch.dtype)
    for _ in range(500):
        assert ch.push(arr) == 5
        assert refs(arr) == base_arr  # copied in, not kept
        out = ch.pop()
        assert len(out) == 5
        del out
        assert ch.try_push(arr[:2]) == 2
        ch.try_pop()
        ch.try_pop()  # the empty result too
    assert refs(arr) == base_arr
    final_dt = refs(ch.dtype)  # (outside the assert: its rewriting keeps temporaries)
    assert final_dt == base_dt  # no array (holding the dtype) leaked
