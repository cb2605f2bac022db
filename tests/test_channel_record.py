"""RecordChannel: fixed-size records described by a numpy dtype, copied in and out."""
from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from reflux_core.channel import (
    MAX_CAPACITY,
    ChannelClosed,
    ChannelStats,
    Empty,
    Full,
    RecordChannel,
)

WATCHDOG = 30.0
EARLY_SLACK = 0.002
MODES = ["spsc", "mpmc"]
REC = np.dtype([("id", "<u4"), ("x", "<f8")])



from support import start, wait_until  # noqa: E402


def records(ids, dtype=REC):
    arr = np.zeros(len(ids), dtype=dtype)
    arr["id"] = ids
    arr["x"] = np.asarray(ids, dtype=np.float64) * 0.25
    return arr


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("dtype", [
    REC,
    [("id", "<u4"), ("x", "<f8")],
    np.dtype([("a", "u1"), ("b", ">i8"), ("c", "<f4", (3,))], align=True),
    "<u8", ">i4", "f4", "i1", "?", "c16", "S5", "V3", "U2", "M8[ns]",
    np.float64, float,
], ids=repr)
def test_dtypes_round_trip(mode, dtype):
    dt = np.dtype(dtype)
    ch = RecordChannel(dtype, 8, mode=mode)
    assert ch.dtype == dt and ch.itemsize == dt.itemsize and ch.mode == mode
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=5 * dt.itemsize, dtype=np.uint8)
    if dt.kind == "b":
        raw = raw % 2  # bool bytes must be 0 or 1 to compare
    data = raw.view(dt) if dt.kind != "U" else np.array(["ab", "c", "", "xy", "é"], dtype=dt)
    assert ch.push(data) == 5
    out = ch.pop()
    assert out.dtype == dt and out.shape == (5,)
    assert out.tobytes() == data.tobytes()  # bit-exact copy (NaNs included)


def test_attributes_are_read_only():
    ch = RecordChannel(REC, 5)
    assert (ch.capacity, ch.itemsize, ch.dtype, ch.mode) == (8, 12, REC, "spsc")
    for name, value in (("capacity", 2), ("itemsize", 4), ("dtype", np.dtype("u1")),
                        ("mode", "mpmc")):
        with pytest.raises(AttributeError):
            setattr(ch, name, value)
    assert (ch.capacity, ch.itemsize, ch.dtype, ch.mode) == (8, 12, REC, "spsc")


@pytest.mark.parametrize("requested, expected", [(2, 2), (3, 4), (5, 8), (1000, 1024)])
def test_capacity_rounded_up(mode, requested, expected):
    ch = RecordChannel("<u2", requested, mode=mode)
    assert ch.capacity == expected
    assert ch.try_push(np.arange(expected + 3, dtype="<u2")) == expected
    assert len(ch) == expected


def test_capacity_one_spsc():
    ch = RecordChannel("<u8", 1)
    assert ch.capacity == 1
    for i in range(1000):
        assert ch.try_push(np.array([i, i + 1], dtype="<u8")) == 1
        assert ch.try_push(np.array([9], dtype="<u8")) == 0
        assert ch.pop().tolist() == [i]


@pytest.mark.parametrize("bad, exc, match", [
    (0, ValueError, ">= 1"),
    (-3, ValueError, ">= 1"),
    (MAX_CAPACITY + 1, ValueError, "maximum"),
    (1.5, TypeError, "integer"),
    ("8", TypeError, "integer"),
    (None, TypeError, "integer"),
    (True, TypeError, "bool"),
])
def test_capacity_validation(bad, exc, match):
    with pytest.raises(exc, match=f"RecordChannel: capacity.*{match}"):
        RecordChannel("<u8", bad)


def test_ring_bytes_limit():
    # 2**17 records of 64 KiB = 8 GiB: refused before allocating anything
    with pytest.raises(ValueError, match="byte limit"):
        RecordChannel("V65536", 2 ** 17)
    with pytest.raises(ValueError, match="byte limit"):
        RecordChannel(np.dtype(("V", 1 << 20)), 2 ** 13, mode="mpmc")


