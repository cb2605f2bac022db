"""Stateful model tests: each channel type against collections.deque with a capacity bound.

Single-threaded, so every operation's outcome is determined exactly by the
model: push / try_push / push_many (timeout 0, so partial prefixes), pop /
try_pop / pop_many, len, stats and close-then-drain.

Capacities: a power of two >= the request; MPMC rings have at least 2 slots
(a Vyukov ring with one slot cannot tell "filled" from "free").
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from reflux_core.channel import (
    EMPTY,
    ChannelClosed,
    Empty,
    Full,
    MPMCChannel,
    RecordChannel,
    SPSCChannel,
)

MODEL_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# items: anything, including None and values equal to each other; we compare by
# identity where it matters (each pushed object is tagged with a serial number)
payloads = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.booleans(),
                     st.tuples(st.integers(0, 3)))


def _round_up(n, minimum=1):
    c = 1
    while c < max(n, minimum):
        c <<= 1
    return c


class ObjectChannelModel(RuleBasedStateMachine):
    """Base machine; subclasses set `kind` and `min_slots`."""

    kind = SPSCChannel
    min_slots = 1

    def __init__(self):
        super().__init__()
        self.ch = None
        self.model = deque()
        self.cap = 0
        self.closed = False
        self.pushed = 0
        self.popped = 0
        self.serial = 0

    def _item(self, payload):
        # a fresh object per push: identity shows which push an item came from
        self.serial += 1
        return [self.serial, payload]

    @initialize(capacity=st.integers(1, 9))
    def make(self, capacity):
        self.ch = self.kind(capacity)
        self.cap = _round_up(capacity, self.min_slots)
        # checked before anything else: a wrong capacity would make the model
        # push into a full ring
        assert self.ch.capacity == self.cap

    # -- producer side

    @rule(payload=payloads)
    def push_timeout_zero(self, payload):
        item = self._item(payload)
        if self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.push(item, timeout=0)
        elif len(self.model) == self.cap:
            with pytest.raises(Full):
                self.ch.push(item, timeout=0)
        else:
            assert self.ch.push(item, timeout=0) is None
            self.model.append(item)
            self.pushed += 1

    @precondition(lambda self: not self.closed and len(self.model) < self.cap)
    @rule(payload=payloads)
    def push_blocking_with_room(self, payload):
        item = self._item(payload)
        self.ch.push(item)  # there is room: returns at once
        self.model.append(item)
        self.pushed += 1

    @rule(payload=payloads)
    def try_push(self, payload):
        item = self._item(payload)
        if self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.try_push(item)
        else:
            ok = self.ch.try_push(item)
            assert ok is (len(self.model) < self.cap)
            if ok:
                self.model.append(item)
                self.pushed += 1

    @rule(payload_list=st.lists(payloads, min_size=1, max_size=12))
    def push_many_timeout_zero(self, payload_list):
        items = [self._item(p) for p in payload_list]
        room = self.cap - len(self.model)
        if self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.push_many(items, timeout=0)
        elif room == 0:
            with pytest.raises(Full):
                self.ch.push_many(items, timeout=0)
        else:
            k = self.ch.push_many(items, timeout=0)
            assert k == min(room, len(items))
            self.model.extend(items[:k])  # the prefix that fit
            self.pushed += k

    # -- consumer side

    def _expect_pop(self, got):
        want = self.model.popleft()
        assert got is want
        self.popped += 1

    @rule()
    def try_pop(self):
        if self.model:
            self._expect_pop(self.ch.try_pop())
        elif self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.try_pop()
        else:
            assert self.ch.try_pop() is EMPTY

    @rule()
    def pop_timeout_zero(self):
        if self.model:
            self._expect_pop(self.ch.pop(timeout=0))
        elif self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.pop(timeout=0)
        else:
            with pytest.raises(Empty):
                self.ch.pop(timeout=0)

    @precondition(lambda self: self.model or self.closed)
    @rule()
    def pop_blocking_when_determined(self):
        # an item is there or the stream ended: pop() must not wait
        if self.model:
            self._expect_pop(self.ch.pop())
        else:
            with pytest.raises(ChannelClosed):
                self.ch.pop()

    @rule(max_items=st.integers(1, 12), timeout=st.sampled_from([0, None]))
    def pop_many(self, max_items, timeout):
        if not self.model and timeout is None and not self.closed:
            timeout = 0  # would block forever in a single thread
        if self.model:
            got = self.ch.pop_many(max_items, timeout=timeout)
            k = min(max_items, len(self.model))
            assert len(got) == k
            for x in got:
                self._expect_pop(x)
        elif self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.pop_many(max_items, timeout=timeout)
        else:
            with pytest.raises(Empty):
                self.ch.pop_many(max_items, timeout=timeout)

    # -- either side

    @rule()
    def close(self):
        self.ch.close()
        self.closed = True

    @precondition(lambda self: self.closed)
    @rule()
    def drain_by_iteration(self):
        got = list(self.ch)
        assert len(got) == len(self.model)
        for x in got:
            self._expect_pop(x)
        assert not self.model

    @invariant()
    def observable_state_matches(self):
        if self.ch is None:
            return
        assert len(self.ch) == len(self.model)
        assert self.ch.closed is self.closed
        s = self.ch.stats
        assert (s.pushed, s.popped) == (self.pushed, self.popped)

    def teardown(self):
        if self.ch is not None and self.closed:
            assert list(self.ch) == list(self.model)


class SPSCModel(ObjectChannelModel):
    kind = SPSCChannel
    min_slots = 1


class MPMCModel(ObjectChannelModel):
    kind = MPMCChannel
    min_slots = 2


TestSPSCChannelModel = SPSCModel.TestCase
TestSPSCChannelModel.settings = MODEL_SETTINGS
TestMPMCChannelModel = MPMCModel.TestCase
TestMPMCChannelModel.settings = MODEL_SETTINGS


# ---------------------------------------------------------------- record channel

RECORD = np.dtype([("id", "<u4"), ("x", "<f8")])


class RecordChannelModel(RuleBasedStateMachine):
    mode = "spsc"
    min_slots = 1

    def __init__(self):
        super().__init__()
        self.ch = None
        self.model = deque()
        self.cap = 0
        self.closed = False
        self.serial = 0

    @initialize(capacity=st.integers(1, 9))
    def make(self, capacity):
        self.ch = RecordChannel(RECORD, capacity, mode=self.mode)
        self.cap = _round_up(capacity, self.min_slots)
        assert self.ch.capacity == self.cap

    def _records(self, n):
        arr = np.empty(n, dtype=RECORD)
        for i in range(n):
            self.serial += 1
            arr[i] = (self.serial, self.serial * 0.5)
        return arr

    def _check_popped(self, arr):
        assert arr.dtype == RECORD and arr.ndim == 1
        for rec in arr:
            want = self.model.popleft()
            assert (int(rec["id"]), float(rec["x"])) == want

    @rule(n=st.integers(1, 12))
    def push_timeout_zero(self, n):
        recs = self._records(n)
        room = self.cap - len(self.model)
        if self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.push(recs, timeout=0)
        elif room == 0:
            with pytest.raises(Full):
                self.ch.push(recs, timeout=0)
        else:
            k = self.ch.push(recs, timeout=0)
            assert k == min(room, n)
            self.model.extend((int(r["id"]), float(r["x"])) for r in recs[:k])

    @rule(n=st.integers(1, 12))
    def try_push(self, n):
        recs = self._records(n)
        if self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.try_push(recs)
        else:
            k = self.ch.try_push(recs)
            assert k == min(self.cap - len(self.model), n)
            self.model.extend((int(r["id"]), float(r["x"])) for r in recs[:k])

    @rule(max_records=st.one_of(st.none(), st.integers(1, 12)))
    def try_pop(self, max_records):
        if self.model:
            arr = self.ch.try_pop(max_records)
            want = len(self.model) if max_records is None else min(max_records, len(self.model))
            assert len(arr) == want
            self._check_popped(arr)
        elif self.closed:
            with pytest.raises(ChannelClosed):
                self.ch.try_pop(max_records)
        else:
            arr = self.ch.try_pop(max_records)
            assert arr.dtype == RECORD and arr.shape == (0,)

    @precondition(lambda self: self.model or self.closed)
    @rule(max_records=st.one_of(st.none(), st.integers(1, 12)))
    def pop_when_determined(self, max_records):
        if self.model:
            arr = self.ch.pop(max_records)
            want = len(self.model) if max_records is None else min(max_records, len(self.model))
            assert len(arr) == want
            self._check_popped(arr)
        else:
            with pytest.raises(ChannelClosed):
                self.ch.pop(max_records)

    @rule()
    def close(self):
        self.ch.close()
        self.closed = True

    @precondition(lambda self: self.closed)
    @rule()
    def drain_by_iteration(self):
        for arr in self.ch:
            assert len(arr) >= 1
            self._check_popped(arr)
        assert not self.model

    @invariant()
    def observable_state_matches(self):
        if self.ch is not None:
            assert len(self.ch) == len(self.model)
            assert self.ch.closed is self.closed


class RecordSPSCModel(RecordChannelModel):
    mode = "spsc"


class RecordMPMCModel(RecordChannelModel):
    mode = "mpmc"
    min_slots = 2


TestRecordSPSCModel = RecordSPSCModel.TestCase
TestRecordSPSCModel.settings = settings(MODEL_SETTINGS, max_examples=80)
TestRecordMPMCModel = RecordMPMCModel.TestCase
TestRecordMPMCModel.settings = settings(MODEL_SETTINGS, max_examples=80)
