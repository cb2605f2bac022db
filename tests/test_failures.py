"""Failures are blamed on the right node, counted truly, and retried in order.

* a fused chain reports the same node, error type and accounting as the same
  nodes unfused, for every hook (open, call, close, result) of every node kind;
* a failing item is retried, then skipped, recorded or fails the run before the
  next item is called (Transformer, Filter and Loader alike), so a sink's side
  effects happen in order and its counts are what really happened;
* error reporting never fails, whatever an item's ``repr()`` does.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from reflux import (
    Broadcast,
    Extractor,
    Filter,
    Loader,
    Messenger,
    MPMCChannel,
    NodeError,
    NotCallableError,
    Pipeline,
    RecordChannel,
    SPSCChannel,
    Transformer,
    ValidationError,
)

HANG = 60.0


# --------------------------------------------------------------------------- blame in fused chains

class Hooked:
    """A node function whose ``hook`` (open, call, close or result) raises ``exc``."""

    def __init__(self, role: str, hook: str, exc: type[BaseException]) -> None:
        self.role, self.hook, self.exc = role, hook, exc

    def _maybe(self, hook: str) -> None:
        if self.hook == hook:
            raise self.exc(f"{self.role} {hook}")

    def open(self) -> None:
        self._maybe("open")

    def close(self) -> None:
        self._maybe("close")

    def result(self) -> str:
        self._maybe("result")
        return "ok"

    def __call__(self, x: int) -> Any:
        if x == 5:
            self._maybe("call")
        return {"transform": x, "filter": True, "load": None}[self.role]


class FailingSource:
    """A sized source (so it runs fused with what follows) whose iteration raises at item 5."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __len__(self) -> int:
        return 20

    def __iter__(self) -> Any:
        for i in range(20):
            if i == 5:
                raise self.exc("source call")
            yield i


CASES = ([("src", "call", e) for e in (ValueError, SystemExit)]
         + [(node, hook, e) for node in ("t", "f", "l") for hook in ("open", "call", "close")
            for e in (ValueError, SystemExit)]
         + [("l", "result", e) for e in (ValueError, SystemExit)])


def _chain(bad: str, hook: str, exc: type[BaseException], fuse: bool) -> Pipeline:
    def fn(node: str, role: str) -> Any:
        return Hooked(role, hook if node == bad else "none", exc)

    src: Any = FailingSource(exc) if bad == "src" else list(range(20))
    return Pipeline(Extractor(src, name="src") >> Transformer(fn("t", "transform"), name="t")
                    >> Filter(fn("f", "filter"), name="f") >> Loader(fn("l", "load"), name="l"), fuse=fuse)


@pytest.mark.parametrize("bad,hook,exc", CASES, ids=[f"{b}-{h}-{e.__name__}" for b, h, e in CASES])
def test_a_fused_chain_blames_the_node_that_failed(bad: str, hook: str, exc: type[BaseException]) -> None:
    seen = []
    for fuse in (True, False):
        p = _chain(bad, hook, exc, fuse)
        with pytest.raises(NodeError) as info:
            p.run(timeout=HANG)
        if fuse:
            assert any(len(c) > 1 for c in p._runtime.fused_chains()), "the chain was not fused"  # type: ignore[union-attr]
        err = info.value
        result = err.result
        assert result is not None and result.status == "failed"
        result.check_accounting()
        seen.append((err.node, type(err.__cause__), result[bad].errors))
    fused, unfused = seen
    assert fused == unfused
    assert fused[0] == bad and fused[1] is exc


ROUTING = [("Messenger", hook, e) for hook in ("open", "call", "close") for e in (ValueError, SystemExit)] + [
    ("Broadcast", "call", e) for e in (ValueError, SystemExit)]  # a copy function has no hooks


@pytest.mark.parametrize("kind,hook,exc", ROUTING, ids=[f"{k}-{h}-{e.__name__}" for k, h, e in ROUTING])
def test_routing_nodes_are_blamed_for_their_own_code(kind: str, hook: str, exc: type[BaseException]) -> None:
    """Messenger keys and Broadcast copies are user code too (these nodes never fuse)."""
    class Key(Hooked):
        def __call__(self, x: int) -> Any:
            if x == 5:
                self._maybe("call")
            return x % 2

    fn = Key("key", hook, exc)
    bad = (Messenger(fn, name="bad", routes={0: "even", 1: "odd"}) if kind == "Messenger"
           else Broadcast(copy=fn, name="bad"))
    even, odd = Loader.to_list(name="even"), Loader.to_list(name="odd")
    p = Pipeline(Extractor(range(20)) >> Transformer(lambda x: x, name="t") >> bad >> [even, odd])
    with pytest.raises(NodeError) as info:
        p.run(timeout=HANG)
    assert info.value.node == "bad" and type(info.value.__cause__) is exc
    assert info.value.result is not None
    info.value.result.check_accounting()