@pytest.mark.parametrize("dtype", [object, "O", [("id", "<u4"), ("obj", "O")]], ids=repr)
def test_object_dtype_refused(dtype):
    with pytest.raises(TypeError, match="Python objects"):
        RecordChannel(dtype, 4)


def test_subarray_dtype_refused_with_a_hint():
    with pytest.raises(TypeError, match="sub-array dtype .* wrap it in a structured dtype"):
        RecordChannel(("<f8", (3,)), 4)


@pytest.mark.parametrize("dtype", [np.dtype([]), "V0"], ids=repr)
def test_zero_size_dtype_refused(dtype):
    with pytest.raises(ValueError, match="has no size"):
        RecordChannel(dtype, 4)


def test_invalid_dtype_refused():
    with pytest.raises(TypeError, match="is not a numpy dtype"):
        RecordChannel("not-a-dtype", 4)


@pytest.mark.parametrize("bad", ["SPSC", "mpsc", "", None, 1])
def test_mode_validation(bad):
    with pytest.raises(ValueError, match="mode must be 'spsc' or 'mpmc'"):
        RecordChannel("<u8", 4, mode=bad)


def test_mode_is_keyword_only():
    with pytest.raises(TypeError):
        RecordChannel("<u8", 4, "mpmc")
    assert RecordChannel("<u8", 4).mode == "spsc"
    assert RecordChannel("<u8", 4, mode="mpmc").mode == "mpmc"


def test_init_twice_refused():
    ch = RecordChannel("<u8", 4)
    ch.push(np.array([5], dtype="<u8"))
    with pytest.raises(RuntimeError, match="already initialised"):
        ch.__init__("<u8", 8)
    assert ch.capacity == 4 and ch.pop().tolist() == [5]


def test_uninitialised_instance_refused():
    ch = RecordChannel.__new__(RecordChannel)
    assert "uninitialised" in repr(ch)
    ops = [lambda: ch.push(np.zeros(1)), lambda: ch.try_push(np.zeros(1)), ch.pop, ch.try_pop,
           ch.close, lambda: ch.closed, lambda: ch.stats, lambda: len(ch), lambda: iter(ch)]
    for op in ops:
        with pytest.raises(TypeError, match="not initialised"):
            op()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_refused(protocol):
    ch = RecordChannel(REC, 4)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ch, protocol=protocol)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(ch)


# ---------------------------------------------------------------- push / pop


def test_push_pop_round_trip_with_wraparound(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    nxt = 0
    expected = 0
    for rnd in range(3000):
        k = 1 + rnd % 3
        room = ch.capacity - len(ch)
        pushed = ch.push(records(range(nxt, nxt + k)), timeout=0)
        assert pushed == min(k, room)  # the prefix that fits
        nxt += pushed
        out = ch.pop(1 + rnd % 4)
        assert out.dtype == REC and out.ndim == 1 and 1 <= len(out) <= 1 + rnd % 4
        assert out["id"].tolist() == list(range(expected, expected + len(out)))
        assert out["x"].tolist() == [i * 0.25 for i in range(expected, expected + len(out))]
        expected += len(out)
        while len(ch) > 2:  # keep room so the next push fits completely
            out = ch.pop()
            assert out["id"].tolist() == list(range(expected, expected + len(out)))
            expected += len(out)
    rest = ch.try_pop()
    assert rest["id"].tolist() == list(range(expected, nxt))
    assert ch.stats.pushed == ch.stats.popped == nxt > 5000


def test_pop_max_records(mode):
    ch = RecordChannel(REC, 8, mode=mode)
    ch.push(records(range(6)))
    assert ch.pop(2)["id"].tolist() == [0, 1]
    assert ch.pop(max_records=3)["id"].tolist() == [2, 3, 4]
    assert ch.pop(100)["id"].tolist() == [5]  # returns what is there
    ch.push(records(range(8)))
    assert len(ch.pop(10 ** 6)) == 8  # clamped to the capacity
    ch.push(records(range(3)))
    assert len(ch.pop()) == 3  # default: everything there


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                      ("2", TypeError), (True, TypeError)])
def test_max_records_validation(mode, bad, exc):
    ch = RecordChannel(REC, 4, mode=mode)
    ch.push(records([1]))
    with pytest.raises(exc, match="max_records"):
        ch.pop(bad)
    with pytest.raises(exc, match="max_records"):
        ch.try_pop(bad)
    assert ch.pop()["id"].tolist() == [1]


