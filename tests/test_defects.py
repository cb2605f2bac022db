"""Regression tests for the defects of the Rust crate (design.md section 2).

Each test would fail on an implementation with the crate's defect.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from reflux import (
    Accumulator,
    Balancer,
    Extractor,
    Filter,
    Funnel,
    Loader,
    NeedsMoreWork,
    NodeError,
    Pipeline,
    Transformer,
    ValidationError,
)
from support import forever

HANG = 60


# 1. Extractor and Loader hand items over through an overwritten cell: items are lost.

@pytest.mark.parametrize("source_kind", ["sized", "generator"])
def test_no_item_lost_at_extractor_or_loader(source_kind: str) -> None:
    n = 100_000

    def gen() -> Iterator[int]:
        yield from range(n)

    got: list[int] = []
    source = Extractor(range(n) if source_kind == "sized" else gen)
    # a slow Loader behind a fast Extractor: an overwriting hand-over would lose items
    slow_every = [0]

    def load(x: int) -> None:
        got.append(x)
        slow_every[0] += 1
        if slow_every[0] % 20_000 == 0:
            time.sleep(0.01)

    result = Pipeline(source >> Loader(load), capacity=16).run(timeout=HANG)
    assert got == list(range(n))  # each exactly once, in order
    assert result.extracted == result.loaded == n


# 2. A Transformer that yields more than once per input silently drops the next input.

def test_multi_output_transformer_drops_no_input() -> None:
    def burst(x: int) -> Iterator[tuple[int, int]]:
        for k in range(5):
            yield (x, k)

    sink = Loader.to_list()
    # tiny channels and batches: the outputs of one input fill the channel mid-generator
    result = Pipeline(Extractor(range(2000)) >> Transformer(burst) >> sink, capacity=2, batch_size=2).run(timeout=HANG)
    out = result.results[sink.name]
    assert out == [(x, k) for x in range(2000) for k in range(5)]
    assert result["burst"].received == 2000 and result["burst"].emitted == 10_000


# 3. No end-of-stream: nothing drains; a node whose upstream is gone busy-spins.

def test_end_of_stream_drains_and_ends() -> None:
    sink = Loader.to_list()
    # the partial group held by the Accumulator is only emitted if end-of-stream reaches it
    p = Pipeline(Extractor(range(10)) >> Transformer(lambda x: x) >> Accumulator(4) >> sink)
    result = p.run(timeout=HANG)
    assert result.results[sink.name] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert result.status == "completed"


def test_no_busy_spin_when_an_upstream_is_gone() -> None:
    gate = threading.Event()

    def idle() -> Iterator[int]:
        gate.wait(HANG)
        return
        yield

    # one input of the Funnel has ended, the other is idle: nothing may spin
    p = Pipeline([Extractor([1, 2, 3], name="ended"), Extractor(idle, name="idle")] >> Funnel()
                 >> Transformer(lambda x: x) >> Loader(lambda x: None))
    p.start()
    try:
        deadline = time.monotonic() + HANG
        while p.stats()["loader"].received < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(1.5)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        gate.set()
    p.join(HANG)
    # the crate burns up to 0.9 CPU per such node; parked nodes use almost nothing
    assert cpu < 0.25 * wall, f"{cpu:.3f}s CPU in {wall:.2f}s"


def test_no_cpu_after_the_end() -> None:
    p = Pipeline(Extractor(range(1000)) >> Transformer(lambda x: x) >> Loader(lambda x: None))
    p.run(timeout=HANG)
    assert not [t for t in threading.enumerate() if t.name.startswith("reflux:")]


# 4. A crashed node panics its neighbours' sends or leaves their channels filling (clogging).

def test_crash_does_not_clog() -> None:
    def crash_late(x: int) -> int:
        if x == 5000:
            raise RuntimeError("crash")
        return x

    p = Pipeline(Extractor(forever) >> Transformer(lambda x: x, name="before") >> Transformer(crash_late)
                 >> Transformer(lambda x: x, name="after") >> Loader(lambda x: None), capacity=64)
    with pytest.raises(NodeError, match="Transformer 'crash_late' failed on item 5000"):
        p.run(timeout=HANG)
    r = p.result
    assert r is not None
    # the Extractor stopped (it did not go on filling channels nobody reads)
    assert r.extracted < 5000 + 4 * (64 + 256)
    r.check_accounting()


# 5. The round-robin Router panics when an item arrives and it has no receivers.

def test_balancer_without_receivers_rejected_before_running() -> None:
    pulled = [0]

    def source() -> Iterator[int]:
        pulled[0] += 1
        yield 1

    with pytest.raises(ValidationError, match="Balancer 'split' has no receivers"):
        Pipeline(Extractor(source) >> Balancer(name="split")).run(timeout=HANG)
    assert pulled[0] == 0


# 6. The Funnel polls its inputs with a 100 ms back-off: ~210 ms per message with idle inputs.

def test_funnel_prompt_with_idle_inputs() -> None:
    gate = threading.Event()
    arrived = threading.Event()
    send = threading.Event()
    latencies: list[float] = []

    def idle() -> Iterator[float]:
        gate.wait(HANG)
        return
        yield

    def pinger() -> Iterator[float]:
        for _ in range(30):
            send.wait(HANG)
            send.clear()
            yield time.perf_counter()

    def load(t0: float) -> None:
        latencies.append(time.perf_counter() - t0)
        arrived.set()

    inputs = [Extractor(idle, name=f"idle{i}") for i in range(8)] + [Extractor(pinger)]
    p = Pipeline(inputs >> Funnel() >> Loader(load))
    p.start()
    try:
        for _ in range(30):  # one message at a time: each waits for the previous
            arrived.clear()
            send.set()
            assert arrived.wait(HANG)
    finally:
        gate.set()
        send.set()
    p.join(HANG)
    assert len(latencies) == 30
    # the crate: ~210 ms each; here well under a millisecond (bound kept generous)
    assert statistics.median(latencies) < 0.02, latencies


# 7. The Filter emits empty batches; blocking sends ignore the stop flag, so join() can hang.

def test_filter_never_sends_empty_batches() -> None:
    sizes: list[int] = []
    # every other batch of 8 is entirely rejected
    p = Pipeline(Extractor(range(800)) >> Filter(lambda x: (x // 8) % 2 == 0)
                 >> Loader(lambda b: sizes.append(len(b)), batch=True), batch_size=8)
    result = p.run(timeout=HANG)
    assert sizes and min(sizes) > 0
    assert sum(sizes) == 400
    assert result["filter"].emitted == 400 and result["filter"].filtered == 400


def test_join_does_not_hang_on_blocked_send() -> None:
    gate = threading.Event()

    def stuck(x: int) -> None:
        gate.wait(HANG)

    # fuse=False: the Filter must be a task of its own, blocked sending into a full channel
    p = Pipeline(Extractor(forever) >> Filter(lambda x: True) >> Loader(stuck), capacity=4, fuse=False)
    p.start()
    try:
        deadline = time.monotonic() + HANG
        while p.stats()["filter"].received < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the Filter is now blocked sending into a full channel
        p.stop(drain=False)
        # everything but the Loader stuck in user code ends; join does not hang on the Filter
        t0 = time.monotonic()
        while p.stats()["filter"].dropped == 0 and time.monotonic() - t0 < HANG:
            time.sleep(0.01)
        assert p.stats()["filter"].dropped > 0
    finally:
        gate.set()
    result = p.join(HANG)
    assert result.status == "stopped"
    result.check_accounting()


# 8. Feedback (NeedsMoreWork) into the node's own bounded input can deadlock the node.

def test_feedback_into_bounded_input_does_not_deadlock() -> None:
    def fan(x: tuple[int, int]) -> Iterator[Any]:
        root, depth = x
        if depth == 0:
            yield root
            return
        for _ in range(3):  # each item feeds three back: far more than the input holds
            yield NeedsMoreWork((root, depth - 1))

    sink = Loader.to_list()
    p = Pipeline(Extractor([(r, 4) for r in range(20)]) >> Transformer(fan, capacity=1) >> sink,
                 capacity=1, batch_size=1)
    result = p.run(timeout=HANG)
    out = result.results[sink.name]
    assert sorted(out) == sorted(r for r in range(20) for _ in range(3 ** 4))
    assert result["fan"].fed_back == 20 * (3 + 9 + 27 + 81)


# 9. One OS thread per node: many nodes thrash.  The worker pool runs any number of
#    nodes on a fixed number of threads (tests/test_pool.py counts them for 1,000
#    nodes).  Here: many unfused nodes run correctly on the pool, idle ones do not
#    burn CPU, the threads are the pool's plus one for the blocking source, and every
#    thread ends.

def test_many_nodes_correct_and_quiet() -> None:
    gate = threading.Event()

    def source() -> Iterator[int]:
        yield from range(500)
        gate.wait(HANG)

    flow: Any = Extractor(source)
    for i in range(150):
        flow = flow >> Transformer(lambda x: x + 1, name=f"t{i}")
    sink = Loader.to_list()
    p = Pipeline(flow >> sink, capacity=16, fuse=False, workers=2)
    p.start()
    assert sum(1 for t in threading.enumerate() if t.name.startswith("reflux:")) == 3
    try:
        deadline = time.monotonic() + HANG
        while p.stats()[sink.name].received < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(1.0)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        gate.set()
    result = p.join(HANG)
    assert result.results[sink.name] == [x + 150 for x in range(500)]
    # parked workers wake ten times a second each: a small fraction of one core
    assert cpu < 0.5 * wall, f"{cpu:.3f}s CPU in {wall:.2f}s"