def test_a_truth_test_that_raises_goes_through_the_policy_fused_or_not() -> None:
    class NoTruth:
        def __bool__(self) -> bool:
            raise RuntimeError("no truth value")

    def pred(x: int) -> Any:
        return NoTruth() if x % 4 == 0 else x % 2

    for fuse in (True, False):
        result = Pipeline(Extractor(range(20)) >> Filter(pred, name="f", on_error="skip")
                          >> Loader.to_list(name="out"), fuse=fuse).run(timeout=HANG)
        assert result.status == "completed" and result["f"].errors == 5
        assert result.results["out"] == [x for x in range(20) if x % 4 and x % 2]
        with pytest.raises(NodeError, match="Filter 'f' failed on item 0: RuntimeError: no truth value"):
            Pipeline(Extractor(range(20)) >> Filter(pred, name="f") >> Loader.to_list(), fuse=fuse).run(timeout=HANG)


# --------------------------------------------------------------------------- retry order and true counts

def _flaky(calls: list[int], role: str, fail_at: int = 5) -> Any:
    failed: set[int] = set()

    def fn(x: int) -> Any:
        calls.append(x)
        if x == fail_at and x not in failed:
            failed.add(x)
            raise ConnectionError("once")
        return {"transform": x, "filter": True, "load": None}[role]
    return fn


@pytest.mark.parametrize("kind", ["transform", "filter", "load"])
def test_a_failing_item_is_retried_before_the_next_item_is_called(kind: str) -> None:
    calls: list[int] = []
    fn = _flaky(calls, kind)
    node = {"transform": Transformer, "filter": Filter, "load": Loader}[kind](fn, name="n", retries=1)
    graph = Extractor(range(10)) >> node
    if kind != "load":
        graph = graph >> Loader.to_list(name="out")
    result = Pipeline(graph, batch_size=10).run(timeout=HANG)
    assert calls == [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9]
    assert result["n"].retried == 1 and result["n"].errors == 0
    result.check_accounting()


def test_a_sink_that_fails_under_raise_loads_and_counts_only_what_it_really_loaded() -> None:
    stored: list[int] = []

    def store(x: int) -> None:
        if x == 13:
            raise ValueError("disk full")
        stored.append(x)

    with pytest.raises(NodeError, match="Loader 'store' failed on item 13") as info:
        Pipeline(Extractor(range(100)) >> Loader(store, name="store"), batch_size=100).run(timeout=HANG)
    result = info.value.result
    assert result is not None
    assert stored == list(range(13))  # nothing after the failing item was called
    counts = result.counts()["store"]
    assert counts["out"] == 13 and counts["errors"] == 1
    assert counts["in"] == counts["out"] + counts["errors"] + counts["dropped"]
    result.check_accounting()


@pytest.mark.parametrize("how", ["skip", "dead_letter", "log"])
def test_a_sink_goes_on_in_order_after_a_handled_failure(how: str) -> None:
    order: list[int] = []

    def store(x: int) -> None:
        order.append(x)
        if x % 10 == 3:
            raise ValueError("bad row")

    result = Pipeline(Extractor(range(50)) >> Loader(store, name="store", on_error=how, retries=1),
                      batch_size=50).run(timeout=HANG)
    expected = []
    for x in range(50):
        expected += [x, x] if x % 10 == 3 else [x]
    assert order == expected
    assert result["store"].emitted == 45 and result["store"].errors == 5 and result["store"].retried == 5
    result.check_accounting()


# --------------------------------------------------------------------------- error reporting never fails

class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_an_item_whose_repr_raises_is_still_reported() -> None:
    def boom(x: Any) -> Any:
        raise ValueError("bad item")

    with pytest.raises(NodeError) as info:
        Pipeline(Extractor([BadRepr()]) >> Transformer(boom, name="t") >> Loader.to_list()).run(timeout=HANG)
    err = info.value
    assert err.node == "t" and isinstance(err.__cause__, ValueError)
    assert "its repr() raised RuntimeError" in str(err) and err.result is not None
    assert "RuntimeError" in repr(err.record)
    result = Pipeline(Extractor([BadRepr()]) >> Transformer(boom, name="t", on_error="log")
                      >> Loader.to_list()).run(timeout=HANG)
    assert result["t"].errors == 1


# --------------------------------------------------------------------------- running a pipeline twice