def test_push_accepts_single_records_and_sequences(mode):
    ch = RecordChannel(REC, 16, mode=mode)
    arr = records([10, 11])
    assert ch.push(arr[0]) == 1  # a numpy record (0-d)
    assert ch.push(np.array(arr[1])) == 1  # a 0-d array
    assert ch.pop()["id"].tolist() == [10, 11]
    plain = RecordChannel("<f8", 16, mode=mode)
    assert plain.push([1.5, 2.5]) == 2  # anything numpy turns into float64
    assert plain.push(3.5) == 1
    assert plain.push(np.float64(4.5)) == 1
    assert plain.pop().tolist() == [1.5, 2.5, 3.5, 4.5]


def test_push_of_nothing_returns_zero(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    assert ch.push(records([])) == 0
    assert ch.try_push(records([])) == 0
    assert len(ch) == 0


def test_safe_casts_are_applied_to_plain_dtypes():
    ch = RecordChannel("<u4", 8)
    assert ch.push(np.array([1, 2], dtype="<u2")) == 2  # widening
    assert ch.push(np.array([3, 4], dtype=">u4")) == 2  # byte order
    out = ch.pop()
    assert out.dtype == np.dtype("<u4") and out.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("data", [
    np.array([1, 2], dtype="<i8"),  # would lose range
    np.array([1.0], dtype="<f8"),
    np.array([-1], dtype="<i4"),
], ids=lambda a: str(a.dtype))
def test_unsafe_casts_refused(data):
    ch = RecordChannel("<u4", 8)
    with pytest.raises(TypeError, match=r"records have dtype .* the channel holds uint32"):
        ch.push(data)
    with pytest.raises(TypeError, match="records have dtype"):
        ch.try_push(data)
    assert len(ch) == 0


@pytest.mark.parametrize("other", [
    np.dtype([("id", "<u4"), ("y", "<f8")]),  # other field name
    np.dtype([("x", "<f8"), ("id", "<u4")]),  # other order
    np.dtype([("id", "<u4"), ("x", "<f8")], align=True),  # other layout
    np.dtype([("id", "<u8"), ("x", "<f8")]),
    np.dtype("<f8"),
], ids=str)
def test_structured_dtype_mismatch_refused(mode, other):
    ch = RecordChannel(REC, 8, mode=mode)
    with pytest.raises(TypeError, match="records have dtype"):
        ch.push(np.zeros(2, dtype=other))
    assert len(ch) == 0


def test_two_dimensional_array_refused(mode):
    ch = RecordChannel("<u8", 8, mode=mode)
    with pytest.raises(ValueError, match="1-d array"):
        ch.push(np.zeros((2, 2), dtype="<u8"))
    with pytest.raises(ValueError, match="1-d array"):
        ch.try_push(np.zeros((1, 3), dtype="<u8"))
    assert len(ch) == 0


def test_non_contiguous_input_is_copied_correctly(mode):
    ch = RecordChannel(REC, 16, mode=mode)
    base = records(range(10))
    assert ch.push(base[::3]) == 4
    assert ch.push(base[::-1][:2]) == 2
    assert ch.pop()["id"].tolist() == [0, 3, 6, 9, 9, 8]


def test_records_are_copied_in_and_out(mode):
    ch = RecordChannel(REC, 8, mode=mode)
    src = records([1, 2, 3])
    ch.push(src)
    src["id"] = 99  # the channel holds its own copy
    out = ch.pop(2)
    assert out["id"].tolist() == [1, 2]
    out["id"] = 77  # and hands out a new array
    assert out.flags.writeable
    assert ch.pop()["id"].tolist() == [3]


def test_try_push_partial_count(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    n = ch.try_push(records(range(6)))
    assert type(n) is int and n == 4
    assert ch.try_push(records([9])) == 0  # full: 0, not an exception
    assert ch.pop()["id"].tolist() == [0, 1, 2, 3]
    ch.push(records([10]))
    assert ch.try_push(records([11, 12, 13, 14])) == 3
    assert ch.pop()["id"].tolist() == [10, 11, 12, 13]


def test_try_pop_when_empty_returns_an_empty_array(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    out = ch.try_pop()
    assert isinstance(out, np.ndarray)
    assert out.dtype == REC and out.shape == (0,)
    assert ch.try_pop(3).shape == (0,)
    ch.push(records([1, 2, 3]))
    assert ch.try_pop(2)["id"].tolist() == [1, 2]
    assert ch.try_pop()["id"].tolist() == [3]


def test_push_timeout_zero_partial_and_full(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    assert ch.push(records(range(6)), timeout=0) == 4  # the prefix that fit
    with pytest.raises(Full):
        ch.push(records([7]), timeout=0)
    assert ch.pop()["id"].tolist() == [0, 1, 2, 3]


def test_push_timeout_partial_and_full(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    t0 = time.monotonic()
    assert ch.push(records(range(6)), timeout=0.05) == 4
    assert time.monotonic() - t0 >= 0.05 - EARLY_SLACK
    t0 = time.monotonic()
    with pytest.raises(Full, match="timed out"):
        ch.push(records([7]), timeout=0.05)
    assert time.monotonic() - t0 >= 0.05 - EARLY_SLACK
    assert len(ch) == 4


def test_pop_timeout_raises_empty(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    t0 = time.monotonic()
    with pytest.raises(Empty, match="timed out"):
        ch.pop(timeout=0.05)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.05 - EARLY_SLACK and elapsed < WATCHDOG


def test_pop_zero_timeout_raises_empty(mode):
    # regression: pop(timeout=0) on an empty channel used to return an empty array
    ch = RecordChannel(REC, 4, mode=mode)
    with pytest.raises(Empty):
        ch.pop(timeout=0)


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (float("nan"), ValueError),
                                      ("1", TypeError), (True, TypeError)])
def test_timeout_validation(mode, bad, exc):
    ch = RecordChannel(REC, 4, mode=mode)
    ch.push(records([1]))
    with pytest.raises(exc, match="timeout"):
        ch.push(records([2]), timeout=bad)
    with pytest.raises(exc, match="timeout"):
        ch.pop(timeout=bad)
    assert ch.pop()["id"].tolist() == [1]


def test_pop_waits_for_a_record(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    consumer = start(ch.pop, name="pop")
    wait_until(lambda: ch.stats.empty_waits >= 1, "the consumer to block")
    ch.push(records([42]))
    consumer.finish(on_hang=ch.close)
    assert consumer.error is None
    assert consumer.result["id"].tolist() == [42]


def test_push_waits_for_room(mode):
    ch = RecordChannel(REC, 2, mode=mode)
    producer = start(ch.push, records(range(5)), name="push")
    got = []
    while len(got) < 5:
        got.extend(ch.pop(timeout=WATCHDOG)["id"].tolist())
    producer.finish(on_hang=ch.close)
    assert producer.error is None and producer.result == 5
    assert got == [0, 1, 2, 3, 4]
    assert ch.stats.full_waits >= 1


# ---------------------------------------------------------------- close and iteration


def test_close_is_end_of_stream(mode):
    ch = RecordChannel(REC, 8, mode=mode)
    ch.push(records(range(5)))
    ch.close()
    ch.close()
    assert ch.closed
    with pytest.raises(ChannelClosed):
        ch.push(records([9]))
    with pytest.raises(ChannelClosed):
        ch.try_push(records([9]))
    with pytest.raises(ChannelClosed):
        ch.push(records([9]), timeout=0)
    assert ch.pop(2)["id"].tolist() == [0, 1]
    assert ch.try_pop(1)["id"].tolist() == [2]
    assert ch.pop()["id"].tolist() == [3, 4]
    for op in (ch.pop, ch.try_pop, lambda: ch.pop(timeout=0), lambda: ch.pop(timeout=1)):
        with pytest.raises(ChannelClosed, match="closed and drained"):
            op()
    assert list(ch) == []


def test_iteration_yields_arrays_until_closed_and_drained(mode):
    ch = RecordChannel(REC, 8, mode=mode)
    ch.push(records([0, 1, 2]))
    ch.push(records([3]))
    ch.close()
    chunks = list(ch)
    assert chunks and all(isinstance(c, np.ndarray) and c.dtype == REC and len(c) >= 1
                          for c in chunks)
    assert np.concatenate(chunks)["id"].tolist() == [0, 1, 2, 3]


def test_iteration_follows_a_live_producer(mode):
    ch = RecordChannel("<u8", 4, mode=mode)
    consumer = start(lambda: [c.copy() for c in ch], name="iterate")
    for i in range(0, 2000, 3):
        ch.push(np.arange(i, min(i + 3, 2000), dtype="<u8"))
    ch.close()
    consumer.finish(on_hang=ch.close)
    assert consumer.error is None
    assert np.concatenate(consumer.result).tolist() == list(range(2000))


def test_close_wakes_blocked_consumer_and_producer(mode):
    ch = RecordChannel(REC, 2, mode=mode)
    consumer = start(ch.pop, name="pop")
    wait_until(lambda: ch.stats.empty_waits >= 1, "the consumer to block")
    ch.close()
    consumer.finish()
    assert isinstance(consumer.error, ChannelClosed)

    ch = RecordChannel(REC, 2, mode=mode)
    producer = start(ch.push, records(range(5)), name="push")
    wait_until(lambda: ch.stats.full_waits >= 1, "the producer to block")
    ch.close()
    producer.finish()
    assert producer.error is None and producer.result == 2  # the prefix that went in
    assert ch.pop()["id"].tolist() == [0, 1]
    with pytest.raises(ChannelClosed):
        ch.pop()


def test_iterator_ends_when_closed_while_blocked(mode):
    ch = RecordChannel(REC, 2, mode=mode)
    consumer = start(lambda: list(ch), name="iterate")
    wait_until(lambda: ch.stats.empty_waits >= 1, "the consumer to block")
    ch.close()
    consumer.finish()
    assert consumer.error is None and consumer.result == []


# ---------------------------------------------------------------- len, stats, repr


def test_len_stats_repr(mode):
    ch = RecordChannel(REC, 4, mode=mode)
    assert len(ch) == 0 and bool(ch) is True
    assert ch.stats == ChannelStats(0, 0, 0, 0)
    ch.push(records(range(3)))
    assert len(ch) == 3
    ch.pop(2)
    s = ch.stats
    assert (s.pushed, s.popped) == (3, 2)  # counted in records
    r = repr(ch)
    assert "RecordChannel" in r and "capacity=4" in r and f"mode={mode}" in r and "len=1" in r
    ch.close()
    assert "closed" in repr(ch)
    assert ch.stats.pushed == 3 and len(ch) == 1  # the closed flag does not leak into counts


# ---------------------------------------------------------------- misuse and threads


def test_spsc_second_blocked_consumer_refused():
    ch = RecordChannel(REC, 4)
    first = start(ch.pop, name="first consumer")
    try:
        wait_until(lambda: ch.stats.empty_waits >= 1, "the first consumer to block")
        time.sleep(0.02)
        with pytest.raises(RuntimeError, match="second consumer"):
            ch.pop(timeout=10)
        ch.push(records([1]))
        first.finish(on_hang=ch.close)
        assert first.error is None and first.result["id"].tolist() == [1]
    finally:
        ch.close()


def test_spsc_second_blocked_producer_refused():
    ch = RecordChannel(REC, 1)
    ch.push(records([0]))
    first = start(ch.push, records([1]), name="first producer")
    try:
        wait_until(lambda: ch.stats.full_waits >= 1, "the first producer to block")
        time.sleep(0.02)
        with pytest.raises(RuntimeError, match="second producer"):
            ch.push(records([2]), timeout=10)
        assert ch.pop()["id"].tolist() == [0]
        first.finish(on_hang=ch.close)
        assert first.error is None and first.result == 1
        assert ch.pop(timeout=WATCHDOG)["id"].tolist() == [1]
    finally:
        ch.close()


@pytest.mark.parametrize("mode, producers, consumers", [("spsc", 1, 1), ("mpmc", 2, 2),
                                                        ("mpmc", 3, 2)])
def test_threads_moving_numpy_batches(mode, producers, consumers):
    dt = np.dtype([("producer", "<u4"), ("seq", "<u4"), ("payload", "<f8")])
    n = 20_000
    ch = RecordChannel(dt, 64, mode=mode)

    def produce(p):
        for i in range(0, n, 37):
            seq = np.arange(i, min(n, i + 37), dtype="<u4")
            arr = np.empty(len(seq), dtype=dt)
            arr["producer"], arr["seq"], arr["payload"] = p, seq, seq * 0.5
            done = 0
            while done < len(arr):
                done += ch.push(arr[done:])
        return n

    def consume():
        return np.concatenate([c.copy() for c in ch] or [np.empty(0, dtype=dt)])

    cons = [start(consume, name=f"consumer{i}") for i in range(consumers)]
    prods = [start(produce, p, name=f"producer{p}") for p in range(producers)]
    for p in prods:
        p.finish(on_hang=ch.close)
        assert p.error is None
    ch.close()
    for c in cons:
        c.finish()
        assert c.error is None
    for p in range(producers):
        seen = []
        for c in cons:
            mine = c.result[c.result["producer"] == p]
            assert np.all(np.diff(mine["seq"].astype(np.int64)) > 0)  # order per consumer
            assert np.array_equal(mine["payload"], mine["seq"] * 0.5)  # records intact
            seen.append(mine["seq"])
        seen = np.sort(np.concatenate(seen))
        assert np.array_equal(seen, np.arange(n))  # no loss, no duplicate
    assert sum(len(c.result) for c in cons) == producers * n


_MPMC_ONE_CHILD = """
    import faulthandler, os
    faulthandler.dump_traceback_later(20, exit=True)
    import numpy as np
    from reflux_core.channel import RecordChannel
    ch = RecordChannel("<u8", 1, mode="mpmc")
    cap = ch.capacity
    for rnd in range(100):
        pushed = ch.try_push(np.arange(cap + 1, dtype="<u8") + rnd)
        if pushed != cap or len(ch) != cap:
            print(f"FAIL: pushed {pushed} records into capacity {cap}", flush=True)
            os._exit(1)  # the ring is corrupt: its pop would spin forever
        if ch.pop().tolist() != list(range(rnd, rnd + cap)):
            print("FAIL: wrong records", flush=True)
            os._exit(1)
    print("OK", flush=True)
    os._exit(0)
"""


def test_mpmc_record_channel_capacity_is_at_least_two():
    ch = RecordChannel("<u8", 1, mode="mpmc")
    assert ch.capacity == 2
    assert ch.try_push(np.arange(3, dtype="<u8")) == 2
    assert ch.pop().tolist() == [0, 1]


def test_mpmc_record_channel_capacity_one():
    # in a child process: the old capacity-1 bug overwrote the only record,
    # then the next pop spun forever with the GIL held
    proc = subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(_MPMC_ONE_CHILD)],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "OK", (proc.stdout, proc.stderr[-2000:])