def test_a_second_run_has_a_result_of_its_own() -> None:
    sink = Loader.to_list(name="out")
    counted = Loader.to_callback(lambda x: None, name="count")
    p = Pipeline(Extractor(range(5)) >> Broadcast() >> [sink, counted])
    first = p.run(timeout=HANG)
    second = p.run(timeout=HANG)
    assert first.results["out"] == [0, 1, 2, 3, 4] and second.results["out"] == [0, 1, 2, 3, 4]
    assert first.results["out"] is not second.results["out"]
    assert first.results["count"] == second.results["count"] == 5


def test_a_target_list_keeps_collecting_across_runs() -> None:
    target: list[int] = []
    p = Pipeline(Extractor(range(3)) >> Loader.to_list(target, name="out"))
    p.run(timeout=HANG)
    p.run(timeout=HANG)
    assert target == [0, 1, 2, 0, 1, 2]


def test_a_used_up_iterator_source_refuses_a_second_run() -> None:
    p = Pipeline(Extractor(iter(range(3)), name="once") >> Loader.to_list(name="out"))
    assert p.run(timeout=HANG).results["out"] == [0, 1, 2]
    with pytest.raises(ValidationError, match="Extractor 'once': its source is an iterator, used up"):
        p.run(timeout=HANG)

    def gen() -> Any:
        yield from range(3)

    p = Pipeline(Extractor(gen, name="again") >> Loader.to_list(name="out"))  # a generator function: fine
    assert p.run(timeout=HANG).results["out"] == p.run(timeout=HANG).results["out"] == [0, 1, 2]


# --------------------------------------------------------------------------- bad input refused early

def test_a_capacity_beyond_the_largest_channel_is_refused_at_build() -> None:
    with pytest.raises(ValidationError, match=r"Transformer 'big': capacity 1000000000000 is larger than the "
                                              r"largest channel reflux makes \(268435456 slots\)"):
        Transformer(abs, name="big", capacity=10**12)
    with pytest.raises(ValidationError, match="Pipeline 'p': capacity 1000000000000 is larger"):
        Pipeline(name="p", capacity=10**12)


def test_async_functions_are_refused_where_they_would_not_be_awaited() -> None:
    """Transformer, Filter and Loader run async functions on an event loop; a Messenger's
    key and a Broadcast's copy are called synchronously, so they refuse one."""
    async def fetch(x: Any) -> Any:
        return x

    class AsyncCall:
        async def __call__(self, x: Any) -> Any:
            return x

    for make, what in ((lambda f: Messenger(f, name="n"), "Messenger 'n': key"),
                       (lambda f: Broadcast(copy=f, name="n"), "Broadcast 'n': copy")):
        for fn in (fetch, AsyncCall()):
            with pytest.raises(NotCallableError, match=f"{what} .* is an async function"):
                make(fn)
    for fn in (fetch, AsyncCall()):
        assert Transformer(fn).is_async and Filter(fn).is_async and Loader(fn).is_async
    with pytest.raises(NotCallableError, match="Extractor 'fetch': source 'fetch' is an async function"):
        Extractor(fetch)

    async def agen() -> Any:  # an async generator function stays a valid source
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    assert Pipeline(Extractor(agen) >> Loader.to_list(name="out")).run(timeout=HANG).results["out"] == [0, 1, 2]


# --------------------------------------------------------------------------- a live channel is a stream

@pytest.mark.parametrize("kind", [SPSCChannel, MPMCChannel])
def test_an_extractor_over_a_live_channel_passes_items_as_they_arrive(kind: type) -> None:
    ch = kind(1024)
    got: list[int] = []
    arrived = threading.Event()

    def load(x: int) -> None:
        got.append(x)
        if len(got) == 3:
            arrived.set()

    p = Pipeline(Extractor(ch, name="live") >> Loader(load))
    p.start()
    for i in range(3):
        ch.push(i)
    assert arrived.wait(HANG), "three items pushed did not flow through before the channel closed"
    ch.push_many([3, 4])
    ch.close()  # the end of the stream
    result = p.join(HANG)
    assert got == [0, 1, 2, 3, 4] and result.status == "completed" and result.extracted == 5


def test_an_extractor_over_a_record_channel_passes_arrays_of_records() -> None:
    import numpy as np

    ch = RecordChannel(np.dtype([("x", "<i8")]), 64)
    out = Loader.to_list(name="out")
    p = Pipeline(Extractor(ch) >> out)
    p.start()
    ch.push(np.array([(1,), (2,)], dtype=ch.dtype))
    time.sleep(0.05)
    ch.push(np.array([(3,)], dtype=ch.dtype))
    ch.close()
    result = p.join(HANG)
    assert [int(r["x"]) for chunk in result.results["out"] for r in chunk] == [1, 2, 3]
